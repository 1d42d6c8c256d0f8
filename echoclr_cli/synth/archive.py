"""Synthetic raw echo archive: PLAX-like cine loops with known latent anatomy and labels
(with ``synth.views``, also PSAX, A4C and A2C loops of the same hearts: synth/views.py).

What it models (so that self-supervised pretraining has something real to find):

* per PATIENT / STUDY (shared by every video of a study): wall thickness (LVH when thick), LV size,
  aortic root and LA size, aortic leaflet calcification (thickness + brightness) and opening
  amplitude (severe AS = calcified AND restricted; the restriction is only visible in motion),
  heart rate. Labels are thresholds of these continuous latents plus ``label_noise`` flips.
* per VIDEO (acquisition nuisance): depth / zoom, probe rotation and lateral shift, sector width
  and tilt, gain, gamma, attenuation, speckle and noise level, frame rate, length, start phase.
  So what two videos of one study share is exactly the anatomy.
* outside the fan, like a scanner screen: burned-in text (fake name, id, date, fps, depth), an
  ECG strip with a moving cursor and a logo bar; plus an orientation marker inside the sector's
  bounding box but outside the fan (masking must remove it). The external site uses another
  screen layout, later years, other gain and noise.

How it stays fast: the heart is rendered once per study on a coarse canonical grid (1 mm/pixel)
for ``N_PHASES`` phases of the cardiac cycle; each video only precomputes its pixel -> anatomy
map (as bilinear gather indices and weights), sector mask, gain and noise banks, and a frame is
one bilinear gather of the fan pixels plus a few multiply/add/LUT operations.

Why the fan is drawn with numpy, not OpenCV: pixel references in the tests (and the demo's
published numbers) must not move when OpenCV does. ``cv2.remap`` quantises the sampling position
to 1/32 pixel in OpenCV 4.x and not in 5.x (fan pixels differ by up to 4 grey levels), and
``cv2.addWeighted`` rounds differently in 4.x (1 float32 ulp). The numpy code below computes
exactly what OpenCV 5.0 computed (fused multiply-adds, see ``_fma32``): archives made with
OpenCV 5.0 are reproduced bit for bit, and their fans now come out the same under every OpenCV
version (measured 4.11, 4.14, 5.0, 5.1). What stays OpenCV: the screen text
(``cv2.putText``, outside the fan, which masking removes; its glyphs differ between OpenCV 4.x,
5.0 and 5.1, and a font rasteriser is not cheap to reproduce) and calls measured identical from
4.11 to 5.1 (the speckle bank's ``GaussianBlur``, the ECG ``polylines``, ``rectangle``,
``dilate``, the DICOM writer's colour conversions).

Output layout (docs/ARCHITECTURE.md, "Raw synthetic archive"):
``synth.json``, ``labels.csv`` (one row per study), ``videos.csv`` (one row per written file with
the exact sector geometry), ``<patient_id>/<study_id>/<files>``.

Re-running into an existing archive: same config and complete -> skipped (the existing archive
is returned); same config but interrupted -> regenerated in place (only our own files are
overwritten); another config or a directory that is not a synth archive -> ``UserError``.
Nothing is ever deleted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import multiprocessing
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from echoclr_cli.config.schema import Config
from echoclr_cli.config.sections import SynthConfig
from echoclr_cli.errors import UserError
from echoclr_cli.io import atomic_write, atomic_write_csv, atomic_write_json, png_grid
from echoclr_cli.synth.anatomy import (
    CANON_RES,
    CANON_U,
    CANON_V,
    Anatomy,
    _base_anatomy,
    _follow_up,
    _leaflets,
    _normal_clip,
    render_heart,
)
from echoclr_cli.synth.views import RENDERERS

GENERATOR = "echoclr-synth"
VERSION = 1

N_NOISE = 6  # speckle / noise fields per video, drawn per frame at random
N_BANK = 16  # speckle fields shared by all videos (each video crops 2 * N_NOISE + 1 of them)

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage (single frame)
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

LABEL_COLUMNS = [
    "study_id", "patient_id", "study_date", "year", "site", "as", "lvh",
    "as_clean", "lvh_clean", "as_severity", "leaflet_calc", "leaflet_open", "wall_mm",
    "lv_size", "ao_root_mm", "la_mm", "heart_rate", "n_videos",
]  # fmt: skip
VIDEO_COLUMNS = [
    "file", "kind", "study_id", "patient_id", "video_index", "fps", "n_frames", "height",
    "width", "apex_x", "apex_y", "radius", "half_angle_deg", "tilt_deg", "depth_mm",
    "format", "transfer_syntax", "photometric", "has_regions", "site",
]  # fmt: skip

WALL_LVH_MM = 12.0  # lvh = wall_mm > this (before label noise)
AS_SEVERE = 0.55  # as = as_severity > this (before label noise)

_FIRST = ["ALEX", "SAM", "KIM", "ROBIN", "JO", "LEE", "PAT", "MORGAN", "TAYLOR", "CASEY"]
_LAST = ["DOE", "ROE", "SMITH", "MILLER", "NOVAK", "SILVA", "KOWAL", "BERG", "MORI", "HALL"]


# --------------------------------------------------------------------------- public data
@dataclass
class SynthResult:
    """What ``synthesize`` wrote (counts over the whole archive)."""

    out_dir: Path
    n_patients: int
    n_studies: int
    n_videos: int  # cine loops
    n_files: int  # every file under the patient folders (cine + still + sr)
    n_cine: int
    labels_csv: Path
    skipped: bool = False  # True when an identical complete archive was already there


@dataclass(frozen=True)
class Acquisition:
    """Per-video nuisance. Sector geometry is in pixels / degrees of the raw frame."""

    apex_x: float
    apex_y: float
    radius: float
    half_angle_deg: float
    tilt_deg: float
    depth_mm: float
    rotation_deg: float
    shift_mm: float
    v_offset_mm: float
    gain: float
    gamma: float
    attenuation: float  # 1/mm
    tgc: float
    speckle: float  # speckle contrast
    noise: float  # additive noise level
    fps: int
    n_frames: int
    start_phase: float
    hr_jitter: float


@dataclass
class StudyPlan:
    index: int
    study_id: str
    patient_id: str
    patient_name: str
    study_date: date
    site: str
    anatomy: Anatomy
    as_label: int
    lvh_label: int
    as_clean: int
    lvh_clean: int
    n_videos: int
    views: tuple[str, ...] = ()  # view of each cine (multi-view archives only)


# --------------------------------------------------------------------------- sector geometry
def sector_mask(row, height: int, width: int) -> np.ndarray:
    """Exact boolean fan mask ``(height, width)`` of a videos.csv row (or any mapping with
    ``apex_x, apex_y, radius, half_angle_deg, tilt_deg``).

    A pixel centre (x, y) is inside when its distance from the apex is <= radius and its angle
    from the straight-down direction, minus the tilt, is within +-half_angle (degrees, positive
    towards +x).
    """
    ax, ay = float(row["apex_x"]), float(row["apex_y"])
    radius, half = float(row["radius"]), float(row["half_angle_deg"])
    tilt = float(row["tilt_deg"])
    dy = np.arange(height, dtype=np.float64)[:, None] - ay  # (H, 1)
    dx = np.arange(width, dtype=np.float64)[None, :] - ax  # (1, W)
    r = np.hypot(dx, dy)  # (H, W)
    theta = np.degrees(np.arctan2(dx, dy))  # (H, W) 0 = down
    return (r <= radius) & (np.abs(theta - tilt) <= half)


def _mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) inclusive bounds of a non-empty mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


# --------------------------------------------------------------------------- planning
def _exact_positives(rng: np.random.Generator, n: int, prevalence: float) -> np.ndarray:
    """Boolean (n,) with round(prevalence * n) True at random places."""
    k = int(round(prevalence * n))
    out = np.zeros(n, dtype=bool)
    out[rng.permutation(n)[:k]] = True
    return out


def plan_studies(sc: SynthConfig) -> list[StudyPlan]:
    """All study-level decisions (ids, dates, sites, latents, labels), deterministic in seed."""
    rng = np.random.default_rng([sc.seed, 0])
    n_studies = sc.studies
    n_patients = max(1, min(n_studies, int(round(n_studies / (1.0 + sc.repeat_patient_frac)))))
    n_repeat = n_studies - n_patients
    repeat = np.zeros(n_patients, dtype=bool)
    repeat[rng.permutation(n_patients)[:n_repeat]] = True
    # external site at patient level, until its studies reach external_frac of all studies
    target_ext = int(round(sc.external_frac * n_studies))
    external = np.zeros(n_patients, dtype=bool)
    n_ext = 0
    for p in rng.permutation(n_patients):
        size = 2 if repeat[p] else 1
        if n_ext + size <= target_ext:
            external[p] = True
            n_ext += size
    as_pos = _exact_positives(rng, n_patients, sc.as_prevalence)
    lvh_pos = _exact_positives(rng, n_patients, sc.lvh_prevalence)

    plans: list[StudyPlan] = []
    for p in range(n_patients):
        prng = np.random.default_rng([sc.seed, 1, p])
        patient_id = f"P{p + 1:05d}"
        name = f"{_LAST[prng.integers(len(_LAST))]}^{_FIRST[prng.integers(len(_FIRST))]}"
        site = "external" if external[p] else "internal"
        year = int(prng.integers(2021, 2023)) if external[p] else int(prng.integers(2012, 2018))
        anatomies = [_leaflets(prng, _base_anatomy(prng, bool(as_pos[p]), bool(lvh_pos[p])))]
        years = [year]
        if repeat[p]:
            anatomies.append(_follow_up(prng, anatomies[0]))
            years.append(year + int(prng.integers(1, 3 if external[p] else 4)))
        for a, y in zip(anatomies, years, strict=True):
            day = date(y, 1, 1) + timedelta(days=int(prng.integers(0, 365)))
            as_clean = int(a.as_severity > AS_SEVERE)
            lvh_clean = int(a.wall_mm > WALL_LVH_MM)
            flip_as, flip_lvh = prng.random(2) < sc.label_noise
            lo, hi = min(sc.min_videos, sc.max_videos), max(sc.min_videos, sc.max_videos)
            plans.append(
                StudyPlan(
                    index=-1,
                    study_id="",
                    patient_id=patient_id,
                    patient_name=name,
                    study_date=day,
                    site=site,
                    anatomy=a,
                    as_label=as_clean ^ int(flip_as),
                    lvh_label=lvh_clean ^ int(flip_lvh),
                    as_clean=as_clean,
                    lvh_clean=lvh_clean,
                    n_videos=int(prng.integers(lo, hi + 1)),
                )
            )
    plans.sort(key=lambda s: (s.study_date, s.patient_id))
    for i, s in enumerate(plans):
        s.index = i
        s.study_id = f"S{i + 1:05d}"
    if multi_view(sc):
        for s in plans:
            s.views = study_views(sc, s.index)
            s.n_videos = len(s.views)
    return plans


def multi_view(sc: SynthConfig) -> bool:
    """True unless the archive is the single-view PLAX one (whose output never changes)."""
    return list(sc.views) != ["plax"]


def study_views(sc: SynthConfig, index: int) -> tuple[str, ...]:
    """The view of each cine of study ``index`` (own random stream, deterministic in seed):
    1-2 videos of every non-PLAX view, 1-2 PLAX videos but fewer than the others together
    (PLAX a minority when there are >= 2 other views; at least one PLAX), in random order."""
    rng = np.random.default_rng([sc.seed, 6, index])
    others = [v for v in sc.views if v != "plax"]
    counts = {v: int(rng.integers(1, 3)) for v in others}
    if "plax" in sc.views:
        n_other = sum(counts.values())
        counts = {"plax": max(1, min(int(rng.integers(1, 3)), n_other - 1)), **counts}
    views = [v for v, n in counts.items() for _ in range(n)]
    return tuple(views[i] for i in rng.permutation(len(views)))


def _acquisition(
    rng: np.random.Generator, sc: SynthConfig, site: str, anat: Anatomy, view: str = "plax"
) -> Acquisition:
    """Draw one video's nuisance parameters and a sector that fits the frame."""
    h, w = sc.height, sc.width
    ext = site == "external"
    ecg_h = max(8.0, 0.12 * h)
    apex_y = round(rng.uniform(0.10, 0.14) * h if ext else rng.uniform(0.03, 0.07) * h, 2)
    apex_x = round(w / 2 + rng.uniform(-0.03, 0.03) * w, 2)
    half = round(rng.uniform(30.0, 42.0), 2)
    tilt = round(rng.uniform(-4.0, 4.0), 2)
    r_max_v = h - ecg_h - 3 - apex_y
    r_max_h = (min(apex_x, w - 1 - apex_x) - 3) / math.sin(math.radians(half + abs(tilt)))
    radius = round(min(r_max_v, r_max_h) * rng.uniform(0.90, 1.0), 2)
    fps_lo, fps_hi = int(math.ceil(min(sc.min_fps, sc.max_fps))), int(max(sc.min_fps, sc.max_fps))
    f_lo, f_hi = min(sc.min_frames, sc.max_frames), max(sc.min_frames, sc.max_frames)
    return Acquisition(
        apex_x=apex_x,
        apex_y=apex_y,
        radius=radius,
        half_angle_deg=half,
        tilt_deg=tilt,
        depth_mm=round(rng.uniform(140.0, 195.0), 1),
        rotation_deg=(anat.axis_deg if view == "plax" else 0.0)
        + _normal_clip(rng, 0.0, 7.0, -15.0, 15.0),
        shift_mm=rng.uniform(-12.0, 12.0),
        v_offset_mm=rng.uniform(-3.0, 3.0),
        gain=rng.uniform(0.9, 1.5) if ext else rng.uniform(0.7, 1.3),
        gamma=rng.uniform(0.75, 1.35),
        attenuation=rng.uniform(0.004, 0.009),
        tgc=rng.uniform(0.3, 1.0),
        speckle=rng.uniform(0.8, 1.3),
        noise=rng.uniform(0.06, 0.14) if ext else rng.uniform(0.02, 0.08),
        fps=int(rng.integers(fps_lo, max(fps_lo, fps_hi) + 1)),
        n_frames=int(rng.integers(f_lo, f_hi + 1)),
        start_phase=rng.uniform(0.0, 1.0),
        hr_jitter=rng.uniform(0.97, 1.03),
    )


