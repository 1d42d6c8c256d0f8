"""CLI smoke on a tiny dataset: finetune -> evaluate (--compare) -> predict, as a user runs them."""

import json

import pandas as pd
import pytest
from helpers import make_dataset
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from echoclr_cli.cli import app

TINY = [
    "--device", "cpu", "--profile", "demo", "--set", "model.width=0.125", "--batch-size", "4",
    "--epochs", "1", "--set", "finetune.clip_len=4", "--set", "evaluate.bootstrap=20",
    "--set", "evaluate.plots=false", "--set", "evaluate.clips_per_video=2",
]  # fmt: skip


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = make_dataset(root, n_studies=16)
    out = {}
    for seed in (0, 1):
        out[seed] = root / f"ft{seed}"
        res = cli("finetune", "--data", data, "--task", "lvh", "--init", "random", "--seed", seed,
                  "--out", out[seed], *TINY)  # fmt: skip
        assert res.exit_code == 0, res.output
        assert "metrics (95% CI)" in res.output and "auroc" in res.output
    return data, out


def test_finetune_metrics_match_sklearn_on_its_predictions(runs):
    _, out = runs
    metrics = json.loads((out[0] / "metrics.json").read_text())
    pred = pd.read_csv(out[0] / "predictions_test_study.csv")
    assert metrics["test"]["study"]["auroc"]["value"] == pytest.approx(
        roc_auc_score(pred["y_true"], pred["y_prob"]), abs=1e-12
    )


def test_evaluate_prints_table_and_paired_comparison(runs, tmp_path):
    data, out = runs
    res = cli("evaluate", out[0], "--data", data, "--split", "test", "--compare", out[1],
              "--out", tmp_path / "ev", *TINY[:4])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "95% CI" in res.output and "paired comparison" in res.output
    comp = json.loads((tmp_path / "ev/comparison.json").read_text())
    assert comp["splits"]["test"]["study"]["delong"]["p_value"] is not None
    assert (tmp_path / "ev/metrics.json").exists()


def test_predict_unlabeled_dataset(runs, tmp_path):
    data, out = runs
    res = cli("predict", out[0], "--input", data, "--out", tmp_path / "p.csv", *TINY[:4])
    assert res.exit_code == 0, res.output
    video = pd.read_csv(tmp_path / "p.csv")
    study = pd.read_csv(tmp_path / "p_study.csv")
    assert len(video) > len(study) > 0
    assert video["y_prob"].between(0, 1).all()
