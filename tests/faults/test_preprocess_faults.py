"""FAULTS.md 1-12 and 14 for preprocess: each bad input is injected and the exact outcome
(reason code in skipped.csv, or the UserError) is asserted. Case 13 (bad labels) is here too;
case 17 (label fractions) belongs to the fine-tune sampler."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from preprocess_fixtures import (  # noqa: E402
    dicom_dataset,
    fan_video,
    jpeg_archive_without_decoder,
    jpeg_baseline,
    patch_avi_frame_count,
    save,
    skipped_by_path,
    small_cfg,
    write_avi,
)

from echoclr_cli.data import privacy, readers  # noqa: E402
from echoclr_cli.data.manifest import load_manifest  # noqa: E402
from echoclr_cli.data.store import load_video  # noqa: E402
from echoclr_cli.errors import UserError  # noqa: E402
from echoclr_cli.preprocess.run import preprocess  # noqa: E402

H, W = 96, 120


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """A raw tree with one file per fault, preprocessed once (8-frame minimum, 32 px)."""
    root = tmp_path_factory.mktemp("raw")
    frames, _ = fan_video(16, H, W, seed=1)
    rng = np.random.default_rng(0)

    # good references
    write_avi(root / "good" / "ok.avi", frames)
    save(dicom_dataset(frames, patient="P1", study="1.1"), root / "good" / "ok_rgb.dcm")
    # 1. truncated AVI: half the bytes. 24 frames -> about 11 left, enough (>= 8): used with a
    #    warning; a 10-frame one cut in half keeps < 8 -> too_few_frames.
    long, _ = fan_video(24, H, W, seed=11)
    for name, clip in (("trunc_ok.avi", long), ("trunc_short.avi", frames[:10])):
        p = write_avi(root / "avi" / name, clip)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    # 2. zero bytes / random bytes
    (root / "avi" / "empty.avi").write_bytes(b"")
    (root / "avi" / "noise.avi").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    # 3. wrong header frame counts: more, 0, -1
    for name, v in (("hdr_more.avi", 1000), ("hdr_zero.avi", 0), ("hdr_neg.avi", -1)):
        patch_avi_frame_count(write_avi(root / "hdr" / name, frames), v)
    # 4. not DICOM: renamed PNG, DICOMDIR, truncated header
    import cv2

    (root / "dcm" / "not").mkdir(parents=True)
    (root / "dcm" / "not" / "image.dcm").write_bytes(cv2.imencode(".png", frames[0])[1].tobytes())
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    dd = Dataset()
    dd.file_meta = FileMetaDataset()
    dd.file_meta.MediaStorageSOPClassUID = readers.DICOMDIR_UID
    dd.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    dd.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dd.DirectoryRecordSequence = []
    save(dd, root / "dcm" / "not" / "dir_index")  # a DICOMDIR object under another name
    good = (root / "good" / "ok_rgb.dcm").read_bytes()
    (root / "dcm" / "not" / "cut_header").write_bytes(good[:200])
    # 5. no pixel data (structured report)
    sr = dicom_dataset(frames[:1])
    for tag in ("PixelData", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
                "PlanarConfiguration", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                "NumberOfFrames", "CineRate"):  # fmt: skip
        delattr(sr, tag)
    sr.Modality = "SR"
    save(sr, root / "dcm" / "sr.dcm")
    # 7. still image: single frame without / with NumberOfFrames
    save(dicom_dataset(frames[:1], number_of_frames=None), root / "dcm" / "still_a")
    save(dicom_dataset(frames[:1], number_of_frames=1), root / "dcm" / "still_b")
    # 8. frame count mismatch: header says more; header missing; pixel data cut
    save(dicom_dataset(frames, number_of_frames=40), root / "dcm" / "nf_more.dcm")
    save(dicom_dataset(frames, number_of_frames=None), root / "dcm" / "nf_missing.dcm")
    p = save(dicom_dataset(frames, patient="P9", study="9.9"), root / "dcm" / "cut_pixels.dcm")
    p.write_bytes(p.read_bytes()[: int(p.stat().st_size * 0.6)])
    # 9. low fps (Doppler strip) and missing fps (fallback)
    save(dicom_dataset(frames, cine_rate=10.0), root / "dcm" / "slow.dcm")
    save(
        dicom_dataset(frames, cine_rate=None, patient="P2", study="2.2"), root / "dcm" / "nofps.dcm"
    )
    # 10. colour doppler
    dop, _ = fan_video(16, H, W, seed=2, doppler=True)
    save(dicom_dataset(dop, patient="P3", study="3.3"), root / "dcm" / "doppler.dcm")

    out = tmp_path_factory.mktemp("out") / "data"
    res = preprocess(small_cfg(max_skipped_frac=1.0, short_videos="skip"), root, out)
    skipped = skipped_by_path(out)
    return res, out, skipped, root


# reason code in skipped.csv -> the fixture's files that must get it (FAULTS.md case)
REASONS = {
    "too_few_frames": ["avi/trunc_short.avi"],  # 1
    "no_decodable_frames": ["avi/empty.avi", "avi/noise.avi"],  # 2
    "invalid_dicom": ["dcm/not/image.dcm", "dcm/not/dir_index", "dcm/not/cut_header"],  # 4
    "no_pixel_data": ["dcm/sr.dcm"],  # 5
    "not_cine": ["dcm/still_a", "dcm/still_b"],  # 7
    "frame_count_mismatch": ["dcm/nf_more.dcm", "dcm/nf_missing.dcm", "dcm/cut_pixels.dcm"],  # 8
    "low_fps": ["dcm/slow.dcm"],  # 9
    "color_doppler": ["dcm/doppler.dcm"],  # colour flow skipped by default
}


@pytest.mark.parametrize("file, reason", [(f, r) for r, files in REASONS.items() for f in files])
def test_reason_codes(faulty, file, reason):
    _, _, skipped, _ = faulty
    assert skipped.loc[file, "reason"] == reason


def _row_of(out: Path, rel: str) -> pd.Series:
    df = load_manifest(out)
    vid = privacy.hash_id("echoclr", "video", rel)
    return df.set_index("video_id").loc[vid]


def test_truncated_avi_with_enough_frames_used_with_warning(faulty):
    res, out, skipped, _ = faulty
    row = _row_of(out, "avi/trunc_ok.avi")
    assert 8 <= row["n_frames"] < 24  # counted as decoded, never padded
    ref = privacy.file_ref("echoclr", "avi/trunc_ok.avi")  # warnings name files by reference
    assert any(w.startswith(ref) and "truncated" in w for w in res.warnings)
    assert not any("trunc_ok" in w for w in res.warnings)


def test_header_frame_count_does_not_matter(faulty):
    _, out, _, _ = faulty
    ref = load_video(out / _row_of(out, "good/ok.avi")["path"])
    for name in ("hdr_more.avi", "hdr_zero.avi", "hdr_neg.avi"):
        got = load_video(out / _row_of(out, f"hdr/{name}")["path"])
        assert got.shape == ref.shape == (16, 32, 32) and np.array_equal(got, ref)


def test_missing_fps_uses_documented_fallback(faulty):
    _, out, _, _ = faulty
    row = _row_of(out, "dcm/nofps.dcm")
    assert row["fps"] == 30.0 and row["fps_source"] == "fallback"


def test_color_and_mono_same_convention(faulty, tmp_path):
    """10: RGB / YBR_FULL / MONOCHROME2 8-bit / 16-bit -> the same stored uint8 gray video."""
    from pydicom.pixels import convert_color_space

    frames, _ = fan_video(12, H, W, seed=4)
    gray = frames[..., 0]
    root = tmp_path / "raw"
    save(dicom_dataset(frames, patient="A", study="1"), root / "rgb.dcm")
    ybr = dicom_dataset(
        convert_color_space(frames.copy(), "RGB", "YBR_FULL", per_frame=True),
        "YBR_FULL",
        patient="B",
        study="2",
    )
    save(ybr, root / "ybr.dcm")
    save(dicom_dataset(gray, "MONOCHROME2", patient="C", study="3"), root / "mono8.dcm")
    save(
        dicom_dataset(gray.astype(np.uint16) * 257, "MONOCHROME2", patient="D", study="4"),
        root / "mono16.dcm",
    )
    jp = dicom_dataset(frames, patient="E", study="5")
    jpeg_baseline(jp, frames)
    save(jp, root / "jpeg.dcm")
    preprocess(small_cfg(), root, tmp_path / "out")
    df = load_manifest(tmp_path / "out")
    assert (df["channels"] == 1).all() and len(df) == 5
    vids = {
        privacy.hash_id("echoclr", "video", f"{n}.dcm"): n
        for n in ("rgb", "ybr", "mono8", "mono16", "jpeg")
    }
    arrays = {
        vids[v]: load_video(tmp_path / "out" / p).astype(int)
        for v, p in zip(df["video_id"], df["path"], strict=True)
    }
    for name in ("ybr", "mono8", "mono16"):
        assert np.abs(arrays[name] - arrays["rgb"]).max() <= 2, name
    assert np.abs(arrays["jpeg"] - arrays["rgb"]).mean() < 4


def test_missing_decoder_stops_before_work(tmp_path, monkeypatch):
    """6: JPEG DICOMs with no decoder: preflight names syntax, count and package; no output."""
    root = jpeg_archive_without_decoder(tmp_path / "raw", monkeypatch, H, W)
    with pytest.raises(UserError) as e:
        preprocess(small_cfg(), root, tmp_path / "out")
    msg = str(e.value)
    assert "3 file(s)" in msg and "1.2.840.10008.1.2.4.50" in msg and "JPEG Baseline" in msg
    assert "pip install pillow" in msg
    assert (
        not (tmp_path / "out" / "manifest.csv").exists()
        and not (tmp_path / "out" / "videos").exists()
    )


def test_missing_lossless_decoder_names_bsd_and_gpl_options(tmp_path, monkeypatch):
    """6: JPEG Lossless needs python-gdcm or the optional GPL extra; the preflight names both,
    and a file reaching the reader without it is skipped as missing_decoder with the same hint."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    frames, _ = fan_video(10, H, W, seed=5)
    ds = dicom_dataset(frames, patient="P0", study="0")
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"] * 10)
    ds["PixelData"].VR = "OB"
    path = save(ds, tmp_path / "raw" / "lossless.dcm")
    monkeypatch.setattr(readers, "decoder_available", lambda uid: uid != str(JPEGLosslessSV1))
    with pytest.raises(UserError) as e:
        readers.check_decoders([path])
    msg = str(e.value)
    assert "1 file(s)" in msg and "JPEG Lossless" in msg
    assert "python-gdcm" in msg and "echoclr[gpl-decoders]" in msg
    with pytest.raises(readers.SkipVideo) as skip:
        readers.read_dicom(path, readers.ReadOptions(min_frames=2))
    assert skip.value.reason == "missing_decoder" and "python-gdcm" in skip.value.detail