# --------------------------------------------------------------------------- per-video rendering
@functools.lru_cache(maxsize=2)
def _speckle_bank(seed: int, h: int, w: int) -> np.ndarray:
    """(K, H+pad, W+pad) float32 speckle amplitudes (Rayleigh, lightly smoothed, mean ~1),
    drawn once per seed and frame size; videos take random crops of random fields."""
    pad = max(8, h // 8)
    rng = np.random.default_rng([seed, 3, h, w])
    g = rng.standard_normal((N_BANK, 2, h + pad, w + pad), dtype=np.float32)
    ray = np.hypot(g[:, 0], g[:, 1]) * np.float32(1 / 1.2533)  # (K,H+pad,W+pad)
    sig = max(0.5, 0.0025 * h)
    for i in range(N_BANK):
        ray[i] = cv2.GaussianBlur(ray[i], (0, 0), sigmaX=1.4 * sig, sigmaY=sig)
    ray.setflags(write=False)
    return ray


def _fma32(c: np.ndarray, a: np.ndarray, b: np.ndarray | np.float32) -> np.ndarray:
    """float32 ``c + a * b`` rounded once (a fused multiply-add), elementwise; shapes broadcast.

    OpenCV 5's SIMD kernels of ``remap`` and ``addWeighted`` use FMA instructions, so this is how
    the archives made with OpenCV 5.0 were computed (measured bit-identical on every remap and
    addWeighted call of the test archives). numpy has no FMA: the product of two float32 is
    exact in float64 and the sum is rounded to float64 and then to float32. That double rounding
    differs from one rounding only when the float64 sum lies exactly halfway between two float32
    values (or is below float32's normal range); those few elements are redone with the exact
    error of the float64 sum (TwoSum).
    """
    s64 = np.multiply(a, b, dtype=np.float64)  # exact: 24 + 24 bits < 53
    s64 += c
    out = s64.astype(np.float32)
    bits = s64.view(np.uint64)
    halfway = (bits & np.uint64(0x1FFFFFFF)) == np.uint64(0x10000000)  # the bits float32 drops
    tiny = (bits & np.uint64(0x7FF0000000000000)) < np.uint64(897 << 52)  # |s| < 2**-126
    cand = np.flatnonzero(halfway | tiny)
    if cand.size:  # rare: the exact sum decides between the two float32 neighbours
        shape = s64.shape
        c_ = np.broadcast_to(np.asarray(c, np.float64), shape).ravel()[cand]
        p = np.multiply(
            np.broadcast_to(a, shape).ravel()[cand],
            np.broadcast_to(b, shape).ravel()[cand],
            dtype=np.float64,
        )
        s = s64.ravel()[cand]
        bb = s - c_
        err = (c_ - (s - bb)) + (p - bb)  # exact: c + p == s + err
        r = out.ravel()[cand]
        other = np.nextafter(r, np.where(s > r, np.float32(np.inf), np.float32(-np.inf)))
        mid = (s != r) & ((r.astype(np.float64) + other.astype(np.float64)) * 0.5 == s)
        fix = mid & (err != 0)
        nearest = np.where(err > 0, np.maximum(r, other), np.minimum(r, other))
        out.reshape(-1)[cand[fix]] = nearest[fix]
    return out


@dataclass(frozen=True)
class _Bilinear:
    """Bilinear sampling of a video's canonical cycle at its fan pixels, precomputed per video;
    the same arithmetic as ``cv2.remap(INTER_LINEAR, BORDER_CONSTANT, borderValue=0.02)`` in
    OpenCV 5.0 (exact sampling positions, FMA). Outside the fan the old remap output was
    multiplied by 0, so only fan pixels are sampled. Only the canonical pixels that some fan pixel
    reads are kept (``cycle``), so a frame costs O(fan pixels), not O(canonical grid)."""

    pixels: np.ndarray  # (n,) flat output indices of the fan pixels
    cycle: np.ndarray  # (P, m) float32 canonical values read by the fan (border cells: 0.02)
    border: np.ndarray  # (m,) bool: border cells (constant, not interpolated between phases)
    corners: np.ndarray  # (4, n) indices into cycle's columns of neighbours 00, 01, 10, 11
    fx: np.ndarray  # (n,) float32 column fraction
    fy: np.ndarray  # (n,) float32 row fraction


def _bilinear(
    heart: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, mask: np.ndarray
) -> _Bilinear:
    """Gather indices and weights of the fan pixels into ``heart`` (P, Hc, Wc). The canonical
    grid is padded by one cell of the border value, so a neighbour outside the grid reads the
    border; a pixel with no neighbour inside reads the padded corner four times, which gives
    exactly the border value (b + f * (b - b) == b), as OpenCV's constant border does."""
    n_phases, hc, wc = heart.shape
    pixels = np.flatnonzero(mask)
    mx, my = map_x.ravel()[pixels], map_y.ravel()[pixels]  # (n,) float32
    ix, iy = np.floor(mx), np.floor(my)
    fx, fy = (mx - ix).astype(np.float32), (my - iy).astype(np.float32)
    ix, iy = ix.astype(np.int64) + 1, iy.astype(np.int64) + 1  # in the padded grid
    far = (ix < 0) | (ix > wc) | (iy < 0) | (iy > hc)  # no neighbour inside: border only
    ix, iy = np.where(far, 0, ix), np.where(far, 0, iy)
    x1, y1 = np.where(far, 0, ix + 1), np.where(far, 0, iy + 1)
    wp = wc + 2
    flat = np.stack([iy * wp + ix, iy * wp + x1, y1 * wp + ix, y1 * wp + x1])  # (4, n)
    read = np.zeros((hc + 2) * wp, bool)
    read[flat] = True
    used = np.flatnonzero(read)  # (m,) padded cells some fan pixel reads, ascending
    column = np.empty(read.size, np.int64)
    column[used] = np.arange(used.size)
    corners = column[flat]  # (4, n) into used
    uy, ux = used // wp - 1, used % wp - 1  # in the unpadded grid; -1 or hc / wc: border
    border = (uy < 0) | (uy >= hc) | (ux < 0) | (ux >= wc)
    cycle = np.full((n_phases, used.size), 0.02, np.float32)  # (P, m)
    cycle[:, ~border] = heart.reshape(n_phases, -1)[:, uy[~border] * wc + ux[~border]]
    return _Bilinear(
        pixels=pixels,
        cycle=cycle,
        border=border,
        corners=corners,
        fx=fx,
        fy=fy,
    )


def _video_maps(acq: Acquisition, h: int, w: int, rng: np.random.Generator, seed: int) -> tuple:
    """Per-video precomputed maps, so that a frame is one bilinear gather plus a few cheap ops:
    map_x, map_y (H,W) float32 canonical column/row per pixel; mult (N_NOISE,H,W) gain *
    attenuation * speckle (0 outside the fan); add (N_NOISE,H,W) near field + noise (>= a floor
    inside the fan); lut (256,) uint8 compression curve; mask (H,W) bool."""
    mask = sector_mask(asdict(acq), h, w)  # (H, W)
    dy = np.arange(h, dtype=np.float32)[:, None] - np.float32(acq.apex_y)  # (H,1)
    dx = np.arange(w, dtype=np.float32)[None, :] - np.float32(acq.apex_x)  # (1,W)
    mmpp = acq.depth_mm / acq.radius  # mm per pixel
    lat, dep = dx * mmpp, dy * mmpp
    th = math.radians(acq.rotation_deg)
    u = lat * math.cos(th) - dep * math.sin(th) - acq.shift_mm  # (H,W)
    v = lat * math.sin(th) + dep * math.cos(th) + acq.v_offset_mm
    map_x = ((u - CANON_U[0]) / CANON_RES).astype(np.float32)
    map_y = ((v - CANON_V[0]) / CANON_RES).astype(np.float32)

    r_mm = np.hypot(lat, dep)  # (H,W)
    theta = np.degrees(np.arctan2(dx, dy)) - acq.tilt_deg
    lateral = 1.0 - 0.35 * (np.abs(theta) / acq.half_angle_deg) ** 4
    att = np.exp(-acq.attenuation * r_mm) * (1.0 + acq.tgc * r_mm / acq.depth_mm)
    gain = (acq.gain * att * lateral * mask).astype(np.float32)  # (H,W)

    # speckle: crops of a shared bank (a fixed part plus a per-frame part); the bank is common
    # to all studies, so a speckle pattern never identifies a study
    bank = _speckle_bank(seed, h, w)  # (K, H+pad, W+pad) mean ~1
    k = rng.choice(bank.shape[0], size=2 * N_NOISE + 1, replace=False)
    oy = rng.integers(0, bank.shape[1] - h + 1, size=2 * N_NOISE + 1)
    ox = rng.integers(0, bank.shape[2] - w + 1, size=2 * N_NOISE + 1)
    crops = np.stack([bank[k[i], oy[i] : oy[i] + h, ox[i] : ox[i] + w] for i in range(k.size)])
    sp = 0.55 * crops[0][None] + 0.45 * crops[1 : N_NOISE + 1]  # (N,H,W)
    sp = np.clip(1.0 + acq.speckle * 1.6 * (sp - 1.0), 0.0, None)
    mult = (sp * gain[None]).astype(np.float32)  # (N,H,W)

    near = 0.40 * np.exp(-(((r_mm - 3.0) / 2.5) ** 2)) + 0.22 * np.exp(-(((r_mm - 9.0) / 2.0) ** 2))
    floor = 1.5 / 255.0  # keeps every fan pixel non-black (also through the LUT)
    noise = acq.noise * (0.3 + 0.7 * r_mm / acq.depth_mm)  # (H,W) deeper = noisier
    add = (near * acq.gain + floor)[None] + noise[None] * crops[N_NOISE + 1 :]  # (N,H,W)
    add = (add * mask).astype(np.float32)

    x = np.arange(256, dtype=np.float64) / 255.0
    lut = np.clip(255.0 * x**acq.gamma + 0.5, 0, 255).astype(np.uint8)
    lut[1:] = np.maximum(lut[1:], 1)
    return map_x, map_y, mult, add, lut, mask


def _ecg_trace(n: int, beats_per_px: float, phase0: float) -> np.ndarray:
    """ECG-like waveform (n,) in [-0.3, 1] (R wave at phase 0)."""
    ph = (phase0 + np.arange(n) * beats_per_px) % 1.0
    r = np.exp(-(((ph - 0.0) / 0.012) ** 2)) + np.exp(-(((ph - 1.0) / 0.012) ** 2))
    q = -0.15 * np.exp(-(((ph - 0.975) / 0.01) ** 2))
    s = -0.25 * np.exp(-(((ph - 0.025) / 0.012) ** 2))
    t = 0.3 * np.exp(-(((ph - 0.3) / 0.05) ** 2))
    pw = 0.12 * np.exp(-(((ph - 0.88) / 0.025) ** 2))
    return r + q + s + t + pw


@dataclass(frozen=True)
class _Ecg:
    x0: int
    x1: int
    y0: int
    y1: int
    sweep_s: float
    t0: float
    cursor: tuple[int, int, int]


def _overlay(
    acq: Acquisition, plan: StudyPlan, mask: np.ndarray, h: int, w: int, hr: float
) -> tuple[np.ndarray, _Ecg]:
    """Static screen furniture (RGB uint8 (H,W,3), zero inside the fan) and the ECG strip
    geometry. Includes an orientation marker inside the fan's bounding box, outside the fan."""
    img = np.zeros((h, w, 3), np.uint8)
    ext = plan.site == "external"
    font = cv2.FONT_HERSHEY_PLAIN if ext else cv2.FONT_HERSHEY_SIMPLEX
    scale = (0.75 if ext else 0.33) * h / 300.0
    th = 1
    line = max(6, int(round(h / 300.0 * 12)))
    white = (235, 235, 235)
    date_s = plan.study_date.strftime("%d.%m.%Y" if ext else "%Y-%m-%d")
    lines = [
        plan.patient_name,
        f"ID {plan.patient_id}",
        date_s,
        f"FR {acq.fps}Hz",
        f"D {acq.depth_mm / 10:.1f}cm",
        f"HR {int(round(hr))}",
    ]
    if ext:  # text block left, logo bottom right
        for i, s in enumerate(lines):
            cv2.putText(img, s, (2, line * (i + 2)), font, scale, (200, 230, 255), th, cv2.LINE_AA)
        lw, lh = int(0.22 * w), int(0.06 * h)
        cv2.rectangle(img, (w - lw - 2, h - lh - 2), (w - 2, h - 2), (90, 40, 120), -1)
        cv2.putText(img, "SONOVIEW", (w - lw, h - 4), font, scale, white, th, cv2.LINE_AA)
        trace_col, cursor_col = (255, 220, 0), (0, 200, 255)
        ex0, ex1 = 2, w - lw - 6
    else:  # logo bar top left, text top right
        lw, lh = int(0.25 * w), max(6, int(0.06 * h))
        cv2.rectangle(img, (0, 0), (lw, lh), (30, 60, 110), -1)
        cv2.putText(img, "ECHOSYNTH", (2, lh - 2), font, scale, (120, 220, 255), th, cv2.LINE_AA)
        for i, s in enumerate(lines):
            (tw, _), _ = cv2.getTextSize(s, font, scale, th)
            cv2.putText(img, s, (w - tw - 3, line * (i + 1)), font, scale, white, th, cv2.LINE_AA)
        trace_col, cursor_col = (0, 230, 80), (255, 255, 0)
        ex0, ex1 = int(0.1 * w), int(0.9 * w)
    ecg_h = max(8, int(0.12 * h))
    ey0, ey1 = h - ecg_h, h - 3
    n = max(2, ex1 - ex0)
    sweep_s = 3.0
    beats_per_px = hr / 60.0 * sweep_s / n
    trace = _ecg_trace(n, beats_per_px, 0.0)
    ys = (ey1 - 2 - (trace + 0.3) / 1.3 * (ey1 - ey0 - 4)).astype(np.int32)
    pts = np.stack([np.arange(ex0, ex0 + n, dtype=np.int32), ys], axis=1)
    cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, trace_col, 1, cv2.LINE_AA)
    ecg = _Ecg(ex0, ex0 + n, ey0, ey1, sweep_s, acq.start_phase * 60.0 / hr, cursor_col)

    # orientation marker inside the fan's bounding box, outside the fan (top corners)
    bx0, by0, bx1, by1 = _mask_bbox(mask)
    size = max(3, h // 50)
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    marker = (bx1 - size, by0, bx1, by0 + size)
    for x_start in list(range(bx1 - size, bx0, -1)) + list(range(bx0, bx1 - size)):
        cand = (x_start, by0, x_start + size, by0 + size)
        if not grown[cand[1] : cand[3] + 1, cand[0] : cand[2] + 1].any():
            marker = cand
            break
    img[grown] = 0
    mx0, my0, mx1, my1 = marker
    img[my0 : my1 + 1, mx0 : mx1 + 1] = (255, 170, 0) if ext else (230, 230, 230)
    img[grown] = 0  # the fan stays free of overlay whatever happened above
    return img, ecg


def render_video(
    heart: np.ndarray,
    acq: Acquisition,
    plan: StudyPlan,
    h: int,
    w: int,
    rng: np.random.Generator,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``(T, H, W, 3)`` uint8 RGB of one video and its sector mask ``(H, W)``."""
    map_x, map_y, mult, add, lut, mask = _video_maps(acq, h, w, rng, seed)
    sampler = _bilinear(heart, map_x, map_y, mask)
    hr = plan.anatomy.heart_rate * acq.hr_jitter
    overlay, ecg = _overlay(acq, plan, mask, h, w, hr)
    t = np.arange(acq.n_frames) / acq.fps  # seconds
    phase = (acq.start_phase + t * hr / 60.0) % 1.0
    pos = phase * heart.shape[0]
    k0 = np.floor(pos).astype(int) % heart.shape[0]
    k1 = (k0 + 1) % heart.shape[0]
    frac = (pos - np.floor(pos)).astype(np.float32)
    i_mult = rng.integers(0, N_NOISE, acq.n_frames)
    i_add = rng.integers(0, N_NOISE, acq.n_frames)
    cycle, border = sampler.cycle, sampler.border
    mult = mult.reshape(N_NOISE, -1)[:, sampler.pixels]  # (N, n) fan pixels only
    add = add.reshape(N_NOISE, -1)[:, sampler.pixels]
    gray = np.empty((acq.n_frames, sampler.pixels.size), np.uint8)  # (T, n) the fan's pixels
    for i in range(acq.n_frames):
        # canonical frame between two phases, (1-f) * heart[k0] + f * heart[k1], as
        # cv2.addWeighted computes it (alpha and beta in float32, one FMA); border cells stay
        alpha, beta = np.float32(1 - frac[i]), np.float32(frac[i])
        canon = _fma32(cycle[k1[i]] * beta, cycle[k0[i]], alpha)  # (m,)
        canon[border] = np.float32(0.02)
        p00, p01, p10, p11 = canon[sampler.corners]  # (n,) each
        top = _fma32(p00, sampler.fx, p01 - p00)
        bottom = _fma32(p10, sampler.fx, p11 - p10)
        img = _fma32(top, sampler.fy, bottom - top)  # (n,) float32
        img *= mult[i_mult[i]]
        img += add[i_add[i]]
        # cv2.convertScaleAbs: |x * 255| rounded half to even, saturated; then the LUT
        gray[i] = lut[np.clip(np.rint(np.abs(img * np.float32(255.0))), 0, 255).astype(np.uint8)]
    # frames = grey image + screen overlay (was a saturating cv2.add): the grey image is black
    # outside the fan (mult and add are 0 there) and the overlay is black on the fan (cleared
    # there, the ECG strip lies below it), so the sum is the overlay with the fan pasted in
    assert not overlay.reshape(-1, 3)[sampler.pixels].any() and not mask[ecg.y0 : ecg.y1].any()
    out = np.empty((acq.n_frames, h, w, 3), np.uint8)
    out[:] = overlay
    cx = ecg.x0 + (((ecg.t0 + t) % ecg.sweep_s) / ecg.sweep_s * (ecg.x1 - ecg.x0 - 1)).astype(int)
    out[np.arange(acq.n_frames)[:, None], np.arange(ecg.y0, ecg.y1)[None, :], cx[:, None]] = (
        ecg.cursor
    )  # (T, rows) cursor pixels, one column per frame
    out.reshape(acq.n_frames, h * w, 3)[:, sampler.pixels] = gray[:, :, None]
    return out, mask


# --------------------------------------------------------------------------- DICOM writing
def _uid(seed: int, *parts) -> str:
    """Deterministic UID under the UUID root 2.25 (a 128-bit hash of the parts)."""
    key = "|".join([GENERATOR, str(seed), *map(str, parts)]).encode()
    return "2.25." + str(int(hashlib.sha256(key).hexdigest()[:32], 16))


def _base_dataset(
    plan: StudyPlan, seed: int, sop_class: str, modality: str, series: int, inst: int
):
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_uid = _uid(seed, plan.study_id, "sop", series, inst)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = plan.study_date.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.StudyTime = "093000"
    ds.ContentTime = f"0930{inst:02d}"[:6]
    ds.AccessionNumber = plan.study_id
    ds.Modality = modality
    ds.Manufacturer = "SonoView" if plan.site == "external" else "EchoSynth"
    ds.InstitutionName = "External Hospital" if plan.site == "external" else "Internal Hospital"
    ds.ReferringPhysicianName = ""
    ds.PatientName = plan.patient_name
    ds.PatientID = plan.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = _uid(seed, plan.study_id, "study")
    ds.SeriesInstanceUID = _uid(seed, plan.study_id, "series", series)
    ds.StudyID = plan.study_id
    ds.SeriesNumber = series
    ds.InstanceNumber = inst
    return ds


def _image_attrs(ds, frames: np.ndarray, photometric: str) -> None:
    """Pixel description of 8-bit frames (T,H,W,3) colour or (T,H,W) MONOCHROME2."""
    ds.SamplesPerPixel = 1 if photometric == "MONOCHROME2" else 3
    ds.PhotometricInterpretation = photometric
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0


def _regions(ds, acq: Acquisition, mask: np.ndarray) -> None:
    """One SequenceOfUltrasoundRegions item: the fan's bounding box, 2D tissue, cm/pixel."""
    from pydicom.dataset import Dataset

    x0, y0, x1, y1 = _mask_bbox(mask)
    item = Dataset()
    item.RegionSpatialFormat = 1  # 2D
    item.RegionDataType = 1  # tissue
    item.RegionFlags = 0
    item.RegionLocationMinX0 = x0
    item.RegionLocationMinY0 = y0
    item.RegionLocationMaxX1 = x1
    item.RegionLocationMaxY1 = y1
    item.PhysicalUnitsXDirection = 3  # cm
    item.PhysicalUnitsYDirection = 3
    cm = acq.depth_mm / acq.radius / 10.0
    item.PhysicalDeltaX = round(cm, 6)
    item.PhysicalDeltaY = round(cm, 6)
    item.ReferencePixelX0 = int(round(acq.apex_x))
    item.ReferencePixelY0 = int(round(acq.apex_y))
    ds.SequenceOfUltrasoundRegions = [item]


def _rgb_to_ybr_full(frames: np.ndarray) -> np.ndarray:
    """(T,H,W,3) RGB -> YBR_FULL (JFIF full-range Y, Cb, Cr), as OpenCV computes it."""
    t, h, w, _ = frames.shape
    ycrcb = cv2.cvtColor(frames.reshape(t * h, w, 3), cv2.COLOR_RGB2YCrCb)  # (T*H, W, 3)
    y, cr, cb = cv2.split(ycrcb)
    return cv2.merge([y, cb, cr]).reshape(t, h, w, 3)


def _encode_pixels(ds, frames: np.ndarray, codec: str, photometric: str) -> None:
    """Set PixelData and the transfer syntax. codec: raw | rle | jpeg; frames (T,H,W,3) RGB,
    stored as RGB, YBR_FULL or MONOCHROME2 (luma; the fan is grey already)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

    if codec == "jpeg":  # lossy baseline JPEG, 4:2:2 chroma, as most echo archives hold
        _image_attrs(ds, frames, "YBR_FULL_422")
        params = [
            cv2.IMWRITE_JPEG_QUALITY, 92,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
        ]  # fmt: skip
        chunks = []
        for f in frames:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), params)
            if not ok:  # pragma: no cover - cv2 always encodes uint8 RGB
                raise RuntimeError("JPEG encoding failed")
            chunks.append(buf.tobytes())
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate(chunks)
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        return
    arr = frames
    if photometric == "YBR_FULL":
        arr = _rgb_to_ybr_full(frames)
    elif photometric == "MONOCHROME2":
        arr = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])  # (T,H,W)
    _image_attrs(ds, arr, photometric)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if codec == "rle":
        ds.compress(RLELossless, arr=arr, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    else:
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
        ds["PixelData"].VR = "OB"


def _save_dicom(ds, path: Path) -> None:
    atomic_write(path, lambda f: ds.save_as(f, enforce_file_format=True))


def _write_cine_dicom(
    path: Path, frames: np.ndarray, plan: StudyPlan, acq: Acquisition, mask: np.ndarray,
    seed: int, video_index: int, codec: str, photometric: str, regions: bool,
    series_description: str = "PLAX",
) -> str:  # fmt: skip
    """Multi-frame US DICOM; returns the transfer syntax UID written."""
    ds = _base_dataset(plan, seed, US_MULTIFRAME, "US", 1 + video_index, 1)
    ds.NumberOfFrames = int(frames.shape[0])
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.FrameTime = f"{1000.0 / acq.fps:.4f}"
    ds.CineRate = acq.fps
    ds.RecommendedDisplayFrameRate = acq.fps
    ds.HeartRate = int(round(plan.anatomy.heart_rate * acq.hr_jitter))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "", "0001"]
    ds.SeriesDescription = series_description
    if regions:
        _regions(ds, acq, mask)
    _encode_pixels(ds, frames, codec, photometric)
    _save_dicom(ds, path)
    return str(ds.file_meta.TransferSyntaxUID)


def _write_still(
    path: Path, frame: np.ndarray, plan: StudyPlan, seed: int, series: int, multiframe_class: bool
) -> None:
    """Single-frame still: US Image Storage without NumberOfFrames, or the multi-frame class
    with NumberOfFrames = 1 (both occur in real archives)."""
    ds = _base_dataset(plan, seed, US_MULTIFRAME if multiframe_class else US_IMAGE, "US", series, 1)
    if multiframe_class:
        ds.NumberOfFrames = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "", "0001"]
    _encode_pixels(ds, frame[None], "raw", "RGB")
    _save_dicom(ds, path)


def _write_sr(path: Path, plan: StudyPlan, seed: int, series: int) -> None:
    """Basic Text SR with the report findings; no pixel data (a preprocessor must skip it)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = _base_dataset(plan, seed, BASIC_TEXT_SR, "SR", series, 1)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "18748-4", "LN"
    code.CodeMeaning = "Diagnostic Imaging Report"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [code]
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    a = plan.anatomy
    findings = (
        f"IVSd {a.wall_mm:.0f} mm, LVIDd {a.lv_size:.0f} mm. "
        + ("Left ventricular hypertrophy. " if plan.lvh_label else "Normal wall thickness. ")
        + ("Severe aortic stenosis." if plan.as_label else "No severe aortic stenosis.")
    )
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
    item.ConceptNameCodeSequence = [name]
    item.TextValue = findings
    ds.ContentSequence = [item]
    _save_dicom(ds, path)


def _write_video_file(path: Path, frames: np.ndarray, fps: int, fmt: str) -> None:
    """AVI (MJPG) or MP4 (mp4v) via cv2.VideoWriter, written to a temp name then renamed."""
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if fmt == "avi" else "mp4v"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        writer = cv2.VideoWriter(tmp, fourcc, float(fps), (frames.shape[2], frames.shape[1]))
        if not writer.isOpened():
            raise UserError(
                f"OpenCV cannot write {fmt} files here ({path})",
                fix="use --format dicom or an opencv build with video support",
            )
        for f in frames:
            writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        writer.release()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _photometric(rng: np.random.Generator, codec: str) -> str:
    """Colour model of a cine file: JPEG -> YBR_FULL_422; RLE / raw -> MONOCHROME2 (older
    scanners export grey; also a third of the bytes and of the RLE work), RGB or YBR_FULL."""
    if codec == "jpeg":
        return "YBR_FULL_422"
    x = rng.random()
    return "MONOCHROME2" if x < 0.5 else ("RGB" if x < 0.85 else "YBR_FULL")


def _file_name(rng: np.random.Generator, index: int, study_id: str) -> str:
    """Real archives mix extension-less names and .dcm names."""
    style = int(rng.integers(3))
    if style == 0:
        return f"IM{index + 1:06d}"
    if style == 1:
        return f"US{index + 1:04d}.dcm"
    return f"{study_id}_{index + 1:03d}.dcm"


# --------------------------------------------------------------------------- study + archive
class _Hearts(dict):
    """A study's canonical cycle per view, rendered on first use."""

    def __init__(self, anatomy: Anatomy):
        super().__init__()
        self.anatomy = anatomy

    def __missing__(self, view: str) -> np.ndarray:
        if view == "plax":
            heart = render_heart(self.anatomy)
        else:
            heart = RENDERERS[view](self.anatomy)
        self[view] = heart
        return heart


def _study(plan: StudyPlan, sc: SynthConfig, out_dir: Path) -> list[dict]:
    """Render and write one study; returns its videos.csv rows."""
    rng = np.random.default_rng([sc.seed, 2, plan.index])
    hearts = _Hearts(plan.anatomy)
    rel_dir = Path(plan.patient_id) / plan.study_id
    rows: list[dict] = []
    still_src: tuple[np.ndarray, Acquisition] | None = None
    n_file = 0
    for vi in range(plan.n_videos):
        view = plan.views[vi] if plan.views else "plax"
        acq = _acquisition(rng, sc, plan.site, plan.anatomy, view)
        frames, mask = render_video(hearts[view], acq, plan, sc.height, sc.width, rng, sc.seed)
        row = {
            "kind": "cine", "study_id": plan.study_id, "patient_id": plan.patient_id,
            "video_index": vi, "fps": acq.fps, "n_frames": acq.n_frames, "height": sc.height,
            "width": sc.width, "apex_x": acq.apex_x, "apex_y": acq.apex_y,
            "radius": acq.radius, "half_angle_deg": acq.half_angle_deg,
            "tilt_deg": acq.tilt_deg, "depth_mm": acq.depth_mm, "site": plan.site,
        }  # fmt: skip
        if plan.views:
            row["view"] = view
        if sc.format == "dicom":
            name = _file_name(rng, n_file, plan.study_id)
            compressed = rng.random() < sc.compressed_frac
            jpeg = rng.random() < sc.jpeg_frac
            codec = ("jpeg" if jpeg else "rle") if compressed else "raw"
            photometric = _photometric(rng, codec)
            regions = bool(rng.random() < 0.5)
            ts = _write_cine_dicom(
                out_dir / rel_dir / name, frames, plan, acq, mask, sc.seed, vi, codec,
                photometric, regions, "2D" if plan.views else "PLAX",
            )  # fmt: skip
            row.update(
                format="dicom",
                transfer_syntax=ts,
                photometric=photometric,
                has_regions=int(regions),
            )
        else:
            name = f"{plan.study_id}_{vi + 1:02d}.{sc.format}"
            _write_video_file(out_dir / rel_dir / name, frames, acq.fps, sc.format)
            row.update(format=sc.format, transfer_syntax="", photometric="RGB", has_regions=0)
        n_file += 1
        row["file"] = (rel_dir / name).as_posix()
        rows.append(row)
        if still_src is None:
            still_src = (frames[int(rng.integers(frames.shape[0]))].copy(), acq)
        del frames
    if sc.extras and still_src is not None:
        frame, acq = still_src
        name = _file_name(rng, n_file, plan.study_id)
        _write_still(out_dir / rel_dir / name, frame, plan, sc.seed, 90, bool(rng.random() < 0.5))
        n_file += 1
        rows.append({
            "file": (rel_dir / name).as_posix(), "kind": "still", "study_id": plan.study_id,
            "patient_id": plan.patient_id, "video_index": -1, "fps": None, "n_frames": 1,
            "height": sc.height, "width": sc.width, "apex_x": acq.apex_x, "apex_y": acq.apex_y,
            "radius": acq.radius, "half_angle_deg": acq.half_angle_deg, "tilt_deg": acq.tilt_deg,
            "depth_mm": acq.depth_mm, "format": "dicom", "transfer_syntax": "1.2.840.10008.1.2.1",
            "photometric": "RGB", "has_regions": 0, "site": plan.site,
        })  # fmt: skip
        name = _file_name(rng, n_file, plan.study_id)
        _write_sr(out_dir / rel_dir / name, plan, sc.seed, 99)
        rows.append({
            "file": (rel_dir / name).as_posix(), "kind": "sr", "study_id": plan.study_id,
            "patient_id": plan.patient_id, "video_index": -1, "fps": None, "n_frames": 0,
            "height": None, "width": None, "apex_x": None, "apex_y": None, "radius": None,
            "half_angle_deg": None, "tilt_deg": None, "depth_mm": None, "format": "dicom",
            "transfer_syntax": "1.2.840.10008.1.2.1", "photometric": "", "has_regions": 0,
            "site": plan.site,
        })  # fmt: skip
    return rows


def _run_studies(
    plans: list[StudyPlan],
    sc: SynthConfig,
    out_dir: Path,
    progress: Callable[[int, int], None] | None,
) -> list[dict]:
    """Render all studies (in ``sc.workers`` spawned processes when > 1); rows in study order."""
    results: dict[int, list[dict]] = {}
    n_workers = min(sc.workers, len(plans))
    if n_workers <= 1:
        for plan in plans:
            results[plan.index] = _study(plan, sc, out_dir)
            if progress is not None:
                progress(len(results), len(plans))
    else:
        # spawn, not fork: OpenCV's thread pool is not fork-safe
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
            futures = {pool.submit(_study, plan, sc, out_dir): plan.index for plan in plans}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                if progress is not None:
                    progress(len(results), len(plans))
    return [row for plan in plans for row in results[plan.index]]


def _label_row(s: StudyPlan) -> dict:
    a = s.anatomy
    return {
        "study_id": s.study_id, "patient_id": s.patient_id,
        "study_date": s.study_date.isoformat(), "year": s.study_date.year, "site": s.site,
        "as": s.as_label, "lvh": s.lvh_label, "as_clean": s.as_clean, "lvh_clean": s.lvh_clean,
        "as_severity": round(a.as_severity, 4), "leaflet_calc": round(a.leaflet_calc, 4),
        "leaflet_open": round(a.leaflet_open, 4), "wall_mm": round(a.wall_mm, 3),
        "lv_size": round(a.lv_size, 3), "ao_root_mm": round(a.ao_root_mm, 3),
        "la_mm": round(a.la_mm, 3), "heart_rate": round(a.heart_rate, 2),
        "n_videos": s.n_videos,
    }  # fmt: skip


def _check_out_dir(out_dir: Path, config: dict) -> str:
    """'new' | 'complete' | 'resume'; raises UserError for foreign or different archives."""
    if not out_dir.exists():
        return "new"
    if not out_dir.is_dir():
        raise UserError(
            f"{out_dir} exists and is not a directory", fix="choose another output path"
        )
    if not any(out_dir.iterdir()):
        return "new"
    meta_path = out_dir / "synth.json"
    try:
        meta = json.loads(meta_path.read_text())
        ok = meta.get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise UserError(
            f"{out_dir} is not empty and is not an echoclr synthetic archive (no valid synth.json)",
            fix="choose an empty or new output directory; existing files are never deleted",
        )
    if meta.get("version") != VERSION or meta.get("config") != config:
        raise UserError(
            f"{out_dir} holds a synthetic archive made with another config or version",
            fix="write to a new directory, or delete the old archive yourself",
        )
    return "complete" if meta.get("complete") else "resume"


def synthesize(
    cfg: Config, out_dir: Path, progress: Callable[[int, int], None] | None = None
) -> SynthResult:
    """Write a synthetic raw echo archive to ``out_dir`` from ``cfg.synth``.

    Deterministic in ``cfg.synth.seed``: same labels.csv / videos.csv bytes and pixel arrays.
    ``progress(done, total)`` is called after each study. An existing complete archive with the
    same config is returned untouched (``skipped=True``); an interrupted one is regenerated in
    place; anything else non-empty is refused.
    """
    sc = cfg.synth
    out_dir = Path(out_dir)
    # workers do not change the output; views=['plax'] is the archive made before views existed
    config = sc.model_dump(
        mode="json", exclude={"workers"} | (set() if multi_view(sc) else {"views"})
    )
    state = _check_out_dir(out_dir, config)
    labels_csv = out_dir / "labels.csv"
    if state == "complete":
        videos = pd.read_csv(out_dir / "videos.csv")
        labels = pd.read_csv(labels_csv)
        return SynthResult(
            out_dir=out_dir,
            n_patients=int(labels["patient_id"].nunique()),
            n_studies=len(labels),
            n_videos=int((videos["kind"] == "cine").sum()),
            n_files=len(videos),
            n_cine=int((videos["kind"] == "cine").sum()),
            labels_csv=labels_csv,
            skipped=True,
        )
    meta = {"generator": GENERATOR, "version": VERSION, "config": config, "complete": False}
    atomic_write_json(out_dir / "synth.json", meta)
    plans = plan_studies(sc)
    rows = _run_studies(plans, sc, out_dir, progress)
    labels = pd.DataFrame([_label_row(s) for s in plans], columns=LABEL_COLUMNS)
    videos = pd.DataFrame(rows, columns=VIDEO_COLUMNS + (["view"] if multi_view(sc) else []))
    videos["fps"] = videos["fps"].astype("Int64")
    for col in ("height", "width"):
        videos[col] = videos[col].astype("Int64")
    atomic_write_csv(labels_csv, labels)
    atomic_write_csv(out_dir / "videos.csv", videos)
    n_cine = int((videos["kind"] == "cine").sum())
    meta.update(
        complete=True,
        counts={"patients": int(labels["patient_id"].nunique()), "studies": len(labels),
                "cine": n_cine, "files": len(videos)},
    )  # fmt: skip
    atomic_write_json(out_dir / "synth.json", meta)
    return SynthResult(
        out_dir=out_dir,
        n_patients=int(labels["patient_id"].nunique()),
        n_studies=len(labels),
        n_videos=n_cine,
        n_files=len(videos),
        n_cine=n_cine,
        labels_csv=labels_csv,
    )


# --------------------------------------------------------------------------- preview
def read_frames(path: Path) -> np.ndarray:
    """Frames ``(T, H, W, 3)`` uint8 RGB of a synth cine file (DICOM, AVI or MP4)."""
    path = Path(path)
    if path.suffix.lower() in (".avi", ".mp4"):
        cap = cv2.VideoCapture(str(path))
        frames = []
        while True:
            ok, f = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
        cap.release()
        return np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)
    import pydicom

    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if int(ds.SamplesPerPixel) == 1:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return arr if arr.ndim == 4 else arr[None]


def write_preview(out_dir: Path, png_path: Path, n: int = 8) -> Path:
    """Montage PNG of the middle frame of ``n`` cine files (evenly over the archive), each
    captioned with study id and labels. Returns ``png_path``."""
    out_dir = Path(out_dir)
    videos = pd.read_csv(out_dir / "videos.csv")
    labels = pd.read_csv(out_dir / "labels.csv").set_index("study_id")
    cine = videos[videos["kind"] == "cine"].reset_index(drop=True)
    if cine.empty:
        raise UserError(f"{out_dir}/videos.csv lists no cine files", fix="re-run echoclr synth")
    pick = np.unique(np.linspace(0, len(cine) - 1, min(n, len(cine))).round().astype(int))
    tiles = []
    for i in pick:
        row = cine.iloc[i]
        frames = read_frames(out_dir / row["file"])
        tile = np.ascontiguousarray(frames[len(frames) // 2])
        lab = labels.loc[row["study_id"]]
        text = f"{row['study_id']} AS{int(lab['as'])} LVH{int(lab['lvh'])}"
        if "view" in cine.columns:
            text += f" {str(row['view']).upper()}"
        cv2.putText(tile, text, (3, tile.shape[0] - 4), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35 * tile.shape[0] / 300, (255, 80, 80), 1, cv2.LINE_AA)  # fmt: skip
        tiles.append(tile)
    png = png_grid(tiles, cols=min(4, len(tiles)))
    if png is None:
        raise UserError(f"could not encode the preview {png_path}", fix="check OpenCV's PNG codec")
    atomic_write(Path(png_path), lambda f: f.write(png))
    return Path(png_path)
