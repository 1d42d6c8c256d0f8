"""End to end: synth archive -> dataset dir (acceptance), options, idempotent re-runs."""

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from preprocess_fixtures import (
    dicom_dataset,
    fan_video,
    id_map,
    save,
    skipped_by_path,
    small_cfg,
    write_avi,
)

from echoclr_cli.data import privacy, readers
from echoclr_cli.data.layouts import discover as layouts
from echoclr_cli.data.manifest import load_manifest
from echoclr_cli.data.store import load_video
from echoclr_cli.errors import UserError
from echoclr_cli.preprocess import sector
from echoclr_cli.preprocess.run import preprocess
from echoclr_cli.preprocess.worker import WorkerContext, _mask_and_crop
from echoclr_cli.synth.archive import sector_mask, synthesize


def _synth_cfg(fmt="dicom", studies=8):
    cfg = small_cfg()
    cfg.preprocess.size = 112
    cfg.synth.studies, cfg.synth.height, cfg.synth.width = studies, 150, 200
    cfg.synth.min_frames, cfg.synth.max_frames, cfg.synth.max_videos = 16, 24, 3
    cfg.synth.format = fmt
    return cfg


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    cfg = _synth_cfg()
    raw = tmp_path_factory.mktemp("synth") / "raw"
    synthesize(cfg, raw)
    out = tmp_path_factory.mktemp("data") / "data"
    res = preprocess(cfg, raw, out)
    return cfg, raw, out, res


def test_synth_every_cine_in_manifest_extras_skipped(synth_run):
    cfg, raw, out, res = synth_run
    videos = pd.read_csv(raw / "videos.csv")
    df = load_manifest(out)
    ids = id_map(out)
    files = set(ids.loc[ids["kind"] == "video", "original"])
    assert files == set(videos.loc[videos["kind"] == "cine", "file"])
    assert len(df) == (videos["kind"] == "cine").sum() == res.n_videos
    skipped = skipped_by_path(out)
    for _, v in videos[videos["kind"] != "cine"].iterrows():
        assert skipped.loc[v["file"], "reason"] == (
            "not_cine" if v["kind"] == "still" else "no_pixel_data"
        )
    assert df.groupby("patient_id")["split"].nunique().max() == 1
    assert df.groupby("study_id")["split"].nunique().max() == 1
    assert res.label_columns == ["as", "lvh"] and set(df["as"].dropna()) <= {0, 1}


def test_synth_no_pixel_outside_true_sector(synth_run):
    """Map the true sector mask through the crop/resize; stored pixels outside it are 0
    (1 output pixel border allowed)."""
    cfg, raw, out, _ = synth_run
    videos = pd.read_csv(raw / "videos.csv").set_index("file")
    df = load_manifest(out)
    ids = id_map(out)
    file_of = dict(zip(ids["hashed"], ids["original"], strict=True))
    ctx = WorkerContext(str(out), "echoclr", readers.ReadOptions(100, 8, 25, 30), 112, "auto", True,
                        True, False, {}, set(), set(), "study", set())  # fmt: skip
    checked = 0
    for vid, path in zip(df["video_id"], df["path"], strict=True):
        rel = file_of[vid]
        row = videos.loc[rel]
        raw_video = readers.read_dicom(raw / rel, ctx.opts)
        stored, crop, _ = _mask_and_crop(raw_video, ctx)
        saved = load_video(out / path)
        assert np.array_equal(saved, stored)  # same crop as the run used
        true = sector_mask(row, int(row["height"]), int(row["width"]))
        reach = (
            cv2.dilate(
                (sector.map_mask(crop, true) > 0).astype(np.uint8), np.ones((3, 3), np.uint8)
            )
            > 0
        )
        assert not ((saved.max(axis=0) > 0) & ~reach).any(), rel
        assert (crop.mask & true).sum() / true.sum() > 0.85  # and most of the sector is kept
        checked += 1
    assert checked == len(df) > 0


