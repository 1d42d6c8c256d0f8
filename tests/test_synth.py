"""Synthetic raw archive (echoclr_cli/data/synth.py): layout, determinism, DICOM validity, labels,
sector geometry and the science of the latents. Tiny frames (64x80, a few frames) keep it fast."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from echoclr_cli.config.schema import Config
from echoclr_cli.config.sections import SynthConfig
from echoclr_cli.errors import UserError
from echoclr_cli.synth import anatomy
from echoclr_cli.synth import archive as synth

TINY = dict(height=64, width=80, min_frames=5, max_frames=8, min_videos=2, max_videos=3, workers=1)


def tiny_cfg(**kw) -> Config:
    return Config(synth=SynthConfig(**{**TINY, **kw}))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "raw"
    synth.synthesize(tiny_cfg(studies=6, seed=3, compressed_frac=0.6, jpeg_frac=0.5), out)
    return out


def _cine(out: Path) -> pd.DataFrame:
    v = pd.read_csv(out / "videos.csv")
    return v[v["kind"] == "cine"].reset_index(drop=True)


def test_layout_and_counts(archive):
    meta = pd.read_json(archive / "synth.json", typ="series")
    assert meta["generator"] == "echoclr-synth" and meta["version"] == 1 and meta["complete"]
    labels = pd.read_csv(archive / "labels.csv")
    videos = pd.read_csv(archive / "videos.csv")
    assert list(labels.columns) == synth.LABEL_COLUMNS
    assert list(videos.columns) == synth.VIDEO_COLUMNS
    assert len(labels) == 6 and labels["study_id"].is_unique
    for _, row in videos.iterrows():
        parts = Path(row["file"]).parts
        assert parts[0] == row["patient_id"] and parts[1] == row["study_id"]
        assert (archive / row["file"]).is_file()
    on_disk = {p.relative_to(archive).as_posix() for p in archive.glob("P*/S*/*")}
    assert on_disk == set(videos["file"])  # no stray temp files, every file listed
    per_study = _cine(archive).groupby("study_id").size()
    assert (per_study == labels.set_index("study_id")["n_videos"].loc[per_study.index]).all()
    names = videos["file"].map(lambda f: Path(f).suffix)
    assert (names == ".dcm").any() and (names == "").any()  # both naming styles


def test_deterministic_and_worker_independent(tmp_path):
    cfg = tiny_cfg(studies=3, seed=11, compressed_frac=0.5)
    synth.synthesize(cfg, tmp_path / "a")
    cfg2 = tiny_cfg(studies=3, seed=11, compressed_frac=0.5, workers=2)
    synth.synthesize(cfg2, tmp_path / "b")
    for name in ("labels.csv", "videos.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for f in _cine(tmp_path / "a")["file"]:
        a = pydicom.dcmread(tmp_path / "a" / f).pixel_array
        b = pydicom.dcmread(tmp_path / "b" / f).pixel_array
        np.testing.assert_array_equal(a, b)
    synth.synthesize(tiny_cfg(studies=3, seed=12, compressed_frac=0.5), tmp_path / "c")
    assert (tmp_path / "a" / "labels.csv").read_bytes() != (
        tmp_path / "c" / "labels.csv"
    ).read_bytes()


def test_dicom_cine_valid(archive):
    study_uids: dict[str, str] = {}
    series = set()
    for _, row in _cine(archive).iterrows():
        path = archive / row["file"]
        assert path.read_bytes()[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == synth.US_MULTIFRAME == ds.file_meta.MediaStorageSOPClassUID
        assert ds.Modality == "US" and ds.PatientID == row["patient_id"]
        assert ds.file_meta.TransferSyntaxUID == row["transfer_syntax"]
        assert ds.PhotometricInterpretation == row["photometric"]
        assert study_uids.setdefault(row["study_id"], ds.StudyInstanceUID) == ds.StudyInstanceUID
        series.add(ds.SeriesInstanceUID)
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert int(ds.NumberOfFrames) == row["n_frames"]
        assert int(ds.CineRate) == row["fps"]
        assert float(ds.FrameTime) == pytest.approx(1000.0 / row["fps"], rel=1e-4)
        arr = ds.pixel_array
        assert arr.shape[0] == int(ds.NumberOfFrames)
        assert arr.shape[1:3] == (64, 80)
        assert ("SequenceOfUltrasoundRegions" in ds) == bool(row["has_regions"])
    assert len(set(study_uids.values())) == len(study_uids)
    assert len(series) == len(_cine(archive))


@pytest.mark.parametrize(
    ("compressed_frac", "jpeg_frac", "syntaxes"),
    [
        (0.0, 0.0, {"1.2.840.10008.1.2.1"}),
        (1.0, 0.0, {"1.2.840.10008.1.2.5"}),
        (1.0, 1.0, {"1.2.840.10008.1.2.4.50"}),
    ],
)
def test_codecs_decode(tmp_path, compressed_frac, jpeg_frac, syntaxes):
    cfg = tiny_cfg(studies=1, min_videos=3, max_videos=3, compressed_frac=compressed_frac,
                   jpeg_frac=jpeg_frac, extras=False)  # fmt: skip
    synth.synthesize(cfg, tmp_path / "raw")
    cine = _cine(tmp_path / "raw")
    assert set(cine["transfer_syntax"]) == syntaxes
    for _, row in cine.iterrows():
        ds = pydicom.dcmread(tmp_path / "raw" / row["file"])
        arr = ds.pixel_array
        assert arr.shape[0] == row["n_frames"] and arr.dtype == np.uint8
        if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50":
            assert ds.PhotometricInterpretation == "YBR_FULL_422"
            assert ds.LossyImageCompression == "01"


def test_stills_and_reports(archive, tmp_path):
    videos = pd.read_csv(archive / "videos.csv")
    n_studies = len(pd.read_csv(archive / "labels.csv"))
    stills, reports = videos[videos["kind"] == "still"], videos[videos["kind"] == "sr"]
    assert len(stills) == n_studies and len(reports) == n_studies
    for f in stills["file"]:
        ds = pydicom.dcmread(archive / f)
        assert int(ds.get("NumberOfFrames", 1)) == 1
        assert ds.pixel_array.shape == (64, 80, 3)
    for f in reports["file"]:
        ds = pydicom.dcmread(archive / f)
        assert ds.Modality == "SR" and ds.SOPClassUID == synth.BASIC_TEXT_SR
        assert "PixelData" not in ds
    synth.synthesize(tiny_cfg(studies=2, extras=False), tmp_path / "none")
    assert set(pd.read_csv(tmp_path / "none" / "videos.csv")["kind"]) == {"cine"}


def test_labels_file_matches_plan(archive):
    labels = pd.read_csv(archive / "labels.csv")
    plans = synth.plan_studies(tiny_cfg(studies=6, seed=3).synth)
    assert list(labels["study_id"]) == [p.study_id for p in plans]
    assert list(labels["as"]) == [p.as_label for p in plans]
    assert np.allclose(labels["wall_mm"], [p.anatomy.wall_mm for p in plans], atol=1e-3)


def test_labels_follow_latents():
    plans = synth.plan_studies(SynthConfig(studies=400, seed=5))
    df = pd.DataFrame([synth._label_row(p) for p in plans])
    assert (df["lvh_clean"] == (df["wall_mm"] > synth.WALL_LVH_MM)).all()
    assert (df["as_clean"] == (df["as_severity"] > synth.AS_SEVERE)).all()
    assert 0.85 < (df["as"] == df["as_clean"]).mean() < 1.0  # label_noise 0.05 flips some
    assert df["as"].mean() == pytest.approx(0.22, abs=0.06)
    assert df["lvh"].mean() == pytest.approx(0.30, abs=0.06)
    assert np.corrcoef(df["wall_mm"], df["lvh"])[0, 1] > 0.6
    assert np.corrcoef(df["leaflet_open"], df["as"])[0, 1] < -0.6
    assert df.groupby("as")["leaflet_calc"].mean().diff().iloc[-1] > 0.2  # overlaps: sclerosis
    clean = pd.DataFrame(
        [synth._label_row(p) for p in synth.plan_studies(SynthConfig(studies=50, label_noise=0))]
    )
    assert (clean["as"] == clean["as_clean"]).all() and (clean["lvh"] == clean["lvh_clean"]).all()
    half = synth.plan_studies(SynthConfig(studies=200, as_prevalence=0.5))
    assert np.mean([p.as_clean for p in half]) == pytest.approx(0.5, abs=0.08)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_both_classes_in_twenty(seed):
    plans = synth.plan_studies(SynthConfig(studies=20, seed=seed))
    for attr in ("as_label", "lvh_label"):
        assert {getattr(p, attr) for p in plans} == {0, 1}


def test_patients_sites_and_years():
    plans = synth.plan_studies(SynthConfig(studies=200, seed=2))
    df = pd.DataFrame([synth._label_row(p) for p in plans])
    per_patient = df.groupby("patient_id")
    twice = per_patient.filter(lambda g: len(g) == 2)
    assert len(twice) > 0 and per_patient.size().max() == 2
    assert (twice.groupby("patient_id")["year"].nunique() == 2).all()
    assert (per_patient["site"].nunique() == 1).all()  # a patient belongs to one site
    assert (df.loc[df["site"] == "external", "year"] > 2020).all()
    assert (df.loc[df["site"] == "internal", "year"] <= 2020).all()
    assert (df["site"] == "external").mean() == pytest.approx(0.15, abs=0.03)
    assert len(df) == 200 and df["study_id"].is_unique
    none = synth.plan_studies(SynthConfig(studies=30, repeat_patient_frac=0, external_frac=0))
    assert len({p.patient_id for p in none}) == 30 and {p.site for p in none} == {"internal"}


@pytest.mark.parametrize("fmt", ["avi", "mp4"])
def test_video_formats(tmp_path, fmt):
    synth.synthesize(tiny_cfg(studies=1, format=fmt), tmp_path / "raw")
    videos = pd.read_csv(tmp_path / "raw" / "videos.csv")
    cine = videos[videos["kind"] == "cine"]
    assert len(cine) >= 2
    for _, row in cine.iterrows():
        assert row["file"].endswith("." + fmt)
        cap = cv2.VideoCapture(str(tmp_path / "raw" / row["file"]))
        n = 0
        while cap.read()[0]:
            n += 1
        assert n == row["n_frames"]
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(row["fps"], abs=0.5)
    extras = videos[videos["kind"] != "cine"]  # stills / SR stay DICOM beside the videos
    assert set(extras["kind"]) == {"still", "sr"}
    for f in extras["file"]:
        pydicom.dcmread(tmp_path / "raw" / f)


def test_sector_mask_matches_frames(tmp_path):
    out = tmp_path / "raw"
    synth.synthesize(tiny_cfg(studies=2, height=96, width=128, compressed_frac=0.0), out)
    size = max(3, 96 // 50)  # orientation marker: a (size + 1)^2 square (synth._overlay)
    for _, row in _cine(out).iterrows():
        frames = synth.read_frames(out / row["file"])  # (T,H,W,3) lossless
        mask = synth.sector_mask(row, 96, 128)
        nonzero = frames.max(axis=(0, 3)) > 0  # (H,W) any content over the clip
        assert nonzero[mask].all()  # the whole fan is non-black
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert not nonzero[grown & ~mask].any()  # a black 1-pixel margin around the fan
        x0, y0, x1, y1 = synth._mask_bbox(mask)
        box = np.zeros_like(mask)
        box[y0 : y1 + 1, x0 : x1 + 1] = True
        leak = nonzero & box & ~mask  # inside the bbox, outside the fan: what only masking removes
        colour = (255, 170, 0) if row["site"] == "external" else (230, 230, 230)
        marker = leak & (frames == colour).all(axis=(0, 3))  # the burned-in orientation marker
        assert marker.sum() >= (size + 1) ** 2
        # Besides the marker, the bbox's top corners catch some screen text. cv2.putText draws it
        # differently in each OpenCV release, so this bound is on what it means (a small part of
        # the box) and not on one release's glyphs. Measured over 114 videos (64x80, 96x128 and
        # 160x212 frames, 15 seeds), leak / box at most: 3.5% under OpenCV 5.0.0.93, 4.1% under
        # 5.1.0.95, 8.3% under 4.11 / 4.14 (heavier strokes); this archive: 1.1%, 2.3%, 4.0%.
        assert leak.sum() < 0.10 * box.sum()
        assert (nonzero & ~box).any()  # screen text / ECG outside the box
        masked = frames * mask[None, :, :, None]
        assert not masked[:, ~mask].any()  # masking removes marker and overlays
        fan = frames[:, mask]  # (T, n, 3) grey inside the fan
        assert (fan[..., 0] == fan[..., 1]).all() and (fan[..., 1] == fan[..., 2]).all()


def test_fan_is_drawn_without_opencv(monkeypatch):
    """The fan's pixels must not depend on OpenCV's rounding internals (cv2.remap quantises the
    sampling position in 4.x, not in 5.x; addWeighted rounds differently): the calls the frame
    loop once made are not used any more."""

    def refuse(*args, **kwargs):
        raise AssertionError("the fan must be drawn with numpy")

    for name in ("remap", "addWeighted", "convertScaleAbs", "LUT", "add", "multiply"):
        monkeypatch.setattr(synth.cv2, name, refuse)
    sc = SynthConfig(studies=1, seed=4, height=64, width=80, min_frames=3, max_frames=3)
    plan = synth.plan_studies(sc)[0]
    rng = np.random.default_rng(0)
    acq = synth._acquisition(rng, sc, plan.site, plan.anatomy)
    frames, mask = synth.render_video(anatomy.render_heart(plan.anatomy), acq, plan, 64, 80, rng, 4)
    assert frames.shape == (3, 64, 80, 3) and (frames[:, mask] > 0).all()


def _f32_nearest(x: Fraction) -> np.float32:
    """Exact ``x`` rounded once to float32 (nearest, ties to even)."""
    r = np.float32(float(x))  # within one float32 step of the answer
    cands = [np.nextafter(r, np.float32(-np.inf)), r, np.nextafter(r, np.float32(np.inf))]
    dist = [abs(Fraction(float(c)) - x) for c in cands]
    best = min(dist)
    ties = [c for c, d in zip(cands, dist, strict=True) if d == best]
    return min(ties, key=lambda c: int(np.array(c).view(np.uint32)) & 1)  # even significand


def test_fma32_rounds_once():
    """synth._fma32 (c + a * b, one rounding, as OpenCV 5's FMA kernels compute remap and
    addWeighted) against exact rational arithmetic, on random values and on cases where rounding
    the float64 sum again to float32 (double rounding) gives the wrong neighbour."""
    rng = np.random.default_rng(0)
    c = rng.uniform(-2, 2, 3000).astype(np.float32)
    a = rng.uniform(-2, 2, 3000).astype(np.float32)
    b = rng.uniform(-2, 2, 3000).astype(np.float32)
    # c = 1 + 2**-23, a * b = 2**-24 - 2**-64: the float64 sum is the float32 midpoint
    # 1 + 3 * 2**-24, which ties to even (1 + 2**-22); the exact sum is below it: 1 + 2**-23.
    # c = 1, a * b = 2**-24 + 2**-54 (65 * 16519105 == 2**30 + 1): the float64 sum is the
    # midpoint 1 + 2**-24, which ties to 1; the exact sum is above it: 1 + 2**-23.
    one_up, near = np.float32(1 + 2**-23), np.float32(1 + 2**-20)
    below = np.float32((1 - 2**-20) * 2**-24)
    tricky_c = np.array([one_up, -one_up, 1.0, 2**-130], np.float32)  # last: float32 subnormal
    tricky_a = np.array([near, -near, 65.0, 2**-20], np.float32)
    tricky_b = np.array([below, below, 16519105 * 2.0**-54, 2**-110], np.float32)
    c, a, b = (np.concatenate(v) for v in ((c, tricky_c), (a, tricky_a), (b, tricky_b)))
    got = synth._fma32(c, a, b)
    want = [
        _f32_nearest(Fraction(float(ci)) + Fraction(float(ai)) * Fraction(float(bi)))
        for ci, ai, bi in zip(c, a, b, strict=True)
    ]
    np.testing.assert_array_equal(got, np.array(want, np.float32))
    naive = (c.astype(np.float64) + a.astype(np.float64) * b).astype(np.float32)
    assert (naive[-4:-1] != got[-4:-1]).all()  # the tricky cases do need the correction
    assert got[-4:].tolist() == [one_up, -one_up, one_up, np.float32(2**-129)]


def test_heart_shows_disease():
    base = synth.plan_studies(SynthConfig(studies=1, seed=0))[0].anatomy
    thin = anatomy._replace(base, wall_mm=9.0)
    thick = anatomy._replace(base, wall_mm=15.0)
    col = int((base.u_ao - 30.0 - anatomy.CANON_U[0]) / anatomy.CANON_RES)  # mid LV column

    def septum_mm(a):
        profile = anatomy.render_heart(a, n_phases=4)[0, :, col]  # end-diastole depth profile
        first = np.flatnonzero(profile > 0.4)
        first = first[first > int(a.rv_top + 6)]  # skip the RV free wall
        run = np.flatnonzero(profile[first[0] :] < 0.3)[0]
        return run * anatomy.CANON_RES

    assert septum_mm(thick) - septum_mm(thin) == pytest.approx(6.0, abs=1.5)

    normal = anatomy._replace(base, leaflet_open=1.0, leaflet_calc=0.1)
    severe = anatomy._replace(base, leaflet_open=0.2, leaflet_calc=0.1)  # same look, less motion
    c0 = int((base.u_ao + 9.0 - anatomy.CANON_U[0]) / anatomy.CANON_RES)

    h_norm, h_sev = anatomy.render_heart(normal), anatomy.render_heart(severe)  # (P, Hc, Wc)
    np.testing.assert_array_equal(h_norm[0], h_sev[0])  # closed valve: identical frames
    _, opening, _ = anatomy._contraction(
        np.arange(anatomy.N_PHASES) / anatomy.N_PHASES, base.heart_rate
    )
    differs = np.abs(h_norm - h_sev).max(axis=(1, 2)) > 0.1  # (P,)
    assert (differs == (opening > 0.05)).mean() > 0.9  # they differ exactly while it opens
    calcified = anatomy._replace(base, leaflet_open=1.0, leaflet_calc=0.9)
    window = (slice(None), slice(20, 130), slice(c0, c0 + 25))
    extra = anatomy.render_heart(calcified)[window] - h_norm[window]  # thicker, brighter leaflets
    assert extra.min() > -1e-6 and extra.max() > 0.3 and (extra > 0.1).sum() > 200


def test_existing_dirs(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an echoclr synthetic archive"):
        synth.synthesize(tiny_cfg(studies=1), foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(foreign)) == ["notes.txt"]

    out = tmp_path / "raw"
    calls: list[tuple[int, int]] = []
    first = synth.synthesize(tiny_cfg(studies=2), out, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)] and not first.skipped
    stamp = (out / "labels.csv").stat().st_mtime_ns
    again = synth.synthesize(tiny_cfg(studies=2, workers=2), out)  # workers are not output config
    assert again.skipped and again.n_cine == first.n_cine and again.n_files == first.n_files
    assert (out / "labels.csv").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="another config"):
        synth.synthesize(tiny_cfg(studies=3), out)
    # an interrupted run (synth.json not marked complete) is regenerated in place
    meta = json.loads((out / "synth.json").read_text())
    (out / "synth.json").write_text(json.dumps({**meta, "complete": False}))
    (out / "labels.csv").unlink()
    resumed = synth.synthesize(tiny_cfg(studies=2), out)
    assert not resumed.skipped and (out / "labels.csv").stat().st_mtime_ns > stamp
    assert json.loads((out / "synth.json").read_text())["complete"] is True


def test_preview(archive, tmp_path):
    png = synth.write_preview(archive, tmp_path / "p.png", n=4)
    img = cv2.imread(str(png))
    assert img.shape == (64, 4 * 80, 3)
