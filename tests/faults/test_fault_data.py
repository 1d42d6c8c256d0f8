"""FAULTS.md 11-18 and 20 through the real CLI (in process, typer's CliRunner): a bad manifest,
labels, splits, batch sizes, config or output dir is refused (or handled) before a model is
built, with one line naming the file / key / id; nothing is trained on poisoned input.

The core-level tests of the same cases live in tests/test_manifest.py, tests/test_sampling.py,
tests/test_config.py, tests/test_metrics.py and tests/faults/test_preprocess_faults.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from faultkit import assert_one_line_error, cli, finetune_args, pretrain_args

from tests.helpers import make_dataset


@pytest.fixture
def data(tmp_path) -> Path:
    return make_dataset(tmp_path, n_studies=12)


def edit_manifest(data: Path, fn) -> pd.DataFrame:
    df = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    df = fn(df)
    df.to_csv(data / "manifest.csv", index=False)
    return df


# --------------------------------------------------------------------------- 11
def test_fault_11_missing_files_all_listed_before_work(data, tmp_path):
    df = pd.read_csv(data / "manifest.csv")
    gone = list(df["path"][[0, 5, 9]])
    for p in gone:
        (data / p).unlink()
    for args in (pretrain_args(data, tmp_path / "pre"), finetune_args(data, tmp_path / "ft")):
        res = cli(*args)
        assert res.exit_code == 1
        assert_one_line_error(res.output, *gone, "3 of")
    assert not (tmp_path / "pre").exists() and not (tmp_path / "ft").exists()
    res = cli("check", "--data", data, "--profile", "demo")
    assert res.exit_code == 1 and all(p in res.output for p in gone)


# --------------------------------------------------------------------------- 12
def test_fault_12_patient_in_two_splits_refused_naming_it(data, tmp_path):
    def leak(df):
        train_pid = df.loc[df["split"] == "train", "patient_id"].iloc[0]
        df.loc[df.index[df["split"] == "test"][0], "patient_id"] = train_pid
        return df

    df = edit_manifest(data, leak)
    pid = df.loc[df["split"] == "train", "patient_id"].iloc[0]
    for args in (pretrain_args(data, tmp_path / "pre"), finetune_args(data, tmp_path / "ft")):
        res = cli(*args)
        assert res.exit_code == 1
        assert_one_line_error(res.output, "leakage", f"{pid} (test/train)")
    assert not (tmp_path / "pre").exists() and not (tmp_path / "ft").exists()


# --------------------------------------------------------------------------- 13
def test_fault_13_bad_labels_excluded_never_reach_the_loss(data, tmp_path, monkeypatch):
    """Non-numeric, out-of-range and empty labels: the rows are excluded (bad_label named by
    `check`), training runs on the rest and every target the loss sees is 0 or 1."""
    import echoclr_cli.finetune.run as ft

    train_studies = sorted(
        pd.read_csv(data / "manifest.csv").query("split == 'train'").study_id.unique()
    )
    bad = {train_studies[0]: "abc", train_studies[1]: "2", train_studies[2]: ""}

    def poison(df):
        for study, value in bad.items():
            df.loc[df["study_id"] == study, "as"] = value
        return df

    edit_manifest(data, poison)
    res = cli("check", "--data", data, "--task", "as", "--profile", "demo")
    assert res.exit_code == 0 and "bad_label" in res.output and "'abc'" in res.output

    seen: list[torch.Tensor] = []
    real = ft.classification_loss

    def spy(logits, y, *a, **k):
        seen.append(y.detach().clone())
        return real(logits, y, *a, **k)

    monkeypatch.setattr(ft, "classification_loss", spy)
    res = cli(*finetune_args(data, tmp_path / "ft"))
    assert res.exit_code == 0, res.output
    used = set(pd.read_csv(tmp_path / "ft" / "train_studies.csv", dtype=str)["study_id"])
    assert not used & set(bad)
    assert seen and all(torch.isin(y, torch.tensor([0.0, 1.0])).all() for y in seen)
    assert math.isfinite(pd.read_csv(tmp_path / "ft" / "history.csv")["loss"].iloc[0])


# --------------------------------------------------------------------------- 14
def test_fault_14_split_spellings_normalised_unknown_and_empty_refused(data, tmp_path):
    spelled = {"train": "TRAIN", "val": "valid", "test": "Test"}
    edit_manifest(data, lambda df: df.assign(split=df["split"].map(spelled)))
    res = cli(*pretrain_args(data, tmp_path / "ok"))
    assert res.exit_code == 0, res.output

    edit_manifest(data, lambda df: df.assign(split=df["split"].replace("Test", "holdout")))
    res = cli(*pretrain_args(data, tmp_path / "unknown"))
    assert res.exit_code == 1
    assert_one_line_error(res.output, "holdout", "train, val, test, ext_test")

    # A required split empty: no val study -> fine-tuning cannot select a model.
    edit_manifest(
        data, lambda df: df.assign(split=df["split"].replace({"holdout": "test", "valid": "test"}))
    )
    res = cli(*finetune_args(data, tmp_path / "noval"))
    assert res.exit_code == 1
    assert_one_line_error(res.output, "val split")
    assert not (tmp_path / "unknown").exists() and not (tmp_path / "noval").exists()


# --------------------------------------------------------------------------- 15
def test_fault_15_one_class_split_metrics_undefined_with_reason(data, tmp_path):
    edit_manifest(data, lambda df: df.assign(**{"as": df["as"].where(df["split"] != "test", "0")}))
    res = cli(*finetune_args(data, tmp_path / "ft"))
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    for level in ("video", "study"):
        assert m["test"][level]["auroc"]["value"] is None  # NaN: neither 0 nor 0.5
        assert "one class" in m["reasons"]["test"][level]["auroc"]
    assert m["val"]["study"]["auroc"]["value"] is not None


# --------------------------------------------------------------------------- 16
def test_fault_16_batch_larger_than_split_never_a_silent_noop(data, tmp_path):
    res = cli(*pretrain_args(data, tmp_path / "pre", 2), "--batch-size", "64")
    assert res.exit_code == 0, res.output
    assert "batch_size 64" in res.output  # the cap is said, not silent
    hist = pd.read_csv(tmp_path / "pre" / "history.csv")
    assert list(hist["step"]) == [1, 2]  # one full step per epoch, never zero

    res = cli(*finetune_args(data, tmp_path / "ft"), "--batch-size", "64")
    assert res.exit_code == 0, res.output
    facts = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert facts["batch_size"] == facts["n_train_videos"] < 64

    # One training video: no contrastive batch at all -> refused by the preflight.
    def one_train_video(df):
        keep = df["split"] != "train"
        keep[df.index[df["split"] == "train"][0]] = True
        return df[keep]

    edit_manifest(data, one_train_video)
    res = cli(*pretrain_args(data, tmp_path / "tiny"))
    assert res.exit_code == 1
    assert_one_line_error(res.output, "preflight failed", "at least 2 pairs")
    assert not (tmp_path / "tiny").exists()


# --------------------------------------------------------------------------- 17
def test_fault_17_tiny_label_fraction_holds_both_classes(data, tmp_path):
    res = cli(*finetune_args(data, tmp_path / "ft"), "--set", "finetune.frac=0.01")
    assert res.exit_code == 0, res.output
    studies = pd.read_csv(tmp_path / "ft" / "train_studies.csv")
    assert sorted(studies["y"].unique()) == [0, 1]
    facts = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert facts["n_train_studies_requested"] == 0 and any("extended" in n for n in facts["notes"])


# --------------------------------------------------------------------------- 18
@pytest.mark.parametrize(
    "setting, named",
    [
        ("pretrain.temprature=0.1", ["pretrain.temprature", "pretrain.temperature"]),
        ("pretrain.epochs=0", ["pretrain.epochs"]),
        ("runtime.workers=many", ["runtime.workers"]),
    ],
)
def test_fault_18_config_typo_type_range_refused_naming_key(data, tmp_path, setting, named):
    res = cli(*pretrain_args(data, tmp_path / "run"), "--set", setting)
    assert res.exit_code == 1
    assert_one_line_error(res.output, *named)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 20
def test_fault_20_existing_output_dir_never_deleted(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = cli(*pretrain_args(data, out))
    assert res.exit_code == 1
    assert_one_line_error(res.output, str(out), "--overwrite")
    assert (out / "notes.txt").read_text() == "mine" and not (out / "checkpoints").exists()
    res = cli(*pretrain_args(data, out), "--overwrite")
    assert res.exit_code == 0, res.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoints/last.pt").exists()