def test_synth_external_site_goes_to_ext_test_and_outputs(synth_run):
    cfg, raw, out, res = synth_run
    labels = pd.read_csv(raw / "labels.csv", dtype=str)
    df = load_manifest(out)
    ids = id_map(out)
    orig = dict(zip(ids["hashed"], ids["original"], strict=True))
    ext_patients = set(labels.loc[labels["site"] == "external", "patient_id"])
    for pid, split in zip(df["patient_id"], df["split"], strict=True):
        assert (orig[pid] in ext_patients) == (split == "ext_test")
    info = json.loads((out / "dataset.json").read_text())
    assert info["label_columns"] == ["as", "lvh"] and info["size"] == 112
    assert info["status"] == "ok" and "salt" not in info["config"] and "salt_id" not in info
    report = json.loads((out / "report.json").read_text())
    assert report["skipped_by_reason"] == res.skipped_by_reason and report["n_videos"] == len(df)
    assert set(report["split_sizes"]) <= {"train", "val", "test", "ext_test"}
    assert (out / "preview.png").exists() and cv2.imread(str(out / "preview.png")) is not None
    assert not any(p.startswith("P0") for p in (out / "manifest.csv").read_text().split(","))


def test_rerun_is_idempotent_and_overwrite_redoes(synth_run, tmp_path):
    import shutil

    cfg, raw, out, res = synth_run
    copy = tmp_path / "data"
    shutil.copytree(out, copy)
    mtimes = {p: p.stat().st_mtime_ns for p in (copy / "videos").iterdir()}
    calls = []
    again = preprocess(cfg, raw, copy, progress=lambda d, t: calls.append((d, t)))
    assert again.n_reused == again.n_videos == res.n_videos
    assert {p: p.stat().st_mtime_ns for p in (copy / "videos").iterdir()} == mtimes
    assert calls[-1][0] == calls[-1][1] and len(calls) == calls[-1][1]
    a = pd.read_csv(out / "manifest.csv")
    assert a.equals(pd.read_csv(copy / "manifest.csv"))
    cfg2 = cfg.model_copy(deep=True)
    cfg2.preprocess.overwrite = True
    redo = preprocess(cfg2, raw, copy)
    assert redo.n_reused == 0 and redo.n_videos == res.n_videos
    cfg3 = cfg.model_copy(deep=True)
    cfg3.preprocess.size = 64  # another video setting: nothing is re-used
    smaller = preprocess(cfg3, raw, copy)
    assert (
        smaller.n_reused == 0 and load_video(copy / load_manifest(copy)["path"][0]).shape[1] == 64
    )


def test_two_workers_same_result(tmp_path):
    root = tmp_path / "raw"
    for i in range(4):
        frames, _ = fan_video(10, 96, 120, seed=30 + i)
        write_avi(root / f"P{i}" / f"S{i}" / "a.avi", frames)
    one = preprocess(small_cfg(), root, tmp_path / "one")
    two = preprocess(small_cfg(workers=2), root, tmp_path / "two")
    assert one.n_videos == two.n_videos == 4
    assert pd.read_csv(tmp_path / "one/manifest.csv").equals(
        pd.read_csv(tmp_path / "two/manifest.csv")
    )
    for p in (tmp_path / "one/videos").iterdir():
        assert np.array_equal(np.load(p), np.load(tmp_path / "two/videos" / p.name))


def test_default_input_generates_synth_archive(tmp_path):
    cfg = _synth_cfg(studies=2)
    cfg.synth.extras = False
    cfg.paths.raw = tmp_path / "raw"
    res = preprocess(cfg, None, tmp_path / "data")
    assert (
        (tmp_path / "raw" / "labels.csv").exists() and res.layout == "synth" and res.n_videos >= 2
    )


