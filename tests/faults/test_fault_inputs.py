"""FAULTS.md 1-10 end to end: a synthetic archive (``echoclr synth --format avi``: AVI cines plus
DICOM stills and structured reports) with corrupt AVIs and DICOMs mixed in (listed in its
videos.csv like the real files), preprocessed by a real ``python -m echoclr_cli preprocess``
process. It completes, lists every bad file in skipped.csv with its reason code, and prints no
traceback. Case 6 (no JPEG decoder) stops before any work (in process, the decoder lookup
patched). Reader-level tests of the same cases: tests/faults/test_preprocess_faults.py."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from faultkit import ROOT, assert_one_line_error, cli, run

sys.path.insert(0, str(ROOT / "tests"))
from preprocess_fixtures import (  # noqa: E402
    dicom_dataset,
    fan_video,
    file_ref_of,
    jpeg_archive_without_decoder,
    patch_avi_frame_count,
    save,
    skipped_by_path,
    video_id_of,
    write_avi,
)

from echoclr_cli.data.manifest import load_manifest  # noqa: E402
from echoclr_cli.data.store import load_video  # noqa: E402

H, W = 64, 80
MIN_FRAMES = 16


def _inject(root: Path) -> dict[str, str]:
    """Write the bad (and reference) files into the archive; returns file -> expected reason
    ('' = stored)."""
    frames, _ = fan_video(20, H, W, seed=1)
    long, _ = fan_video(64, H, W, seed=2)
    rng = np.random.default_rng(0)
    bad = root / "injected"
    expect: dict[str, str] = {}
    # 1. truncated at 50%: 64 -> ~32 frames (kept, warned); 20 -> ~10 (< 16: too_few_frames)
    for name, clip, reason in (
        ("trunc_ok.avi", long, ""),
        ("trunc_short.avi", frames, "too_few_frames"),
    ):
        p = write_avi(bad / name, clip)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        expect[f"injected/{name}"] = reason
    # 2. zero bytes, random bytes
    (bad / "empty.avi").write_bytes(b"")
    (bad / "noise.avi").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    expect.update(
        {"injected/empty.avi": "no_decodable_frames", "injected/noise.avi": "no_decodable_frames"}
    )
    # 3. header frame count: more, 0, -1 (and the correct one)
    write_avi(bad / "hdr_ref.avi", long)
    expect["injected/hdr_ref.avi"] = ""
    for name, v in (("hdr_more.avi", 1000), ("hdr_zero.avi", 0), ("hdr_neg.avi", -1)):
        patch_avi_frame_count(write_avi(bad / name, long), v)
        expect[f"injected/{name}"] = ""
    # 4. not DICOM: a renamed PNG, a cut header
    import cv2

    (bad / "png.dcm").write_bytes(cv2.imencode(".png", frames[0])[1].tobytes())
    good = save(dicom_dataset(frames, patient="X", study="9"), bad / "tmp.dcm").read_bytes()
    (bad / "tmp.dcm").unlink()
    (bad / "cut_header.dcm").write_bytes(good[:200])
    expect.update({"injected/png.dcm": "invalid_dicom", "injected/cut_header.dcm": "invalid_dicom"})
    # 8. frame count mismatch: NumberOfFrames says more; pixel data cut
    save(dicom_dataset(long, number_of_frames=90), bad / "nf_more.dcm")
    p = save(dicom_dataset(long), bad / "cut_pixels.dcm")
    p.write_bytes(p.read_bytes()[: int(p.stat().st_size * 0.6)])
    expect.update({"injected/nf_more.dcm": "frame_count_mismatch",
                   "injected/cut_pixels.dcm": "frame_count_mismatch"})  # fmt: skip
    # 9. low fps (Doppler strip) and no fps at all (fallback)
    save(dicom_dataset(long, cine_rate=10.0), bad / "slow.dcm")
    save(dicom_dataset(long, cine_rate=None), bad / "nofps.dcm")
    expect.update({"injected/slow.dcm": "low_fps", "injected/nofps.dcm": ""})
    # 10. the same video as RGB, YBR_FULL and 16-bit monochrome
    from pydicom.pixels import convert_color_space

    gray = np.repeat(long[..., :1], 3, axis=3)  # echo content is gray
    save(dicom_dataset(gray), bad / "rgb.dcm")
    ybr = convert_color_space(gray.copy(), "RGB", "YBR_FULL", per_frame=True)
    save(dicom_dataset(ybr, "YBR_FULL"), bad / "ybr.dcm")
    save(dicom_dataset(gray[..., 0].astype(np.uint16) * 257, "MONOCHROME2"), bad / "mono16.dcm")
    expect.update({"injected/rgb.dcm": "", "injected/ybr.dcm": "", "injected/mono16.dcm": ""})
    return expect


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty") / "raw"
    res = cli("synth", root, "--studies", "6", "--format", "avi", "--profile", "demo",
              "--set", "synth.height=64", "--set", "synth.width=80",
              "--set", "synth.min_frames=24", "--set", "synth.max_frames=32")  # fmt: skip
    assert res.exit_code == 0, res.output
    videos = pd.read_csv(root / "videos.csv", dtype=str, keep_default_na=False)
    expect = _inject(root)
    # 2 (in place): one of the archive's own cines becomes zero bytes.
    own = videos.loc[videos["kind"] == "cine", "file"].iloc[0]
    (root / own).write_bytes(b"")
    expect[own] = "no_decodable_frames"
    first = videos.iloc[0]
    extra = pd.DataFrame([{"file": f, "kind": "cine", "study_id": first["study_id"],
                           "patient_id": first["patient_id"]} for f in sorted(expect)
                          if f.startswith("injected/")])  # fmt: skip
    pd.concat([videos, extra], ignore_index=True).to_csv(root / "videos.csv", index=False)
    out = root.parent / "data"
    proc = run(["preprocess", "--input", str(root), "--output", str(out), "--size", "32",
                "--workers", "1", "--profile", "demo", "--set", f"preprocess.min_frames={MIN_FRAMES}",
                "--set", "preprocess.short_videos=skip",  # this archive tests the skip path
                "--set", "preprocess.max_skipped_frac=1.0",
                "--set", "preprocess.skip_color_doppler=false"], timeout=300)  # fmt: skip
    skipped = skipped_by_path(out)
    return proc, out, skipped, expect, videos


def stored(out: Path, rel: str) -> pd.Series:
    df = load_manifest(out)
    return df.set_index("video_id").loc[video_id_of(out, rel)]


def test_preprocess_completes_lists_every_bad_file_no_traceback(archive):
    proc, out, skipped, expect, _ = archive
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for file, reason in expect.items():
        if reason:
            assert skipped.loc[file, "reason"] == reason, file
            assert skipped.loc[file, "detail"], file
        else:
            assert file not in skipped.index, file
    assert (out / "manifest.csv").exists()


def test_fault_01_truncated_avi_counts_decoded_frames(archive):
    proc, out, skipped, _, _ = archive
    assert skipped.loc["injected/trunc_short.avi", "reason"] == "too_few_frames"
    row = stored(out, "injected/trunc_ok.avi")
    assert MIN_FRAMES <= row["n_frames"] < 64  # what decoded, never padded to the header
    assert load_video(out / row["path"]).shape[0] == row["n_frames"]
    ref = file_ref_of(out, "injected/trunc_ok.avi")  # warned, naming the file by reference
    assert f"{ref}: header says 64 frames" in proc.stderr and "trunc_ok" not in proc.stderr


def test_fault_02_empty_or_undecodable_avi_skipped(archive):
    _, _, skipped, expect, _ = archive
    own = [f for f in expect if not f.startswith("injected/")]
    for file in ["injected/empty.avi", "injected/noise.avi", *own]:
        assert skipped.loc[file, "reason"] == "no_decodable_frames", file


def test_fault_03_header_frame_count_ignored(archive):
    _, out, _, _, _ = archive
    ref = load_video(out / stored(out, "injected/hdr_ref.avi")["path"])
    assert ref.shape[0] == 64
    for name in ("hdr_more.avi", "hdr_zero.avi", "hdr_neg.avi"):
        got = load_video(out / stored(out, f"injected/{name}")["path"])
        assert np.array_equal(got, ref), name


def test_fault_04_not_dicom_skipped_invalid_dicom(archive):
    _, _, skipped, _, _ = archive
    for file in ("injected/png.dcm", "injected/cut_header.dcm"):
        assert skipped.loc[file, "reason"] == "invalid_dicom"


def test_fault_05_dicom_without_pixel_data_skipped(archive):
    _, _, skipped, _, videos = archive
    reports = videos.loc[videos["kind"] == "sr", "file"].tolist()
    assert reports and all(skipped.loc[f, "reason"] == "no_pixel_data" for f in reports)


def test_fault_06_jpeg_without_decoder_stops_before_work(tmp_path, monkeypatch):
    root = jpeg_archive_without_decoder(tmp_path / "raw", monkeypatch, H, W, ext=".dcm")
    out = tmp_path / "out"
    res = cli("preprocess", "--input", root, "--output", out, "--size", "32", "--workers", "1",
              "--profile", "demo")  # fmt: skip
    assert res.exit_code == 1
    assert_one_line_error(res.output, "1.2.840.10008.1.2.4.50", "3 file(s)", "pip install pillow")
    assert not (out / "manifest.csv").exists() and not (out / "videos").exists()


def test_fault_07_single_frame_dicom_skipped_not_cine(archive):
    _, _, skipped, _, videos = archive
    stills = videos.loc[videos["kind"] == "still", "file"].tolist()
    assert stills and all(skipped.loc[f, "reason"] == "not_cine" for f in stills)


def test_fault_08_frame_count_mismatch_skipped(archive):
    _, _, skipped, _, _ = archive
    for file in ("injected/nf_more.dcm", "injected/cut_pixels.dcm"):
        assert skipped.loc[file, "reason"] == "frame_count_mismatch", file


def test_fault_09_low_fps_skipped_missing_fps_fallback_recorded(archive):
    _, out, skipped, _, _ = archive
    assert skipped.loc["injected/slow.dcm", "reason"] == "low_fps"
    row = stored(out, "injected/nofps.dcm")
    assert row["fps"] == 30.0 and row["fps_source"] == "fallback"


def test_fault_10_color_and_bit_depth_same_uint8_convention(archive):
    _, out, _, _, _ = archive
    raw = {n: load_video(out / stored(out, f"injected/{n}.dcm")["path"])
           for n in ("rgb", "ybr", "mono16")}  # fmt: skip
    assert all(a.dtype == np.uint8 and a.ndim == 3 for a in raw.values())  # gray uint8 (T,H,W)
    arrays = {n: a.astype(int) for n, a in raw.items()}
    for name in ("ybr", "mono16"):
        assert np.abs(arrays[name] - arrays["rgb"]).max() <= 2, name


# --------------------------------------------------------------------------- 27 (preprocess)
def _small_tree(root: Path, n: int = 6) -> Path:
    frames, _ = fan_video(20, H, W, seed=3)
    for i in range(n):
        save(dicom_dataset(frames, patient=f"P{i}", study=f"{i}"), root / f"P{i}" / "IM1.dcm")
    return root


def test_fault_27_preprocess_disk_full_stops_earlier_dataset_intact(tmp_path, monkeypatch):
    """ENOSPC while re-writing a dataset: one clear error (not a skip per file), the dataset
    written before still loads with every video."""
    import echoclr_cli.data.store as store
    import echoclr_cli.io as io

    root = _small_tree(tmp_path / "raw")
    out = tmp_path / "data"
    args = ["preprocess", "--input", root, "--output", out, "--size", "32", "--workers", "1",
            "--profile", "demo", "--set", "preprocess.min_frames=8"]  # fmt: skip
    assert cli(*args).exit_code == 0
    before = load_manifest(out)
    writes: list[Path] = []

    def full_after_two(path, writer, mode="wb"):
        writes.append(Path(path))
        if len(writes) <= 2:
            return io.atomic_write(path, writer, mode)

        def enospc(f):
            f.write(b"\x93NUMPY")
            raise OSError(errno.ENOSPC, "No space left on device")

        return io.atomic_write(path, enospc, mode)

    monkeypatch.setattr(store, "atomic_write", full_after_two)
    res = cli(*args, "--overwrite")
    assert res.exit_code == 1
    assert_one_line_error(res.output, "disk full while writing", str(writes[-1]))
    assert "decode_error" not in res.output
    after = load_manifest(out)  # every listed file present
    pd.testing.assert_frame_equal(before, after)
    for p in after["path"]:
        assert load_video(out / p).shape[0] == 20
    assert not [p for p in (out / "videos").iterdir() if p.name.startswith(".")]


def test_fault_27_preprocess_real_full_disk_in_worker_processes(tmp_path):
    """A 64 KiB tmpfs (needs root; else skipped) and 2 worker processes: the worker's
    UserError crosses the process boundary with its fix; exit 1, one line, no traceback."""
    import subprocess

    root = _small_tree(tmp_path / "raw")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                             capture_output=True).returncode == 0  # fmt: skip
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        proc = run(["preprocess", "--input", str(root), "--output", str(disk / "data"),
                    "--size", "32", "--workers", "2", "--profile", "demo",
                    "--set", "preprocess.min_frames=8"])  # fmt: skip
        output = proc.stdout + proc.stderr
        assert proc.returncode == 1, output
        assert_one_line_error(output, "disk full while writing", "free disk space")
    finally:
        subprocess.run(["umount", str(disk)], check=False)
