"""Issue 23 cases 4, 6, 7 and 9 (FAULTS.md 39, 41, 42, 44): bounded inputs, no tag value in any
log, one writer per dataset, symlinks reported. Each attack is reproduced as the issue
describes it: a 10 KB RLE DICOM claiming 65535x65535 (peak RSS measured in a child process), a
FIFO and a link to /dev/zero in the archive (a child process with a timeout), a gzip label bomb,
a DICOM whose UI value is invalid (stderr of a child process), a second preprocess into a dataset
that is being written (the lock held), and links inside, leaving and looping in the archive."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from faultkit import ROOT, assert_one_line_error, cli, env, run, spawn

sys.path.insert(0, str(ROOT / "tests"))
from preprocess_fixtures import (  # noqa: E402
    dicom_dataset,
    fan_video,
    read_skipped,
    save,
    write_avi,
)

from echoclr_cli.data import bounds, readers  # noqa: E402
from echoclr_cli.data.manifest import load_manifest  # noqa: E402
from echoclr_cli.data.video_reader import read_video  # noqa: E402

H, W = 64, 80
SECRET_UID = "1.2.840.SECRETVALUE9"  # an invalid UI value (letters) that must never be printed
ARGS = ["--size", "32", "--workers", "1", "--profile", "demo",
        "--set", "preprocess.min_frames=8", "--set", "preprocess.max_skipped_frac=1.0"]  # fmt: skip


def _dicom(path: Path, seed: int = 0, **kw) -> Path:
    frames, _ = fan_video(20, H, W, seed=seed)
    return save(dicom_dataset(frames, patient=f"P{seed}", study=f"1.2.3.{seed}", **kw), path)


def rle_bomb(path: Path, frames: int = 16) -> Path:
    """A ~10 KB RLE Lossless DICOM claiming ``frames`` frames of 65535 x 65535: every fragment is
    a valid RLE header plus runs of zeros, so a decoder allocates the claimed frame first."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    frame = np.zeros((2, 4, 4, 3), np.uint8)
    ds = dicom_dataset(frame[..., 0], "MONOCHROME2")
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = frames
    header = (1).to_bytes(4, "little") + (64).to_bytes(4, "little") + bytes(56)
    fragment = header + b"\x81\x00" * 300  # 300 runs of 128 zero bytes
    ds.PixelData = encapsulate([fragment] * frames)
    ds["PixelData"].VR = "OB"
    save(ds, path)
    assert path.stat().st_size < 12_000
    return path


CHILD = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
limit = int(sys.argv[4])
labels = {"labels": Path(sys.argv[5])} if len(sys.argv) > 5 else {}
if limit:  # never let an unbounded decoder take the test machine down
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from preprocess_fixtures import small_cfg
from echoclr_cli.preprocess.run import preprocess
cfg = small_cfg(input=Path(sys.argv[1]), max_skipped_frac=1.0, short_videos="pad", **labels)
t0 = time.monotonic()
try:
    preprocess(cfg, Path(sys.argv[1]), Path(sys.argv[2]))
    status = "ok"
except Exception as e:
    status = f"{type(e).__name__}: {e}"