def test_foreign_output_dir_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("user file")
    root = tmp_path / "raw"
    write_avi(root / "a.avi", fan_video(10, 96, 120)[0])
    with pytest.raises(UserError, match="not an echoclr dataset"):
        preprocess(small_cfg(), root, tmp_path / "out")
    preprocess(small_cfg(overwrite=True), root, tmp_path / "out")
    assert (tmp_path / "out" / "mine.txt").read_text() == "user file"


# --------------------------------------------------------------------------- options
@pytest.fixture()
def tree(tmp_path):
    """Six DICOM studies (one patient has two), years 2018-2021, a label CSV."""
    root = tmp_path / "raw"
    frames, true = fan_video(30, 96, 120, seed=40)
    for i in range(6):
        pid = "P0" if i == 5 else f"P{i}"
        save(
            dicom_dataset(frames, patient=pid, study=f"1.{i}", date=f"{2018 + i % 4}0101"),
            root / f"f{i}",
        )
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"PatientID": [f"P{i}" for i in range(5)], "as": [1, 0, 1, 0, 1],
                  "view": ["PLAX", "A4C", "PLAX", "PLAX", "PLAX"], "site": ["a", "a", "b", "a", "a"],
                  "ext": [0, 0, 1, 0, 0]}).to_csv(labels, index=False)  # fmt: skip
    return root, labels, true


def _orig(out: Path) -> dict[str, str]:
    ids = id_map(out)
    return dict(zip(ids["hashed"], ids["original"], strict=True))


def test_label_key_patient_view_value_external_column(tree, tmp_path):
    root, labels, _ = tree
    cfg = small_cfg(labels=labels, label_key="patient_id", view_column="view", view_value="plax",
                    external_column="ext", label_map={"as": "as"})  # fmt: skip
    res = preprocess(cfg, root, tmp_path / "out")
    df = load_manifest(tmp_path / "out")
    orig = _orig(tmp_path / "out")
    assert res.skipped_by_reason == {"view_filter": 1}  # P1 is A4C
    got = {orig[p]: (s, a) for p, s, a in zip(df["patient_id"], df["split"], df["as"], strict=True)}
    assert got["P2"] == ("ext_test", 1) and got["P0"][1] == 1 and "P1" not in got
    assert (df["patient_id"].map(orig) == "P0").sum() == 2  # both studies of P0 kept together


def test_external_after_year(tree, tmp_path):
    root, _, _ = tree
    preprocess(small_cfg(external_after=2020), root, tmp_path / "out")
    df = load_manifest(tmp_path / "out")
    orig = _orig(tmp_path / "out")
    split = {orig[p]: s for p, s in zip(df["patient_id"], df["split"], strict=True)}
    assert split.pop("P3") == "ext_test"  # its only study is from 2021
    assert "ext_test" not in split.values()


def test_frames_size_color_salt_and_fps_options(tree, tmp_path):
    root, _, _ = tree
    res = preprocess(
        small_cfg(max_frames=12, size=24, color="rgb", salt="other"), root, tmp_path / "a"
    )
    df = load_manifest(tmp_path / "a")
    assert (df["n_frames"] == 12).all() and load_video(tmp_path / "a" / df["path"][0]).shape == (
        12,
        24,
        24,
        3,
    )
    assert df["video_id"][0] != privacy.hash_id("echoclr", "video", "f0") and res.channels == {
        "3": 6
    }
    with pytest.raises(UserError, match="no usable video"):
        preprocess(small_cfg(min_frames=31, short_videos="skip"), root, tmp_path / "b")
    assert set(pd.read_csv(tmp_path / "b" / "skipped.csv")["reason"]) == {"too_few_frames"}
    # short_videos=pad (the paper default): the same short videos are kept, counted and noted
    res = preprocess(small_cfg(min_frames=31), root, tmp_path / "b2")
    assert res.n_videos == 6 and res.skipped_by_reason == {}
    assert json.loads((tmp_path / "b2" / "report.json").read_text())["n_short"] == 6
    assert any("zero-padded at load" in w for w in res.warnings)
    with pytest.raises(UserError, match="no usable video"):
        preprocess(small_cfg(min_fps=31), root, tmp_path / "c")
    assert set(pd.read_csv(tmp_path / "c" / "skipped.csv")["reason"]) == {"low_fps"}
    frames, _ = fan_video(10, 96, 120, seed=41)
    save(dicom_dataset(frames, cine_rate=None), tmp_path / "nofps" / "a.dcm")
    res = preprocess(small_cfg(fallback_fps=40.0), tmp_path / "nofps", tmp_path / "d")
    assert res.fps["max"] == 40.0 and res.fps_source == {"fallback": 1}


