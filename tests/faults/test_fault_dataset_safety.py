"""FAULTS 30, 31, 33, 34, 35 and the previous-format migration (docs/RELIABILITY.md).

30 unlisted files reported; 31 label problems counted, shown, an error unless allowed; 33 a
failed preprocess marks its dataset and every loader refuses it; 34 frame size differs from the
config; 35 output not writable; decoder noise summarised; previous-format datasets refused with
the command that converts them, and converted by it.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from faultkit import ROOT, assert_one_line_error, cli

sys.path.insert(0, str(ROOT / "tests"))
from preprocess_fixtures import (  # noqa: E402
    dicom_dataset,
    fan_video,
    save,
    skipped_by_path,
    small_cfg,
    write_avi,
)

from echoclr_cli.config.schema import Config  # noqa: E402
from echoclr_cli.data.manifest import check_frame_size, load_manifest  # noqa: E402
from echoclr_cli.errors import UserError  # noqa: E402
from echoclr_cli.preprocess.run import preprocess  # noqa: E402

H, W = 64, 80


def _tree(root: Path, n: int = 4, fps: float = 30.0) -> Path:
    for i in range(n):
        frames, _ = fan_video(10, H, W, seed=30 + i)
        save(dicom_dataset(frames, patient=f"P{i}", study=f"S{i}", cine_rate=fps),
             root / f"P{i}" / "IM1.dcm")  # fmt: skip
    return root


def _synth_like(root: Path) -> Path:
    """A minimal synth-layout archive: two listed AVIs plus files its index does not name."""
    for i in range(2):
        write_avi(root / f"p{i}" / f"s{i}" / "v.avi", fan_video(10, H, W, seed=40 + i)[0])
    pd.DataFrame({"study_id": ["s0", "s1"], "patient_id": ["p0", "p1"], "as": ["1", "0"]}).to_csv(
        root / "labels.csv", index=False
    )
    pd.DataFrame({"file": ["p0/s0/v.avi", "p1/s1/v.avi"], "study_id": ["s0", "s1"]}).to_csv(
        root / "videos.csv", index=False
    )
    data = (root / "p0" / "s0" / "v.avi").read_bytes()
    (root / "p0" / "s0" / "dropped_in.dcm").write_bytes(data[: len(data) // 2])  # truncated
    (root / "notes.txt").write_text("scanner notes\n")
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref\n")
    return root


# --------------------------------------------------------------------------- 30
def test_30_unlisted_files_reported_not_failures(tmp_path):
    root = _synth_like(tmp_path / "raw")
    res = preprocess(small_cfg(max_skipped_frac=0.0), root, tmp_path / "out")  # 0: no failure
    skipped = skipped_by_path(tmp_path / "out")
    assert skipped.loc["p0/s0/dropped_in.dcm", "reason"] == "unlisted"
    assert "videos.csv" in skipped.loc["p0/s0/dropped_in.dcm", "detail"]
    assert skipped.loc["notes.txt", "reason"] == "not_media"
    assert skipped.loc[".DS_Store", "reason"] == "not_media"
    assert skipped.loc[".git/", "reason"] == "not_media"
    assert res.n_videos == 2 and res.n_failures == 0
    assert res.n_inputs == 2 + 4 and res.skipped_by_reason == {"not_media": 3, "unlisted": 1}


# --------------------------------------------------------------------------- 31
def test_31_labels_work_under_synth_and_missing_label_file_refused(tmp_path):
    root = _synth_like(tmp_path / "raw")
    extra = tmp_path / "extra.csv"
    pd.DataFrame({"study_id": ["s0", "s1"], "lvh": ["0", "1"]}).to_csv(extra, index=False)
    res = preprocess(small_cfg(labels=extra), root, tmp_path / "out")
    df = load_manifest(tmp_path / "out", task="lvh")
    assert res.label_columns == ["as", "lvh"] and sorted(df["lvh"]) == [0.0, 1.0]
    res = cli("preprocess", "--input", root, "--output", tmp_path / "o2", "--labels",
              tmp_path / "nope.csv", "--size", "32")  # fmt: skip
    assert res.exit_code == 1
    assert_one_line_error(res.output, "label file not found", "nope.csv")
    clash = tmp_path / "clash.csv"
    pd.DataFrame({"study_id": ["s0"], "as": ["1"]}).to_csv(clash, index=False)
    with pytest.raises(UserError, match=r"\['as'\] also come from the synth layout"):
        preprocess(small_cfg(labels=clash), root, tmp_path / "o3")


def test_31_label_problems_counted_shown_error_unless_allowed(tmp_path):
    root = _tree(tmp_path / "raw")
    labels = tmp_path / "labels.csv"
    pd.DataFrame({
        "study_id": ["S0", "S1", "S2", "S2", "NOPE"],
        "as": ["1", "yes", "", "7", "0"],      # 'yes' and '7' are not 0/1 ('' is unknown)
        "comment": ["a", "b", "c", "d", "e"],  # not a label: dropped with a line
    }).to_csv(labels, index=False)  # fmt: skip
    args = ["preprocess", "--input", root, "--output", tmp_path / "out", "--labels", labels,
            "--size", "32", "--workers", "1", "--set", "preprocess.min_frames=8"]  # fmt: skip
    res = cli(*args)
    assert res.exit_code == 1
    # one line, with examples by file/line/column (the bad values and ids stay private)
    assert_one_line_error(res.output, "label problems", "--allow-label-issues",
                          "2 bad_value (labels.csv line 3 column 'as', labels.csv line 5 column "
                          "'as')", "1 duplicate_id (labels.csv line 5 column 'study_id')",
                          "1 unmatched_id (labels.csv line 6)")  # fmt: skip
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["status"] == "failed" and "label problems" in info["reason"]
    rep = json.loads((tmp_path / "out" / "labels_report.json").read_text())
    assert {k: v["count"] for k, v in rep["issues"].items()} == {
        "bad_value": 2, "empty_value": 1, "duplicate_id": 1, "unmatched_id": 1,
        "unlabelled_study": 1, "dropped_column": 1}  # fmt: skip
    assert rep["dropped_columns"][0]["column"] == "comment"
    assert "NOPE" not in json.dumps(rep) and "yes" not in json.dumps(rep)
    priv = pd.read_csv(tmp_path / "out" / "private" / "label_issues.csv", dtype=str)
    assert "NOPE" in set(priv["original_id"]) and "yes" in set(priv["value"])
    res = cli(*args, "--allow-label-issues")
    assert res.exit_code == 0, res.output
    for line in ("labels: 2 bad_value", "labels: 1 duplicate_id", "labels: 1 unmatched_id",
                 "column 'comment' is not a label"):  # fmt: skip
        assert line in res.output, line  # the summary shows every kind
    df = load_manifest(tmp_path / "out", task="as")
    assert len(df) == 1 and df["as"].tolist() == [1.0]  # S1 bad -> unknown, S2 empty, S3 none


def test_31_label_for_a_study_whose_videos_were_all_skipped(tmp_path):
    root = _tree(tmp_path / "raw", n=3)
    frames, _ = fan_video(10, H, W, seed=9)
    save(dicom_dataset(frames, patient="P9", study="S9", cine_rate=5.0), root / "P9" / "slow.dcm")
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"study_id": ["S0", "S1", "S2", "S9"], "as": ["1", "0", "1", "0"]}).to_csv(
        labels, index=False
    )
    with pytest.raises(UserError, match="no_videos"):
        preprocess(small_cfg(labels=labels), root, tmp_path / "out")
    rep = json.loads((tmp_path / "out" / "labels_report.json").read_text())
    assert rep["issues"]["no_videos"]["examples"][0]["where"] == "labels.csv line 5"


# --------------------------------------------------------------------------- 33
def test_33_failed_preprocess_marks_dataset_and_loaders_refuse(tmp_path, monkeypatch):
    root = _tree(tmp_path / "raw", n=4)
    (root / "P0" / "bad.dcm").write_bytes(b"garbage")
    out = tmp_path / "out"
    with pytest.raises(UserError, match="max_skipped_frac"):
        preprocess(small_cfg(max_skipped_frac=0.05), root, out)
    info = json.loads((out / "dataset.json").read_text())
    assert info["status"] == "failed" and "max_skipped_frac" in info["reason"]
    with pytest.raises(UserError, match="failed: 1 of 5 inputs.*--allow-failed-dataset"):
        load_manifest(out)
    assert len(load_manifest(out, allow_failed=True)) == 4
    res = cli("check", "--data", out)
    assert res.exit_code == 1
    assert_one_line_error(res.output, "failed", "--allow-failed-dataset")
    monkeypatch.setenv("ECHOCLR_ALLOW_FAILED_DATASET", "0")  # restored after the test
    res = cli("--allow-failed-dataset", "check", "--data", out)
    assert "--allow-failed-dataset" not in res.output  # the status refusal is gone


def test_33_empty_input_leaves_no_dataset_all_skipped_no_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="no file to decode.*nothing was written"):
        preprocess(small_cfg(), tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.dcm").write_bytes(b"junk")
    with pytest.raises(UserError, match="no usable video"):
        preprocess(small_cfg(), bad, tmp_path / "out2")
    assert not (tmp_path / "out2" / "manifest.csv").exists()  # no header-only manifest
    info = json.loads((tmp_path / "out2" / "dataset.json").read_text())
    assert info["status"] == "failed" and "no usable video" in info["reason"]
    with pytest.raises(UserError, match="out2 failed: no usable video"):
        load_manifest(tmp_path / "out2")


# --------------------------------------------------------------------------- 34
def test_34_user_archive_gets_paper_size_unless_set(tmp_path):
    root = _tree(tmp_path / "raw", n=2)
    base = ["preprocess", "--input", root, "--workers", "1", "--profile", "demo",
            "--set", "preprocess.min_frames=8"]  # fmt: skip
    res = cli(*base, "--output", tmp_path / "a")
    assert res.exit_code == 0, res.output
    assert "frame size 112 px, split 75/10/15 (paper)" in res.output
    assert "demo profile's frame size 64 px, split 60/15/25" in res.output
    assert "frames 112x112 (paper, user archive)" in res.output.splitlines()[0]
    assert json.loads((tmp_path / "a" / "dataset.json").read_text())["size"] == 112
    assert load_manifest(tmp_path / "a")["height"].tolist() == [112, 112]
    res = cli(*base, "--output", tmp_path / "b", "--set", "preprocess.size=48")
    assert res.exit_code == 0, res.output
    assert "frame size" not in res.output and "(paper, user archive)" not in res.output
    assert "split 75/10/15 (paper)" in res.output  # the split the user did not set
    assert json.loads((tmp_path / "b" / "dataset.json").read_text())["size"] == 48


def test_34_frame_size_differs_from_config_refused_naming_both(tmp_path):
    root = _tree(tmp_path / "raw", n=2)
    preprocess(small_cfg(), root, tmp_path / "out")  # 32 px
    cfg = Config()  # 112 px
    with pytest.raises(UserError, match="has 32 px frames but preprocess.size is set to 112 px"):
        check_frame_size(tmp_path / "out", cfg)
    with pytest.raises(UserError, match="drop the preprocess.size setting"):
        load_manifest(tmp_path / "out", cfg=cfg)
    cfg.preprocess.size = 32
    assert len(load_manifest(tmp_path / "out", cfg=cfg)) == 2


# --------------------------------------------------------------------------- 35
def test_35_output_not_writable_is_one_line(tmp_path, monkeypatch):
    root = _tree(tmp_path / "raw", n=2)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = cli("preprocess", "--input", root, "--output", blocker / "data", "--size", "32")
    assert res.exit_code == 1
    assert_one_line_error(res.output, str(blocker / "data"))
    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    res = cli("preprocess", "--input", root, "--output", tmp_path / "ro", "--size", "32",
              "--workers", "1", "--set", "preprocess.min_frames=8")  # fmt: skip
    assert res.exit_code == 1
    assert_one_line_error(res.output, "cannot write", "Read-only file system", str(tmp_path / "ro"))


def test_35_decoder_noise_silenced_and_summarised(tmp_path):
    """An AVI that FFmpeg rejects: nothing printed on fd 2, the skip detail summarises it."""
    bad = tmp_path / "noise.avi"
    bad.write_bytes(b"RIFF\x00\x10\x00\x00AVI LIST" + np.random.default_rng(0).bytes(4000))
    code = (
        "from pathlib import Path\n"
        "from echoclr_cli.data import readers, video_reader\n"
        "try:\n"
        f"    video_reader.read_video(Path({str(bad)!r}), readers.ReadOptions())\n"
        "except readers.SkipVideo as e:\n"
        "    print(e.reason, '|', e.detail)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)  # fmt: skip
    assert proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("no_decodable_frames |"), proc.stdout
    assert str(bad) not in proc.stdout


# --------------------------------------------------------------------------- migration
def _make_legacy(out: Path) -> None:
    """Turn a current dataset dir into the previous format (public id map, salt in clear)."""
    priv = out / "private"
    (priv / "id_map.csv").rename(out / "id_map.csv")
    skipped = pd.read_csv(out / "skipped.csv", dtype=str, keep_default_na=False)
    paths = pd.read_csv(priv / "skipped_paths.csv", dtype=str, keep_default_na=False)
    skipped["file"] = skipped["file"].map(dict(zip(paths["file"], paths["path"], strict=True)))
    skipped.to_csv(out / "skipped.csv", index=False)
    (priv / "preview_raw.png").replace(out / "preview.png")
    for p in priv.iterdir():
        p.unlink()
    priv.rmdir()
    info = json.loads((out / "dataset.json").read_text())
    for k in ("format", "status", "reason"):
        info.pop(k)
    info["salt_id"] = "5e4d0c0f1a2b"
    info["config"]["salt"] = "echoclr"
    (out / "dataset.json").write_text(json.dumps(info))


def test_previous_format_refused_with_command_then_migrated(tmp_path):
    root = _tree(tmp_path / "raw", n=3)
    (root / "P0" / "bad.dcm").write_bytes(b"junk")
    out = tmp_path / "old"
    preprocess(small_cfg(), root, out)  # salt "echoclr": the old public default
    old = load_manifest(out)
    _make_legacy(out)
    cmd = f"echoclr preprocess --migrate {out}"
    with pytest.raises(UserError, match="previous format") as e:
        load_manifest(out)
    assert cmd in str(e.value)
    with pytest.raises(UserError, match="--migrate"):
        preprocess(small_cfg(), root, out)  # never mixes two salts in one dir
    res = cli("preprocess", "--migrate", out)
    assert res.exit_code == 0, res.output
    assert "migrated" in res.output and "3 videos" in res.output
    new = load_manifest(out)
    assert len(new) == 3 and set(new["video_id"]).isdisjoint(old["video_id"])  # re-hashed
    assert set(new["n_frames"]) == set(old["n_frames"])
    assert not (out / "id_map.csv").exists() and (out / "private" / "id_map.csv").exists()
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(
        Path(p).name for p in new["path"]
    )
    info = json.loads((out / "dataset.json").read_text())
    assert info["status"] == "ok" and "salt" not in info["config"] and "salt_id" not in info
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["file"].str.fullmatch(r"f[0-9a-f]{15}").all()
    assert "P0/bad.dcm" in set(skipped_by_path(out).index)
    for name in ("skipped.csv", "report.json", "dataset.json"):
        assert "P0" not in (out / name).read_text(), name
    res = cli("preprocess", "--migrate", out)
    assert res.exit_code == 1 and "nothing to migrate" in res.output