print(json.dumps({"seconds": time.monotonic() - t0, "status": status,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(root: Path, out: Path, limit: int = 0, labels: Path | None = None) -> subprocess.Popen:
    extra = [str(labels)] if labels else []
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(out), str(ROOT / "tests"), str(limit), *extra],
        cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _result(proc: subprocess.Popen, timeout: float) -> tuple[dict, str]:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"preprocess still running after {timeout} s (hangs)") from None
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    assert lines, stdout + stderr
    return json.loads(lines[-1]), stderr


def _reasons(out: Path) -> dict[str, str]:
    sk = read_skipped(out)
    return dict(zip(sk["path"], sk["reason"], strict=True))


# --------------------------------------------------------------------------- 6a: pixel budget
def test_fault_41_rle_bomb_refused_with_bounded_rss(tmp_path):
    """A 10 KB RLE DICOM claiming 65535x65535 is skipped ``too_large`` before decoding; the
    peak RSS of preprocessing it is within 200 MB of preprocessing one ordinary file."""
    bomb_root, plain_root = tmp_path / "bomb", tmp_path / "plain"
    rle_bomb(bomb_root / "P1" / "bomb.dcm")
    _dicom(plain_root / "P1" / "ok.dcm")
    limit = 4 << 30  # 4 GiB of address space: less than one claimed frame (65535^2 bytes)
    procs = [_child(r, tmp_path / f"out_{r.name}", limit) for r in (bomb_root, plain_root)]
    (bomb, _), (plain, _) = (_result(p, 120) for p in procs)
    assert _reasons(tmp_path / "out_plain") == {}, plain
    assert _reasons(tmp_path / "out_bomb") == {"P1/bomb.dcm": "too_large"}, bomb
    detail = read_skipped(tmp_path / "out_bomb")["detail"].iloc[0]
    assert "65535x65535" in detail and "preprocess.max_pixels" in detail
    print(f"peak RSS: bomb {bomb['rss_mb']:.0f} MB, ordinary file {plain['rss_mb']:.0f} MB")
    assert bomb["rss_mb"] <= plain["rss_mb"] + 200


def test_fault_41_pixel_budget_is_configurable_for_dicom_and_video(tmp_path):
    """rows x cols x frames x samples over ``max_pixels``: ``too_large`` for a DICOM (from its
    header) and for a video (OpenCV's frame size x frame count, at most max_frames)."""
    dcm = _dicom(tmp_path / "a.dcm")
    avi = write_avi(tmp_path / "a.avi", fan_video(20, H, W)[0])
    need = H * W * 20 * 3  # RGB, 20 frames
    for read, path in ((readers.read_dicom, dcm), (read_video, avi)):
        assert read(path, readers.ReadOptions(max_pixels=need)).frames.shape[0] == 20
        with pytest.raises(readers.SkipVideo) as e:
            read(path, readers.ReadOptions(max_pixels=need - 1))
        assert e.value.reason == "too_large", path
        assert f"{W}x{H}" in e.value.detail


def test_fault_41_video_budget_ignores_a_lying_frame_count(tmp_path):
    """The header frame count is not trusted (FAULTS.md 3): a header claiming 10^9 frames is
    bounded by the frames that would be decoded (max_frames), not refused."""
    from preprocess_fixtures import patch_avi_frame_count

    avi = write_avi(tmp_path / "a.avi", fan_video(20, H, W)[0])
    patch_avi_frame_count(avi, 10**9)
    opts = readers.ReadOptions(max_frames=20, max_pixels=H * W * 3 * 20)
    assert read_video(avi, opts).frames.shape[0] == 20


# --------------------------------------------------------------------------- 6b: regular files
def test_fault_41_fifo_device_and_socket_skipped_within_5_s(tmp_path):
    """A FIFO, a link to /dev/zero and a socket in the archive are skipped ``not_regular_file``
    (never opened); the run takes under 5 s (before: preprocess hung forever)."""
    root = tmp_path / "raw"
    _dicom(root / "P1" / "ok.dcm")
    (root / "P2").mkdir()
    os.mkfifo(root / "P2" / "pipe.dcm")
    (root / "P3").mkdir()
    (root / "P3" / "zero.dcm").symlink_to("/dev/zero")
    expect = {"P2/pipe.dcm": "not_regular_file", "P3/zero.dcm": "not_regular_file"}
    sock = None
    if len(str(root / "P4" / "s.dcm")) < 100:  # AF_UNIX paths are short
        (root / "P4").mkdir()
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(root / "P4" / "s.dcm"))
        expect["P4/s.dcm"] = "not_regular_file"
    try:
        res, _ = _result(_child(root, tmp_path / "out"), 60)
    finally:
        if sock is not None:
            sock.close()
    print(f"FIFO, /dev/zero link and socket skipped; preprocess took {res['seconds']:.2f} s")
    assert res["seconds"] < 5, res
    assert _reasons(tmp_path / "out") == expect
    assert len(load_manifest(tmp_path / "out")) == 1


# --------------------------------------------------------------------------- 6c: label bombs
@pytest.mark.parametrize("suffix", [".csv.gz", ".csv.bz2", ".csv.xz", ".zip"])
def test_fault_41_compressed_label_file_read_with_a_size_limit(tmp_path, suffix):
    """A compressed label file that decompresses past ``preprocess.max_label_bytes`` is refused
    in one line naming the file and the limit, after reading at most the limit."""
    import bz2
    import lzma
    import zipfile

    root = tmp_path / "raw"
    _dicom(root / "P0" / "a.dcm")
    text = b"study_id,as\n" + b"1.2.3.0,1\n" * 400_000  # 4 MB of rows
    labels = tmp_path / f"labels{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(labels, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("labels.csv", text)
    else:
        labels.write_bytes({".csv.gz": gzip.compress, ".csv.bz2": bz2.compress,
                            ".csv.xz": lzma.compress}[suffix](text))  # fmt: skip
    assert labels.stat().st_size < 100_000
    res = cli("preprocess", "--input", root, "--output", tmp_path / "out", "--labels", labels,
              *ARGS, "--set", "preprocess.max_label_bytes=1000000")  # fmt: skip
    assert res.exit_code == 1, res.output
    assert_one_line_error(res.output, labels.name, "1000000 bytes", "preprocess.max_label_bytes")
    assert not (tmp_path / "out" / "manifest.csv").exists()