def test_split_fractions_and_seed(tmp_path):
    root = tmp_path / "raw"
    frames, _ = fan_video(10, 96, 120, seed=50)
    for i in range(20):
        save(dicom_dataset(frames, patient=f"P{i}", study=f"{i}"), root / f"f{i}")
    a = preprocess(small_cfg(split=(0.5, 0.25, 0.25)), root, tmp_path / "a")
    assert {k: v["patients"] for k, v in a.split_sizes.items()} == {
        "train": 10,
        "val": 5,
        "test": 5,
    }
    b = preprocess(small_cfg(split=(0.5, 0.25, 0.25), split_seed=1), root, tmp_path / "b")
    sa = pd.read_csv(tmp_path / "a/manifest.csv").set_index("video_id")["split"]
    sb = pd.read_csv(tmp_path / "b/manifest.csv").set_index("video_id")["split"]
    assert b.split_sizes == a.split_sizes and not sa.sort_index().equals(sb.sort_index())


def test_color_doppler_kept_when_asked_and_layout_forced(tmp_path):
    root = tmp_path / "raw"
    dop, _ = fan_video(12, 96, 120, seed=60, doppler=True)
    save(dicom_dataset(dop, patient="A", study="1"), root / "d.dcm")
    save(dicom_dataset(fan_video(12, 96, 120, seed=61)[0], patient="B", study="2"), root / "g.dcm")
    res = preprocess(small_cfg(skip_color_doppler=False), root, tmp_path / "out")
    assert res.channels == {"3": 1, "1": 1}
    pd.DataFrame({"study_id": ["x"], "file": ["d.dcm"]}).to_csv(root / "labels.csv", index=False)
    pd.DataFrame({"file": ["d.dcm"], "study_id": ["x"]}).to_csv(root / "videos.csv", index=False)
    assert layouts.detect_layout(root) == "synth"
    forced = preprocess(small_cfg(layout="dicom"), root, tmp_path / "out2")
    # the forced tree layout reads every file: the two CSVs are listed as not media, not dropped
    assert forced.layout == "dicom"
    assert forced.skipped_by_reason == {"color_doppler": 1, "not_media": 2}