def test_missing_npy_reported_in_one_message(faulty, tmp_path):
    """11: rows pointing at missing files are all listed at once."""
    import shutil

    _, out, _, _ = faulty
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    df = load_manifest(copy)
    for p in df["path"][:3]:
        (copy / p).unlink()
    with pytest.raises(UserError) as e:
        load_manifest(copy)
    assert all(p in str(e.value) for p in df["path"][:3]) and "3 of" in str(e.value)


def test_patient_never_in_two_splits(tmp_path):
    """12: studies of one patient stay together; leakage in given splits is refused."""
    frames, _ = fan_video(10, H, W, seed=6)
    root = tmp_path / "raw"
    for p in range(6):
        for s in range(2):
            save(
                dicom_dataset(frames, patient=f"P{p}", study=f"{p}.{s}"),
                root / f"P{p}" / f"S{s}" / "IM1",
            )
    preprocess(small_cfg(), root, tmp_path / "out")
    df = load_manifest(tmp_path / "out")
    assert df.groupby("patient_id")["split"].nunique().max() == 1
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"study_id": ["0.0", "0.1"], "split": ["train", "test"]}).to_csv(
        labels, index=False
    )
    with pytest.raises(UserError, match="leakage"):
        preprocess(small_cfg(labels=labels, label_key="study_id"), root, tmp_path / "out2")