def _gzip_bomb(path: Path, size: int) -> Path:
    """A label file of about 2 MB holding ``size`` bytes of CSV rows once decompressed: one
    gzip member compressing 16 MiB of rows, repeated (a gzip file may hold many members)."""
    block = b"1.2.3.0,1\n" * ((16 << 20) // 10)
    member = gzip.compress(block, compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(b"study_id,as\n"))
        for _ in range(-(-size // len(block))):
            f.write(member)
    assert path.stat().st_size < 3_000_000
    return path


def test_fault_41_gzip_label_bomb_refused_by_the_default_limit(tmp_path):
    """The attack as the issue gives it, with no option set: a ~2 MB labels.csv.gz holding more
    than the default ``preprocess.max_label_bytes`` (1 GiB) of rows. It is refused in one line
    after reading at most the limit, within seconds and under a 4 GiB address-space cap (before:
    pandas read all of it; a 300 MB one was still being read after 600 s at 5.4 GiB RSS)."""
    limit = 1 << 30  # the default; the refusal below names it, so a changed default shows
    root = tmp_path / "raw"
    _dicom(root / "P0" / "a.dcm")
    labels = _gzip_bomb(tmp_path / "labels.csv.gz", limit + (64 << 20))
    res, stderr = _result(_child(root, tmp_path / "out", 4 << 30, labels), 60)
    print(f"gzip label bomb ({labels.stat().st_size:,} bytes): {res}")
    assert res["status"].startswith("UserError") and "max_label_bytes" in res["status"], (
        res, stderr[-2000:])  # fmt: skip
    assert "labels.csv.gz" in res["status"] and f"{limit} bytes" in res["status"]
    assert res["seconds"] < 30 and res["rss_mb"] < 2048, res  # the limit held, plus 1 GiB
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_fault_41_small_compressed_label_file_is_read(tmp_path):
    root = tmp_path / "raw"
    for i in range(2):
        _dicom(root / f"P{i}" / "a.dcm", seed=i)
    labels = tmp_path / "labels.csv.gz"
    labels.write_bytes(gzip.compress(b"study_id,as\n1.2.3.0,1\n1.2.3.1,0\n"))
    res = cli("preprocess", "--input", root, "--output", tmp_path / "out", "--labels", labels,
              *ARGS)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sorted(load_manifest(tmp_path / "out")["as"]) == [0, 1]


# --------------------------------------------------------------------------- 4: tag values
def _bad_ui_dicom(path: Path) -> Path:
    from pydicom import config

    frames, _ = fan_video(20, H, W)
    ds = dicom_dataset(frames, patient="P9")
    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds.StudyInstanceUID = SECRET_UID
        ds.SeriesInstanceUID = SECRET_UID + ".1"
        return save(ds, path)
    finally:
        config.settings.writing_validation_mode = mode


def test_fault_39_header_warnings_counted_never_printed(tmp_path):
    """pydicom's ``Invalid value for VR UI: '<value>'`` never reaches stderr (nor any output);
    the warnings are counted by reason (no value) in header_warnings.json and the summary."""
    root = tmp_path / "raw"
    _bad_ui_dicom(root / "P9" / "a.dcm")
    _dicom(root / "P1" / "b.dcm", seed=1)
    res, stderr = _result(_child(root, tmp_path / "out"), 60)
    assert "SECRETVALUE9" not in stderr + json.dumps(res), stderr
    out = tmp_path / "out"
    for f in out.iterdir():
        if f.is_file():
            assert b"SECRETVALUE9" not in f.read_bytes(), f.name
    counts = json.loads((out / "header_warnings.json").read_text())
    assert counts["by_reason"].get("invalid value for VR UI", 0) >= 1, counts
    report = json.loads((out / "report.json").read_text())
    assert any("invalid value for VR UI" in w for w in report["warnings"]), report["warnings"]
    assert len(load_manifest(out)) == 2  # a warning is not a skip


def test_fault_39_warning_reasons_hold_no_value():
    reason = bounds.warning_reason
    assert reason(f"Invalid value for VR UI: '{SECRET_UID}'. Please see <https://x>") == (
        "invalid value for VR UI"
    )
    for msg in ("The value length (70) exceeds the maximum length of 64 allowed for VR LO.",
                "Unknown encoding 'ISO_IR SMITH' - using default encoding instead",
                "SMITH^JOHN 12345 is not valid", f"{SECRET_UID}"):  # fmt: skip
        r = reason(msg)
        assert "SMITH" not in r and "JOHN" not in r and "12345" not in r and "SECRET" not in r
        assert r and len(r) <= 60


# --------------------------------------------------------------------------- 7: one writer
def test_fault_42_second_writer_refused_naming_the_holder(tmp_path):
    """While DATA/.lock is held (a preprocess running), a second preprocess into the same folder
    refuses in one line naming the holder's pid and writes nothing; afterwards it runs and the
    lock file does not disturb the dataset."""
    root = tmp_path / "raw"
    for i in range(2):
        _dicom(root / f"P{i}" / "a.dcm", seed=i)
    out = tmp_path / "data"
    args = ["preprocess", "--input", root, "--output", out, *ARGS]
    out.mkdir()
    with open(out / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.seek(0)
        f.truncate()
        f.write("4242\n")
        f.flush()
        res = cli(*args)
        assert res.exit_code == 1, res.output
        assert_one_line_error(res.output, str(out), "pid 4242")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    first = cli(*args)
    assert first.exit_code == 0, first.output
    again = cli(*args)  # a re-run reuses the dataset; the lock file is no obstacle
    assert again.exit_code == 0, again.output
    assert len(load_manifest(out)) == 2
    assert cli("check", "--data", out).exit_code == 0


# The first writer, held inside its run: after its first file is journaled it says so (a file)
# and waits for the test's gate file; then it goes on as an ordinary ``echoclr preprocess``.
HELD_WRITER = r"""
import os, runpy, sys, time
from pathlib import Path
from echoclr_cli.preprocess import journal
inside, gate = Path(sys.argv[1]), Path(sys.argv[2])
add = journal.Journal.add
def held_add(self, *a, **k):
    add(self, *a, **k)
    if not inside.exists():
        inside.write_text(str(os.getpid()))
        end = time.monotonic() + 120
        while not gate.exists() and time.monotonic() < end:
            time.sleep(0.01)
journal.Journal.add = held_add
sys.argv = ["echoclr", *sys.argv[3:]]
runpy.run_module("echoclr_cli", run_name="__main__")
"""


def test_fault_42_two_concurrent_preprocess_runs_one_refused(tmp_path):
    """The attack as the issue gives it: two real ``echoclr preprocess`` processes into one
    folder. The second starts while the first is provably inside its run (held after its first
    file, before the rest), so the test does not depend on timing. The second refuses in one
    line naming the first's pid; the first then finishes a consistent dataset (before: both
    exited 0, leaving 62 .npy files for 31 rows and an id map that disagreed with the salt)."""
    from echoclr_cli.data.privacy import hash_id

    root, out, n = tmp_path / "raw", tmp_path / "data", 4
    for i in range(n):
        _dicom(root / f"P{i}" / "a.dcm", seed=i)
    args = ["preprocess", "--input", str(root), "--output", str(out), *ARGS]
    inside, gate = tmp_path / "inside", tmp_path / "gate"
    first = spawn([str(inside), str(gate), *args], code=HELD_WRITER)
    try:
        while not inside.exists():
            assert first.poll() is None, first.communicate()[0]
            time.sleep(0.01)
        second = run(args, timeout=120)  # the first is held inside its run meanwhile
    finally:
        gate.touch()
        first_out = first.communicate(timeout=120)[0]
    man = pd.read_csv(out / "manifest.csv", dtype=str) if (out / "manifest.csv").exists() else []
    salt = json.loads((out / "private" / "salt.json").read_text())["salt"]
    ids = pd.read_csv(out / "private" / "id_map.csv", dtype=str)
    state = {
        "first exit": first.returncode, "second exit": second.returncode, "rows": len(man),
        "npy": len(list(out.rglob("*.npy"))),
        "ids not from the salt": sum(hash_id(salt, k, o) != h for h, o, k in
                                     zip(ids["hashed"], ids["original"], ids["kind"], strict=True)),
    }  # fmt: skip
    assert state == {"first exit": 0, "second exit": 1, "rows": n, "npy": n,
                     "ids not from the salt": 0}, (state, second.stdout, first_out)  # fmt: skip
    assert_one_line_error(second.stdout + second.stderr, str(out), f"pid {first.pid}")


def test_fault_42_empty_input_still_leaves_no_dataset(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "notes.txt").write_text("x")
    res = cli("preprocess", "--input", tmp_path / "raw", "--output", tmp_path / "data", *ARGS)
    assert res.exit_code == 1
    assert not (tmp_path / "data").exists()


# --------------------------------------------------------------------------- 9: symlinks
def _link_archive(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An archive with every kind of link; returns (root, expected skip reason by path)."""
    root, outside = tmp_path / "raw", tmp_path / "elsewhere"
    _dicom(root / "P0" / "a.dcm", seed=0)
    _dicom(root / ".store" / "S1" / "b.dcm", seed=1)  # reached only through a link
    _dicom(outside / "P2" / "c.dcm", seed=2)
    _dicom(outside / "d.dcm", seed=3)
    (root / "P1").symlink_to(root / ".store" / "S1")  # dir link inside: followed
    (root / "P2").symlink_to(outside / "P2")  # dir link leaving the root
    (root / "P0" / "ext.dcm").symlink_to(outside / "d.dcm")  # file link leaving the root
    (root / "P0" / "loop").symlink_to("..")  # dir link to an ancestor
    (root / "P0" / "self.dcm").symlink_to("self.dcm")  # a link to itself
    (root / "P5").symlink_to("P0")  # a second path to a folder that is read anyway
    (root / "P0" / "same.dcm").symlink_to("a.dcm")  # a second path to a file read anyway
    (root / "P0" / "broken.dcm").symlink_to("nothing.dcm")
    return root, {
        ".store/": "not_media", "P2": "outside_archive", "P0/ext.dcm": "outside_archive",
        "P0/loop": "symlink_loop", "P0/self.dcm": "symlink_loop", "P5": "duplicate_link",
        "P0/same.dcm": "duplicate_link", "P0/broken.dcm": "missing_file",
    }  # fmt: skip


def test_fault_44_symlinks_followed_inside_reported_outside(tmp_path):
    """Links inside the archive are followed once (a folder reached only through a link is read,
    loops and second paths get a row); links leaving it are skipped ``outside_archive``. Every
    link has a row in skipped.csv or a stored video (before: dir links dropped silently, file
    links outside the archive ingested)."""
    root, expect = _link_archive(tmp_path)
    out = tmp_path / "data"
    res = cli("preprocess", "--input", root, "--output", out, *ARGS)
    assert res.exit_code == 0, res.output
    assert _reasons(out) == expect
    assert len(load_manifest(out)) == 2  # P0/a.dcm and P1/b.dcm (through the link)
    ids = pd.read_csv(out / "private" / "id_map.csv", dtype=str)
    assert sorted(ids.loc[ids["kind"] == "video", "original"]) == ["P0/a.dcm", "P1/b.dcm"]
    public = (out / "skipped.csv").read_text()
    assert "elsewhere" not in public and str(tmp_path) not in public


def test_fault_44_follow_external_links_reads_them(tmp_path):
    root, expect = _link_archive(tmp_path)
    out = tmp_path / "data"
    res = cli("preprocess", "--input", root, "--output", out, *ARGS,
              "--set", "preprocess.follow_external_links=true")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert _reasons(out) == {k: v for k, v in expect.items() if v != "outside_archive"}
    assert len(load_manifest(out)) == 4


def test_fault_41_label_fifo_refused_never_opened(tmp_path):
    """A FIFO given as --labels is refused in one line, never opened (opening it would block)."""
    root = tmp_path / "raw"
    _dicom(root / "P0" / "a.dcm")
    os.mkfifo(tmp_path / "labels.csv")
    res = cli("preprocess", "--input", root, "--output", tmp_path / "out",
              "--labels", tmp_path / "labels.csv", *ARGS)  # fmt: skip
    assert res.exit_code == 1, res.output
    assert_one_line_error(res.output, "labels.csv", "FIFO", "not a regular file")


def test_fault_41_fifo_listed_by_an_index_layout_skipped(tmp_path):
    """A FIFO named by an index layout (EchoNet's FileList.csv) is skipped ``not_regular_file``."""
    root = tmp_path / "echonet"
    videos = root / "Videos"
    for i in range(2):
        write_avi(videos / f"v{i}.avi", fan_video(20, H, W, seed=i)[0])
    os.mkfifo(videos / "pipe.avi")
    (root / "FileList.csv").write_text("FileName,EF,Split\nv0,60,TRAIN\nv1,30,TRAIN\npipe,50,VAL\n")
    res = cli("preprocess", "--input", root, "--output", tmp_path / "out", *ARGS,
              "--set", "preprocess.skip_color_doppler=false")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert _reasons(tmp_path / "out") == {"Videos/pipe.avi": "not_regular_file"}
