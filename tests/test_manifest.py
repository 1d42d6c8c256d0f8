"""Manifest preflight: split spellings, leakage, missing files, labels, speed; patient splits."""

import json
import os
import time

import numpy as np
import pandas as pd
import pytest

from echoclr_cli.data.manifest import (
    assign_splits,
    check_leakage,
    label_columns,
    load_manifest,
    normalise_split,
)
from echoclr_cli.data.store import load_video, save_video
from echoclr_cli.errors import UserError


def _write(tmp_path, rows, labels=("as", "lvh"), files=True):
    data = tmp_path / "data"
    (data / "videos").mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    if files:
        for p in df["path"]:
            save_video(data / p, np.zeros((2, 4, 4), np.uint8))
    df.to_csv(data / "manifest.csv", index=False)
    (data / "dataset.json").write_text(json.dumps({"label_columns": list(labels)}))
    return data


def _row(i, split="train", patient=None, study=None, **labels):
    return {
        "video_id": f"v{i}", "study_id": study or f"s{i}", "patient_id": patient or f"p{i}",
        "split": split, "path": f"videos/v{i}.npy", "n_frames": 20, "fps": 30.0,
        "fps_source": "CineRate", "height": 4, "width": 4, "channels": 1, "study_year": 2019,
        "source_hash": "abc", "as": labels.get("as", 1), "lvh": labels.get("lvh", 0),
    }  # fmt: skip


def test_split_spellings_normalised():
    got = normalise_split(["TRAIN", "Train", "training", "valid", "validation", "VAL", "test",
                           "ext_test", "external", "ext-test"])  # fmt: skip
    assert got == ["train"] * 3 + ["val"] * 3 + ["test"] + ["ext_test"] * 3


def test_unknown_split_refused_with_allowed_set(tmp_path):
    data = _write(tmp_path, [_row(0), _row(1, split="holdout")])
    with pytest.raises(UserError) as e:
        load_manifest(data)
    assert "holdout" in str(e.value) and "train, val, test, ext_test" in str(e.value)


def test_leakage_refused_naming_ids(tmp_path):
    rows = [
        _row(0, "train", patient="pA"),
        _row(1, "TEST", patient="pA"),
        _row(2, "val", study="s0"),
    ]
    data = _write(tmp_path, rows)
    with pytest.raises(UserError) as e:
        load_manifest(data)
    msg = str(e.value)
    assert "pA (test/train)" in msg and "s0 (train/val)" in msg
    with pytest.raises(UserError):
        check_leakage(pd.DataFrame(rows).assign(split=["train", "test", "val"]))


def test_all_missing_files_in_one_message(tmp_path):
    data = _write(tmp_path, [_row(i) for i in range(5)])
    (data / "videos/v1.npy").unlink()
    (data / "videos/v3.npy").unlink()
    with pytest.raises(UserError) as e:
        load_manifest(data)
    assert (
        "2 of 5" in str(e.value)
        and "videos/v1.npy" in str(e.value)
        and "videos/v3.npy" in str(e.value)
    )
    assert len(load_manifest(data, check_files=False)) == 5


def test_bad_labels_excluded_and_reported(tmp_path):
    rows = [
        _row(0),
        _row(1, **{"as": 2}),
        _row(2, **{"as": ""}),
        _row(3, **{"as": "yes"}),
        _row(4, **{"as": 0}),
    ]
    data = _write(tmp_path, rows)
    with pytest.warns(UserWarning, match="bad_label"):
        df = load_manifest(data)
    assert len(df) == 5  # SSL keeps every video
    assert {e["video_id"] for e in df.attrs["excluded"] if e["reason"] == "bad_label"} == {
        "v1",
        "v3",
    }
    with pytest.warns(UserWarning):
        task = load_manifest(data, task="as")
    assert list(task["video_id"]) == ["v0", "v4"] and task["as"].tolist() == [1.0, 0.0]
    assert task["as"].notna().all()
    assert label_columns(df) == ["as", "lvh"]


def test_task_must_exist_and_required_split_non_empty(tmp_path):
    data = _write(tmp_path, [_row(0), _row(1, "val")])
    with pytest.raises(UserError, match="no label column 'ef'"):
        load_manifest(data, task="ef")
    with pytest.raises(UserError, match="split 'test' has no videos"):
        load_manifest(data, task="as", require_splits=["train", "test"])


def test_missing_columns_and_manifest(tmp_path):
    with pytest.raises(UserError, match="no manifest.csv"):
        load_manifest(tmp_path)
    data = _write(tmp_path, [_row(0)])
    pd.read_csv(data / "manifest.csv").drop(columns=["patient_id"]).to_csv(
        data / "manifest.csv", index=False
    )
    with pytest.raises(UserError, match="patient_id"):
        load_manifest(data)


def test_ten_thousand_rows_in_seconds(tmp_path):
    n = 10_000
    data = tmp_path / "data"
    (data / "videos").mkdir(parents=True)
    df = pd.DataFrame([_row(0)] * n)
    df["video_id"] = [f"v{i}" for i in range(n)]
    df["path"] = [f"videos/v{i}.npy" for i in range(n)]
    df["patient_id"] = df["study_id"] = [f"p{i}" for i in range(n)]
    df["split"] = np.array(["TRAIN", "valid", "test"])[np.arange(n) % 3]
    df.to_csv(data / "manifest.csv", index=False)
    (data / "videos" / "base").touch()
    for p in df["path"]:  # hard links to one empty file: only existence is checked
        os.link(data / "videos" / "base", data / p)
    t = time.perf_counter()
    got = load_manifest(data, task="as")
    assert len(got) == n and time.perf_counter() - t < 2.0


def test_assign_splits_by_patient_stratified():
    rng = np.random.default_rng(0)
    pats = pd.DataFrame({"as": rng.random(400) < 0.2, "lvh": rng.random(400) < 0.4},
                        index=[f"p{i}" for i in range(400)]).astype(float)  # fmt: skip
    split = assign_splits(pats, (0.75, 0.10, 0.15), seed=0, strata=["as", "lvh"])
    counts = split.value_counts()
    assert (
        abs(counts["train"] - 300) <= 3
        and abs(counts["val"] - 40) <= 3
        and abs(counts["test"] - 60) <= 3
    )
    for s in ("train", "val", "test"):  # prevalence preserved per split
        assert abs(pats.loc[split == s, "as"].mean() - pats["as"].mean()) < 0.04
    assert split.equals(assign_splits(pats, (0.75, 0.10, 0.15), seed=0, strata=["as", "lvh"]))
    assert not split.equals(assign_splits(pats, (0.75, 0.10, 0.15), seed=1, strata=["as", "lvh"]))


def test_store_roundtrip_memmap(tmp_path):
    arr = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    save_video(tmp_path / "v.npy", arr)
    back = load_video(tmp_path / "v.npy")
    assert isinstance(back, np.memmap) and np.array_equal(back, arr)
    with pytest.raises(ValueError):
        save_video(tmp_path / "bad.npy", arr.astype(np.float32))
