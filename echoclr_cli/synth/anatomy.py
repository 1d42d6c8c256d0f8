"""The per-study latent anatomy: its sampling and its canonical PLAX cycle (``render_heart``).

What every view of a study shares. The canonical grid: rows = depth v from the transducer, cols =
lateral u, ``CANON_RES`` mm per pixel, ``N_PHASES`` phases of the cardiac cycle (linearly
interpolated in between). The other views' renderers are in ``echoclr_cli.synth.views``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

N_PHASES = 48  # canonical frames per cardiac cycle (linearly interpolated in between)
CANON_RES = 1.0  # mm per canonical pixel
CANON_V = (0.0, 210.0)  # depth range (mm) of the canonical grid
CANON_U = (-150.0, 150.0)  # lateral range (mm); +u = towards the base (aorta / left atrium)


@dataclass(frozen=True)
class Anatomy:
    """Per-study latent anatomy (mm, fractions, bpm). Shared by all videos of a study."""

    wall_mm: float  # septal / posterior wall thickness at end-diastole
    pw_ratio: float  # posterior wall / septum thickness ratio
    lv_size: float  # LV internal diameter at end-diastole (mm)
    fs: float  # fractional shortening
    ao_root_mm: float
    la_mm: float
    as_severity: float  # continuous 0..1
    leaflet_calc: float  # 0..1: leaflet thickness and brightness
    leaflet_open: float  # 0..1: fraction of a normal opening excursion
    heart_rate: float  # bpm
    rv_top: float  # depth (mm) of the RV free wall
    rv_cavity: float  # RV cavity depth (mm)
    u_ao: float  # lateral position (mm) of the mitral-aortic junction
    axis_deg: float  # heart long-axis rotation in the chest


# --------------------------------------------------------------------------- sampling
def _normal_clip(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    return float(np.clip(rng.normal(mean, sd), lo, hi))


def _base_anatomy(rng: np.random.Generator, as_pos: bool, lvh_pos: bool) -> Anatomy:
    """Latents of a patient's first study. Mixture components keep a margin around the label
    thresholds but overlap a little (borderline cases exist, as in real reports)."""
    wall = (
        _normal_clip(rng, 14.0, 1.4, 11.0, 19.0)
        if lvh_pos
        else _normal_clip(rng, 9.5, 1.0, 6.5, 12.6)
    )
    sev = (
        _normal_clip(rng, 0.80, 0.10, 0.45, 1.0)
        if as_pos
        else _normal_clip(rng, 0.22, 0.13, 0.0, 0.62)
    )
    return Anatomy(
        wall_mm=wall,
        pw_ratio=_normal_clip(rng, 1.0, 0.06, 0.85, 1.15),
        lv_size=_normal_clip(rng, 50.0, 4.0, 40.0, 62.0),
        fs=_normal_clip(rng, 0.32, 0.05, 0.18, 0.42),
        ao_root_mm=_normal_clip(rng, 29.0, 2.5, 23.0, 36.0),
        la_mm=_normal_clip(rng, 36.0, 4.0, 28.0, 48.0),
        as_severity=sev,
        leaflet_calc=0.0,  # filled by _leaflets
        leaflet_open=0.0,
        heart_rate=_normal_clip(rng, 75.0, 13.0, 50.0, 110.0),
        rv_top=_normal_clip(rng, 20.0, 3.0, 13.0, 27.0),
        rv_cavity=_normal_clip(rng, 22.0, 3.0, 15.0, 30.0),
        u_ao=_normal_clip(rng, 8.0, 3.0, 2.0, 14.0),
        axis_deg=_normal_clip(rng, 6.0, 4.0, -4.0, 14.0),
    )


def _leaflets(rng: np.random.Generator, a: Anatomy) -> Anatomy:
    """Leaflet look and motion from the AS severity: calcification overlaps between classes
    (aortic sclerosis), the restricted opening is the decisive (motion-only) sign."""
    calc = float(np.clip(0.15 + 0.55 * a.as_severity + rng.normal(0, 0.2), 0.0, 1.0))
    opening = float(np.clip(1.05 - 1.0 * a.as_severity + rng.normal(0, 0.06), 0.08, 1.0))
    return _replace(a, leaflet_calc=calc, leaflet_open=opening)


def _replace(a: Anatomy, **kw) -> Anatomy:
    d = asdict(a)
    d.update(kw)
    return Anatomy(**d)


def _follow_up(rng: np.random.Generator, a: Anatomy) -> Anatomy:
    """Second study of a patient, years later: mild progression, new heart rate."""
    sev = float(np.clip(a.as_severity + rng.uniform(0.0, 0.15), 0.0, 1.0))
    return _leaflets(
        rng,
        _replace(
            a,
            as_severity=sev,
            wall_mm=float(np.clip(a.wall_mm + rng.normal(0.3, 0.5), 6.5, 19.0)),
            lv_size=float(np.clip(a.lv_size + rng.normal(0.0, 1.5), 40.0, 62.0)),
            heart_rate=_normal_clip(rng, a.heart_rate, 8.0, 50.0, 110.0),
        ),
    )


# --------------------------------------------------------------------------- heart rendering
def _contraction(p: np.ndarray, hr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per phase p in [0,1) (0 = R wave): LV contraction c (0 diastole .. 1 end-systole, a small
    negative atrial kick), aortic valve opening o (0..1) and mitral opening m (0..1)."""
    sys = float(np.clip(0.30 * hr / 60.0 + 0.08, 0.30, 0.52))  # systole as a cycle fraction
    rel = 0.14
    c = np.zeros_like(p)
    rise = p < sys
    c[rise] = 0.5 * (1 - np.cos(np.pi * p[rise] / sys))
    fall = (p >= sys) & (p < sys + rel)
    c[fall] = 0.5 * (1 + np.cos(np.pi * (p[fall] - sys) / rel))
    kick = p > 0.86
    c[kick] = -0.08 * np.sin(np.pi * (p[kick] - 0.86) / 0.14)
    o = np.zeros_like(p)
    ej = (p > 0.04 * sys) & (p < 0.96 * sys)
    o[ej] = np.sin(np.pi * (p[ej] - 0.04 * sys) / (0.92 * sys)) ** 0.4
    e_start, e_len = sys + 0.03, 0.22
    m = np.zeros_like(p)
    ew = (p > e_start) & (p < e_start + e_len)
    m[ew] = np.sin(np.pi * (p[ew] - e_start) / e_len)
    aw = (p > 0.82) & (p < 0.98)
    m[aw] = np.maximum(m[aw], 0.6 * np.sin(np.pi * (p[aw] - 0.82) / 0.16))
    return c, o, m


