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


def _digest(root):
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_evaluate_bad_compare_fails_in_one_line_and_leaves_the_run_untouched(runs, tmp_path):
    _, out = runs
    before = _digest(out[0])
    res = cli("evaluate", out[0], "--split", "test", "--compare", tmp_path / "nonexistent",
              *TINY[:4])  # fmt: skip
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines[0].startswith("profile ")  # the settings line comes first
    assert len(lines) <= 3 and "nonexistent" in lines[1]  # then the error (+ its fix)
    assert _digest(out[0]) == before


def test_evaluate_defaults_to_evaluate_splits_into_its_own_folder(runs):
    _, out = runs
    own = (out[1] / "metrics.json").read_bytes()
    res = cli("evaluate", out[1], "--set", "evaluate.splits=[test]", *TINY[:4])
    assert res.exit_code == 0, res.output
    ev = out[1] / "eval" / "test"
    assert set(json.loads((ev / "metrics.json").read_text())) >= {"val", "test"}
    assert json.loads((ev / "eval.json").read_text())["splits"] == ["val", "test"]
    assert (out[1] / "metrics.json").read_bytes() == own  # the fine-tune's result file


def test_finetune_model_follows_a_checkpoint_init(tmp_path):
    import torch
    import yaml
    from helpers import tiny_finetune_config

    from echoclr_cli.models.backbones import SSLModel, build_backbone
    from echoclr_cli.training.engine import Engine

    data = make_dataset(tmp_path, n_studies=16)
    # a pretrain checkpoint at width 0.125; the demo profile builds width 0.25
    engine = Engine(tiny_finetune_config(), tmp_path / "ssl", section="pretrain")
    model = SSLModel(build_backbone("r3d_18", 0.125), 16, 8)
    engine.save("last.pt", model, torch.optim.Adam(model.parameters()), None)
    ckpt = tmp_path / "ssl" / "checkpoints" / "last.pt"
    no_width = [a for a in TINY if a != "model.width=0.125"]
    no_width.remove("--set")  # the --set that carried it (first one in TINY)
    res = cli("finetune", "--data", data, "--task", "lvh", "--init", ckpt, "--out",
              tmp_path / "ft", *no_width)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "model follows the init: model.arch=r3d_18, model.width=0.125" in res.output
    saved = yaml.safe_load((tmp_path / "ft/config.yaml").read_text())["model"]
    assert (saved["arch"], saved["width"]) == ("r3d_18", 0.125)
    # a width the user sets is kept, and the mismatch is refused as before
    res = cli("finetune", "--data", data, "--task", "lvh", "--init", ckpt, "--out",
              tmp_path / "ft2", "--set", "model.width=0.25", *no_width)  # fmt: skip
    assert res.exit_code == 1 and "model.width 0.125" in res.output
    assert "model follows the init: model.arch=r3d_18 (from" in res.output  # width: the user's
    assert not (tmp_path / "ft2").exists()


def test_predict_unlabeled_dataset(runs, tmp_path):
    data, out = runs
    res = cli("predict", out[0], "--input", data, "--out", tmp_path / "p.csv", *TINY[:4])
    assert res.exit_code == 0, res.output
    video = pd.read_csv(tmp_path / "p.csv")
    study = pd.read_csv(tmp_path / "p_study.csv")
    assert len(video) > len(study) > 0
    assert video["y_prob"].between(0, 1).all()