def test_dicom_regions_used_only_when_asked(tmp_path):
    root = tmp_path / "raw"
    frames, true = fan_video(12, 96, 120, seed=70)
    ys, xs = np.nonzero(true)
    half = (int(xs.min()), int(ys.min()), int((xs.min() + xs.max()) // 2), int(ys.max()))
    save(dicom_dataset(frames, regions=[half]), root / "r.dcm")
    with_r = preprocess(small_cfg(), root, tmp_path / "a")
    without = preprocess(small_cfg(use_dicom_regions=False), root, tmp_path / "b")
    va = load_video(tmp_path / "a" / load_manifest(tmp_path / "a")["path"][0])
    vb = load_video(tmp_path / "b" / load_manifest(tmp_path / "b")["path"][0])
    assert with_r.n_videos == without.n_videos == 1
    # the region holds only the left half of the fan: the crop is narrower -> content fills more
    assert (va.max(0) > 0).mean() != pytest.approx((vb.max(0) > 0).mean(), abs=0.02)


def test_external_input_dir_and_video_only_layout(tmp_path):
    root, ext = tmp_path / "raw", tmp_path / "other_site"
    frames, _ = fan_video(10, 96, 120, seed=80)
    for i in range(3):
        write_avi(root / f"P{i}" / f"S{i}" / "a.avi", frames)
        save(dicom_dataset(frames, patient=f"X{i}", study=f"9.{i}"), ext / f"x{i}")
    save(dicom_dataset(frames, patient="D", study="7"), root / "also.dcm")
    res = preprocess(small_cfg(external_input=ext), root, tmp_path / "out")
    df = load_manifest(tmp_path / "out")
    orig = _orig(tmp_path / "out")
    ext_ids = {orig[p] for p in df.loc[df["split"] == "ext_test", "patient_id"]}
    assert res.n_videos == 7 and ext_ids == {"X0", "X1", "X2"}
    only = preprocess(small_cfg(layout="video"), root, tmp_path / "out2")
    assert only.layout == "video" and only.n_videos == 3


def test_vendor_like_dicoms_become_clean_112_clips(tmp_path):
    """JPEG baseline YBR_FULL_422, RGB, palette colour, JPEG 2000, RLE and 16-bit DICOMs with
    burned-in text/ECG: clean 112x112 clips, nothing outside the true fan."""
    from preprocess_fixtures import jpeg_baseline
    from pydicom.uid import JPEG2000Lossless, RLELossless

    frames, true = fan_video(16, 120, 160, seed=90)
    gray = frames[..., 0]
    root = tmp_path / "raw"
    ds = dicom_dataset(frames, patient="A", study="1")
    jpeg_baseline(ds, frames)
    save(ds, root / "jpeg_ybr422")
    save(dicom_dataset(frames, patient="B", study="2"), root / "rgb")
    pal = dicom_dataset(gray, "PALETTE COLOR", patient="C", study="3")
    lut = (np.arange(256, dtype=np.uint16) * 257).tobytes()
    for c in ("Red", "Green", "Blue"):
        setattr(pal, f"{c}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(pal, f"{c}PaletteColorLookupTableData", lut)
    save(pal, root / "palette")
    j2k = dicom_dataset(frames, patient="D", study="4")
    j2k.compress(JPEG2000Lossless, frames, encoding_plugin="pylibjpeg")
    save(j2k, root / "j2k")
    rle = dicom_dataset(frames, patient="E", study="5")
    rle.compress(RLELossless, frames, encoding_plugin="pylibjpeg")
    save(rle, root / "rle")
    save(
        dicom_dataset(gray.astype(np.uint16) * 200, "MONOCHROME2", patient="F", study="6"),
        root / "mono16",
    )
    cfg = small_cfg()
    cfg.preprocess.size = 112
    res = preprocess(cfg, root, tmp_path / "out")
    assert res.n_videos == 6 and res.skipped_by_reason == {}
    ctx = WorkerContext(str(tmp_path), "echoclr", readers.ReadOptions(100, 8, 25, 30), 112, "auto",
                        True, True, False, {}, set(), set(), "study", set())  # fmt: skip
    df = load_manifest(tmp_path / "out")
    for name in ("jpeg_ybr422", "rgb", "palette", "j2k", "rle", "mono16"):
        stored, crop, channels = _mask_and_crop(readers.read_dicom(root / name, ctx.opts), ctx)
        vid = privacy.hash_id("echoclr", "video", name)
        saved = load_video(tmp_path / "out" / df.set_index("video_id").loc[vid, "path"])
        assert np.array_equal(saved, stored) and saved.shape == (16, 112, 112) and channels == 1
        reach = (
            cv2.dilate(
                (sector.map_mask(crop, true) > 0).astype(np.uint8), np.ones((3, 3), np.uint8)
            )
            > 0
        )
        assert not ((saved.max(axis=0) > 0) & ~reach).any(), name