def _ramp(x: np.ndarray) -> np.ndarray:
    """Soft step: 0 for x <= -0.5, 1 for x >= 0.5, linear in between (anti-aliased edges)."""
    return np.clip(x + 0.5, 0.0, 1.0)


def _band(v: np.ndarray, top: np.ndarray, bottom: np.ndarray, edge: float = 1.2) -> np.ndarray:
    """1 between top and bottom (depths, mm) with soft edges; shapes broadcast."""
    return np.minimum(_ramp((v - top) / edge), _ramp((bottom - v) / edge))


def _leaflet(
    canvas: np.ndarray,
    hinge: tuple[float, float],
    angle_deg: float,
    length: float,
    thick0: float,
    thick1: float,
    bright: float,
) -> None:
    """Draw one valve leaflet (a segment from the hinge, thickening towards the tip) into
    ``canvas`` (Hc, Wc) by max-compositing, only on a small window around the segment.
    Angle: 0 = +u (downstream towards the aorta), 90 = +v (deeper)."""
    hu, hv = hinge
    du, dv = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    tu, tv = hu + length * du, hv + length * dv
    pad = max(thick0, thick1) + 3.0
    u0, v0 = CANON_U[0], CANON_V[0]
    c0 = max(0, int((min(hu, tu) - pad - u0) / CANON_RES))
    c1 = min(canvas.shape[1], int((max(hu, tu) + pad - u0) / CANON_RES) + 2)
    r0 = max(0, int((min(hv, tv) - pad - v0) / CANON_RES))
    r1 = min(canvas.shape[0], int((max(hv, tv) + pad - v0) / CANON_RES) + 2)
    if c0 >= c1 or r0 >= r1:
        return
    uu = (u0 + np.arange(c0, c1, dtype=np.float32) * CANON_RES)[None, :] - hu  # (1, w)
    vv = (v0 + np.arange(r0, r1, dtype=np.float32) * CANON_RES)[:, None] - hv  # (h, 1)
    t = np.clip((uu * du + vv * dv) / length, 0.0, 1.0)  # (h, w) position along the leaflet
    dist = np.hypot(uu - t * length * du, vv - t * length * dv)  # (h, w)
    half = 0.5 * (thick0 + (thick1 - thick0) * t)
    val = bright * _ramp((half - dist) / 0.8)
    np.maximum(canvas[r0:r1, c0:c1], val, out=canvas[r0:r1, c0:c1])