def test_split_spellings_in_label_file(tmp_path):
    """14: TRAIN / valid accepted, an unknown split refused with the allowed set."""
    frames, _ = fan_video(10, H, W, seed=7)
    root = tmp_path / "raw"
    for p in range(3):
        save(dicom_dataset(frames, patient=f"P{p}", study=f"{p}"), root / f"f{p}")
    labels = tmp_path / "labels.csv"
    pd.DataFrame(
        {"study_id": ["0", "1", "2"], "split": ["TRAIN", "valid", "Test"], "as": [1, 0, 1]}
    ).to_csv(labels, index=False)
    preprocess(small_cfg(labels=labels), root, tmp_path / "out")
    df = load_manifest(tmp_path / "out")
    assert sorted(df["split"]) == ["test", "train", "val"]
    pd.DataFrame({"study_id": ["0", "1", "2"], "split": ["TRAIN", "holdout", "Test"]}).to_csv(
        labels, index=False
    )
    with pytest.raises(UserError, match="holdout.*train, val, test, ext_test"):
        preprocess(small_cfg(labels=labels), root, tmp_path / "out3")


def test_bad_label_reported_and_unknown(tmp_path):
    """13/31: a label value that cannot be mapped -> an error naming the file, line and column
    (dataset marked failed); accepted with allow_label_issues: the label is unknown, the video
    kept, the labels report lists it."""
    frames, _ = fan_video(10, H, W, seed=8)
    root = tmp_path / "raw"
    for p in range(3):
        save(dicom_dataset(frames, patient=f"P{p}", study=f"{p}"), root / f"f{p}")
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"study_id": ["0", "1", "2"], "ef": ["40", "abc", "70"]}).to_csv(
        labels, index=False
    )
    cfg = small_cfg(labels=labels, label_map={"low_ef": "ef<50"})
    with pytest.raises(
        UserError,
        match=r"label problems: 1 bad_value \(labels.csv line 3 column 'low_ef'\).*marked failed",
    ):
        preprocess(cfg, root, tmp_path / "bad")
    with pytest.raises(UserError, match="failed: label problems"):
        load_manifest(tmp_path / "bad")
    cfg.preprocess.allow_label_issues = True
    res = preprocess(cfg, root, tmp_path / "out")
    assert pd.read_csv(tmp_path / "out" / "skipped.csv").empty
    rep = json.loads((tmp_path / "out" / "labels_report.json").read_text())
    bad = rep["issues"]["bad_value"]
    assert bad["count"] == 1 and bad["examples"][0]["where"] == "labels.csv line 3 column 'low_ef'"
    assert "abc" not in json.dumps(rep) and not bad["error"] and rep["allowed"]
    assert any("1 bad_value" in w for w in res.warnings)
    df = load_manifest(tmp_path / "out", task="low_ef")
    assert res.n_videos == 3 and len(df) == 2 and sorted(df["low_ef"]) == [0.0, 1.0]


def test_too_many_failures_fail_after_writing_skipped(faulty, tmp_path):
    _, _, _, root = faulty
    with pytest.raises(UserError, match="max_skipped_frac") as e:
        preprocess(small_cfg(max_skipped_frac=0.05), root, tmp_path / "out")
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert "invalid_dicom" in str(e.value) and (skipped["reason"] == "invalid_dicom").sum() == 3
    assert (tmp_path / "out" / "manifest.csv").exists() and (
        tmp_path / "out" / "report.json"
    ).exists()
