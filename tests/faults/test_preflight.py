"""The preflight (``check.run_check``, the same as ``echoclr check``) runs at the start of
pretrain, finetune and sweep: every data problem it can find is reported before a model is built
(``models.build_backbone`` is patched to fail: the preflight error must come first), and it
takes seconds on a 10,000-video manifest."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from faultkit import assert_one_line_error, cli, finetune_args, pretrain_args

from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.training.preflight import run_check
from tests.helpers import make_dataset


@pytest.fixture
def no_model(monkeypatch):
    """Building a model fails loudly: anything reaching it ran before/without the preflight."""
    import echoclr_cli.models.backbones as models
    import echoclr_cli.pretrain.task as pretrain_task

    def boom(*a, **k):
        raise AssertionError("a model was built before the preflight passed")

    monkeypatch.setattr(models, "build_backbone", boom)
    monkeypatch.setattr(pretrain_task, "build_backbone", boom)


@pytest.fixture
def data(tmp_path) -> Path:
    return make_dataset(tmp_path, n_studies=12)


def one_class_train(data: Path) -> None:
    df = pd.read_csv(data / "manifest.csv")
    df.loc[df["split"] == "train", "as"] = 1
    df.to_csv(data / "manifest.csv", index=False)


def test_preflight_missing_files_before_any_model(data, tmp_path, no_model):
    df = pd.read_csv(data / "manifest.csv")
    for p in df["path"][:2]:
        (data / p).unlink()
    for args in (pretrain_args(data, tmp_path / "p"), finetune_args(data, tmp_path / "f")):
        res = cli(*args)
        assert res.exit_code == 1 and "a model was built" not in res.output
        assert_one_line_error(res.output, *df["path"][:2])
    assert not (tmp_path / "p").exists() and not (tmp_path / "f").exists()


def test_preflight_one_class_training_split_before_any_model(data, tmp_path, no_model):
    one_class_train(data)
    res = cli(*finetune_args(data, tmp_path / "f"))
    assert res.exit_code == 1
    assert_one_line_error(res.output, "preflight failed", "train split", "no negative study")
    res = cli("check", "--data", data, "--task", "as", "--profile", "demo")
    assert res.exit_code == 1 and "no negative study" in res.output


def test_preflight_sweep_refuses_before_writing_or_training(data, tmp_path, no_model):
    one_class_train(data)
    out = tmp_path / "sweep"
    res = cli("sweep", "--data", data, "--out", out, "--inits", "random", "--tasks", "as",
              "--ratios", "1.0", "--seeds", "0", "--device", "cpu", "--profile", "demo")  # fmt: skip
    assert res.exit_code == 1
    assert_one_line_error(res.output, "no negative", "'as'")  # planning or preflight: first
    assert not out.exists()


def test_preflight_sweep_missing_file_refused_before_writing(data, tmp_path, no_model):
    gone = pd.read_csv(data / "manifest.csv")["path"].iloc[-1]
    (data / gone).unlink()
    out = tmp_path / "sweep"
    res = cli("sweep", "--data", data, "--out", out, "--inits", "random", "--tasks", "as",
              "--ratios", "1.0", "--seeds", "0", "--device", "cpu", "--profile", "demo")  # fmt: skip
    assert res.exit_code == 1
    assert_one_line_error(res.output, gone, "missing")
    assert not out.exists()


def test_preflight_zero_step_pretrain_loader(data, tmp_path, no_model):
    df = pd.read_csv(data / "manifest.csv")
    first = df.index[df["split"] == "train"][0]
    df[(df["split"] != "train") | (df.index == first)].to_csv(data / "manifest.csv", index=False)
    res = cli(*pretrain_args(data, tmp_path / "p"))
    assert res.exit_code == 1
    assert_one_line_error(res.output, "pretrain batches", "at least 2 pairs")


def test_preflight_check_and_pretrain_agree_on_batch_cap(data):
    cfg = Config()
    cfg.pretrain.method = "simclr"
    cfg.pretrain.batch_size = 500
    res = run_check(cfg, data, section="pretrain")
    assert res.ok  # pretrain lowers the batch (a warning), it does not refuse
    assert any(f.level == "warn" and f.what == "pretrain batches" for f in res.findings)


def test_preflight_takes_seconds_on_10000_videos(tmp_path):
    """10,000 manifest rows (3,000 patients) with empty stand-in files: the whole preflight
    including the pretrain pair table reads no video."""
    n = 10_000
    data = tmp_path / "big"
    (data / "videos").mkdir(parents=True)
    study = np.arange(n) // 2
    patient = study // 2
    split = np.where(patient % 10 < 7, "train", np.where(patient % 10 < 9, "val", "test"))
    paths = [f"videos/V{i:05d}.npy" for i in range(n)]
    for p in paths:
        (data / p).touch()
    pd.DataFrame({
        "video_id": [f"V{i:05d}" for i in range(n)], "study_id": [f"S{s}" for s in study],
        "patient_id": [f"P{p}" for p in patient], "split": split, "path": paths,
        "n_frames": 40, "fps": 30.0, "height": 112, "width": 112, "channels": 1,
        "study_year": 2018, "source_hash": "x", "as": (study % 3 == 0).astype(int),
    }).to_csv(data / "manifest.csv", index=False)  # fmt: skip
    cfg = Config()
    t0 = time.perf_counter()
    res = run_check(cfg, data, task="as", section="finetune")
    finetune_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res_p = run_check(cfg, data, section="pretrain")
    pretrain_s = time.perf_counter() - t0
    print(f"run_check on {n} videos: finetune {finetune_s:.2f} s, pretrain {pretrain_s:.2f} s")
    assert res.ok and res_p.ok and res.n_videos == n
    assert finetune_s < 10 and pretrain_s < 10
    (data / paths[123]).unlink()
    with pytest.raises(UserError, match="V00123"):
        run_check(cfg, data, task="as")


def test_preflight_pretrain_split_rule_is_pretrains(data):
    cfg = Config()
    cfg.pretrain.split = "ext_test"
    res = run_check(cfg, data, section="pretrain")
    bad = [f for f in res.findings if f.level == "error"]
    assert [f.what for f in bad] == ["pretrain split"]
    assert "no videos in split(s) ['ext_test']" in bad[0].detail


def test_preflight_finetune_subset_is_the_finetune_sample(data):
    """The subset size in the check is the fine-tune's own sample (not an estimate)."""
    from echoclr_cli.data.fractions import sample_label_fraction, study_labels

    cfg = Config()
    cfg.finetune.frac = 0.01
    cfg.finetune.batch_size = 64
    res = run_check(cfg, data, task="as", section="finetune")
    df = res.manifest
    train = df[df["split"] == "train"]
    sample = sample_label_fraction(study_labels(train, "as"), 0.01, cfg.finetune.frac_seed, "as")
    n = int(train["study_id"].isin(set(sample.studies["study_id"])).sum())
    warn = [f for f in res.findings if f.what == "finetune batches"]
    assert len(warn) == 1 and warn[0].detail.startswith(f"{n} training videos at frac 0.01")