def render_heart(a: Anatomy, n_phases: int = N_PHASES) -> np.ndarray:
    """Canonical echo amplitude of one study's heart over a cardiac cycle.

    Returns float32 ``(n_phases, Hc, Wc)`` on the canonical grid (rows = depth v, cols = lateral
    u, ``CANON_RES`` mm/pixel), values ~0..1 (blood ~0.02, myocardium ~0.5, pericardium ~0.9).
    """
    p = np.arange(n_phases, dtype=np.float64) / n_phases
    c, o, m = _contraction(p, a.heart_rate)
    v = np.arange(CANON_V[0], CANON_V[1], CANON_RES, dtype=np.float32)[None, :, None]  # (1,Hc,1)
    u = np.arange(CANON_U[0], CANON_U[1], CANON_RES, dtype=np.float32)  # (Wc,)
    cc = c.astype(np.float32)[:, None, None]  # (P,1,1)

    w_ao = np.clip((u - a.u_ao) / 10.0 + 0.5, 0.0, 1.0)[None, None, :]  # (1,1,Wc) aorta side
    w_ao_sharp = np.clip((u - a.u_ao) / 3.0, 0.0, 1.0)[None, None, :]
    # LV tapers towards the apex (left); the cavity closes around u = -120 mm
    taper = np.sqrt(np.clip((u + 120.0) / 80.0, 0.0, 1.0))[None, None, :]

    t_sept = a.wall_mm * (1 + 0.30 * cc)  # (P,1,1) systolic thickening
    t_pw = a.wall_mm * a.pw_ratio * (1 + 0.45 * cc)
    lv = a.lv_size * (1 - a.fs * cc)
    ao = a.ao_root_mm * (1 + 0.05 * cc)
    la = a.la_mm * (1 + 0.12 * cc)

    s_top = a.rv_top + 4.0 + a.rv_cavity + 2.5 * cc - 0.04 * u[None, None, :]  # (P,1,Wc)
    t_ant = (1 - w_ao) * t_sept + w_ao * 3.0
    s_bot = s_top + t_ant
    lv_bot = s_bot + lv * taper  # LV posterior endocardium
    la_bot = s_bot + ao + 3.0 + la * 0.75
    post_top = (1 - w_ao) * lv_bot + w_ao * la_bot
    # at the apex the two walls merge into one thick cap
    t_post = (1 - w_ao) * t_pw + w_ao * 3.5
    p_bot = post_top + t_post
    mid_top = s_bot + ao  # posterior aortic wall (aorta side only)

    heart = 0.55 * _band(v, s_top, s_bot)  # (P,Hc,Wc) septum / anterior aortic wall
    np.maximum(heart, 0.50 * _band(v, post_top, p_bot), out=heart)
    np.maximum(heart, 0.92 * _band(v, p_bot, p_bot + 2.5), out=heart)  # pericardium
    np.maximum(heart, 0.68 * w_ao_sharp * _band(v, mid_top, mid_top + 3.0), out=heart)
    deep = np.clip((v - (p_bot + 2.5)) / 2.0, 0.0, 1.0) * (0.30 - 0.0008 * v)  # (P,Hc,Wc)
    np.maximum(heart, deep, out=heart)
    rv_wall = 0.45 * _band(v, a.rv_top, a.rv_top + 4.0)  # (1,Hc,1) static
    np.maximum(heart, rv_wall, out=heart)
    np.maximum(heart, 0.02, out=heart)
    heart = heart.astype(np.float32, copy=False)

    # valves, per phase on small windows
    iu_av = int((a.u_ao + 9.0 - CANON_U[0]) / CANON_RES)
    iu_mv = int((a.u_ao + 1.0 - CANON_U[0]) / CANON_RES)
    iu_pm = int((a.u_ao - 3.0 - CANON_U[0]) / CANON_RES)
    calc = a.leaflet_calc
    av_thick0, av_thick1 = 1.2 + 1.5 * calc, 1.2 + 3.5 * calc
    av_bright = 0.45 + 0.4 * calc
    for k in range(n_phases):
        sb, mt = float(s_bot[k, 0, iu_av]), float(mid_top[k, 0, iu_av])
        d = mt - sb  # aortic lumen diameter at the annulus
        length = 0.55 * d
        # closed: leaflets point to the lumen centre; open: nearly parallel to the walls
        closed, fully_open = 62.0, 8.0
        ang = closed - (closed - fully_open) * a.leaflet_open * float(o[k])
        _leaflet(heart[k], (a.u_ao + 9.0, sb), ang, length, av_thick0, av_thick1, av_bright)
        _leaflet(heart[k], (a.u_ao + 9.0, mt), -ang, length, av_thick0, av_thick1, av_bright)
        # mitral valve: anterior leaflet from the aorto-mitral junction, posterior from the PW
        mv_top = float(mid_top[k, 0, iu_mv]) + 2.0
        ang_a = 235.0 - 95.0 * float(m[k])  # pointing down-left (closed) -> up-left (open)
        _leaflet(heart[k], (a.u_ao + 1.0, mv_top), ang_a, 0.42 * a.lv_size, 1.5, 2.0, 0.5)
        pm_top = float(post_top[k, 0, iu_pm])
        ang_p = 145.0 + 45.0 * float(m[k])  # up-left (closed) -> flat on the wall (open)
        _leaflet(heart[k], (a.u_ao - 3.0, pm_top), ang_p, 13.0, 1.5, 1.8, 0.45)
    return heart
