"""The paper profile trains the published recipe (docs/METHOD.md, "The published recipe, line by
line"): every value asserted here as a literal, so a changed default or a changed entry of the
recipe table (echoclr_cli/recipe.py) fails; method-specific epochs on every path; --print-recipe.
"""

from __future__ import annotations

import shlex

import pytest
from helpers import make_dataset
from typer.testing import CliRunner

from echoclr_cli import cli
from echoclr_cli.config.load import load_config
from echoclr_cli.config.recipe import RECIPE, format_recipe, get, published_value, recipe_rows
from echoclr_cli.config.schema import Config, pretrain_epochs, with_pretrain_epochs
from echoclr_cli.training.engine import Engine

runner = CliRunner()

# key -> the paper profile's value (= the published one except the documented differences)
PAPER = {
    "model.arch": "r3d_18",
    "model.width": 1.0,
    "model.proj_hidden": 256,
    "model.proj_dim": 128,
    "pretrain.batch_size": 392,  # GLOBAL: 2 GPUs x 196
    "pretrain.optim.optimizer": "adam",
    "pretrain.optim.learning_rate": 0.1,
    "pretrain.optim.weight_decay": 0.0,
    "pretrain.optim.schedule": "none",
    "pretrain.temperature": 0.05,
    "pretrain.clip_len": 4,
    "pretrain.stride": 1,
    "pretrain.reorder_frames": 4,
    "pretrain.nt_xent_weight": 1.0,
    "pretrain.reorder_weight": 1.0,
    "pretrain.exclude_same_study_negatives": False,
    "pretrain.view_forward": "separate",
    "pretrain.augment.enabled": True,
    "pretrain.augment.pad": 8,
    "pretrain.augment.flip_p": 0.5,
    "pretrain.augment.rotate_p": 0.5,
    "pretrain.augment.max_degrees": 10,
    "finetune.batch_size": 88,
    "finetune.optim.optimizer": "adam",
    "finetune.optim.learning_rate": 1e-4,
    "finetune.epochs": 30,
    "finetune.patience": 5,
    "finetune.early_stop": "published",
    "finetune.dropout": 0.25,
    "finetune.label_smoothing": 0.0,
    "finetune.pos_weight": "balanced",
    "finetune.clip_len": 16,
    "finetune.stride": 1,
    "finetune.mode": "full",
    "finetune.augment.enabled": True,
    "finetune.augment.pad": 8,
    "finetune.augment.flip_p": 0.5,
    "finetune.augment.rotate_p": 0.5,
    "finetune.augment.max_degrees": 10,
    "sweep.lrs": [1e-4],
    "sweep.low_ratio_lrs": [1e-5, 1e-4, 5e-4],
    "sweep.low_ratio": 0.1,
    "sweep.ratios": [0.01, 0.05, 0.1, 0.25, 0.5, 1.0],
    "evaluate.clips_per_video": 4,
    "evaluate.bootstrap": 1000,
    "evaluate.ci": 0.95,  # deliberate: the published 5-95 percentiles are a 90% interval
    "preprocess.size": 112,
    "runtime.precision": "auto",  # deliberate: bf16 autocast on CUDA, losses in fp32
    "runtime.sync_bn": False,
}
# the documented deliberate differences of the paper profile: key -> published value
DELIBERATE = {"evaluate.ci": 0.90, "runtime.precision": "fp32", "evaluate.bootstrap_unit": "video"}
# keys the evalprep part of issue 12 adds: the paper profile's value
EVALPREP = {
    "preprocess.resize": "whole_frame",
    "preprocess.short_videos": "pad",
    "evaluate.clip_starts": "published",
    "evaluate.scaling": "video",
    "evaluate.bootstrap_unit": "patient",
}


@pytest.fixture(scope="module")
def paper() -> Config:
    return load_config(profile="paper")


def _value(cfg: Config, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def test_paper_profile_is_the_published_recipe(paper):
    for key, want in PAPER.items():
        got = _value(paper, key)
        if isinstance(want, float | list):
            assert got == pytest.approx(want), key
        else:
            assert got == want and type(got) is type(want), key
    epochs = {
        m: pretrain_epochs(paper.pretrain.model_copy(update={"method": m}))
        for m in ("simclr", "mi-simclr", "echoclr")
    }
    assert epochs == {"simclr": 520, "mi-simclr": 300, "echoclr": 300}


def test_recipe_table_matches_the_paper_profile(paper):
    """The table --print-recipe prints: every entry is either the paper profile's value or a
    documented deliberate difference; no key is missing from the literal lists above."""
    keys = {it.key for it in RECIPE}
    assert keys == set(PAPER) | set(EVALPREP) | {"pretrain.epochs"}
    for it in RECIPE:
        pub = published_value(it, paper)
        if it.key in DELIBERATE:
            assert it.why and pub == pytest.approx(DELIBERATE[it.key]), it.key
            want = PAPER.get(it.key, EVALPREP.get(it.key))
            assert it.ours == want, it.key
        elif it.key in PAPER:
            assert not it.why and pub == pytest.approx(PAPER[it.key]), it.key
        elif it.key in EVALPREP:
            assert pub == EVALPREP[it.key], it.key
    rows = {r.key: r for r in recipe_rows(paper)}
    changed = [k for k, r in rows.items() if r.status == "changed"]
    assert not changed, changed  # the paper profile differs only deliberately
    assert {k for k, r in rows.items() if r.status == "deliberate"} <= set(DELIBERATE)


def test_evalprep_keys_when_present(paper):
    """After the evalprep branch merges, its keys must hold the paper profile's values."""
    present = {k: v for k, v in EVALPREP.items() if get(paper, k) is not _missing()}
    if not present:
        pytest.skip("the evalprep keys are not in this build's config yet")
    for key, want in present.items():
        assert get(paper, key) == want, key


def _missing():
    from echoclr_cli.config import recipe

    return recipe._MISSING


def test_epochs_follow_the_method_unless_set():
    for method, n in (("simclr", 520), ("mi-simclr", 300), ("echoclr", 300)):
        cfg = Config.model_validate({"pretrain": {"method": method}})
        assert cfg.pretrain.epochs is None and pretrain_epochs(cfg.pretrain) == n
        assert with_pretrain_epochs(cfg).pretrain.epochs == n
        set_ = Config.model_validate({"pretrain": {"method": method, "epochs": 7}})
        assert pretrain_epochs(set_.pretrain) == 7
    demo = load_config(profile="demo")  # the demo keeps its own explicit epochs
    assert pretrain_epochs(demo.pretrain.model_copy(update={"method": "simclr"})) == 4


class _Stop(Exception):
    pass


@pytest.fixture
def fit_epochs(monkeypatch):
    """Engine.fit replaced by a recorder of the epochs it was given (nothing trains)."""
    seen: list[int] = []

    def fake_fit(self, task, loader, optimizer, scheduler=None, epochs=1, **kw):
        seen.append(epochs)
        raise _Stop

    monkeypatch.setattr(Engine, "fit", fake_fit)
    return seen


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("recipe"), n_studies=8)


def test_cli_pretrain_simclr_trains_520_by_default(data, tmp_path, fit_epochs):
    base = ["pretrain", "--data", str(data), "--device", "cpu", "--profile", "paper"]
    small = ["--set", "model.width=0.125", "--set", "runtime.workers=0"]
    for method, n in (("simclr", 520), ("echoclr", 300)):
        res = runner.invoke(
            cli.app, [*base, "--method", method, "--out", str(tmp_path / method), *small]
        )
        assert isinstance(res.exception, _Stop), res.output
        assert fit_epochs[-1] == n
        # the run records the resolved number (resume and `sweep` read it back)
        assert f"epochs: {n}" in (tmp_path / method / "config.yaml").read_text()
    res = runner.invoke(
        cli.app,
        [*base, "--method", "simclr", "--epochs", "3", "--out", str(tmp_path / "e3"), *small],
    )
    assert isinstance(res.exception, _Stop) and fit_epochs[-1] == 3


def test_sweep_paths_train_simclr_520(data, tmp_path, fit_epochs):
    """`sweep --pretrain-missing` and the command the sweep suggests both train SimCLR 520."""
    from echoclr_cli.pretrain.run import run_pretrain
    from echoclr_cli.sweep.inits import pretrain_command
    from echoclr_cli.sweep.run import _pretrain_missing

    cfg = load_config(
        profile="paper",
        overrides={"model": {"width": 0.125}, "runtime": {"device": "cpu", "workers": 0}},
    )

    class Spec:
        method, run_dir, status = "simclr", tmp_path / "sweep_simclr", "missing"

    class Plan:
        pretrain = [Spec()]

    with pytest.raises(_Stop):
        _pretrain_missing(cfg, Plan(), data, None, run_pretrain)
    assert fit_epochs[-1] == 520
    cmd = pretrain_command("simclr", data, tmp_path / "suggested")
    args = shlex.split(cmd)[1:]
    assert "--epochs" not in args
    res = runner.invoke(cli.app, [*args, "--device", "cpu", "--profile", "paper",
                                  "--set", "model.width=0.125", "--set", "runtime.workers=0"])  # fmt: skip
    assert isinstance(res.exception, _Stop), res.output
    assert fit_epochs[-1] == 520


def test_print_recipe_names_every_difference_and_exits(tmp_path):
    res = runner.invoke(
        cli.app,
        ["pretrain", "--method", "simclr", "--profile", "paper", "--print-recipe",
         "--set", "pretrain.temperature=0.1", "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = res.output
    line = next(x for x in out.splitlines() if x.startswith("pretrain.temperature"))
    assert "0.1" in line and "0.05" in line and "DIFFERS" in line
    line = next(x for x in out.splitlines() if x.startswith("pretrain.epochs"))
    assert "520" in line and "same" in line
    assert "runtime.precision" in out and "DIFFERS (deliberate)" in out
    assert not (tmp_path / "run").exists()  # nothing trained or written
    res = runner.invoke(cli.app, ["finetune", "--profile", "demo", "--print-recipe"])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("finetune.batch_size"))
    assert "DIFFERS" in line and "profile demo" in line
    line = next(x for x in res.output.splitlines() if x.startswith("finetune.label_smoothing"))
    assert "same" in line  # the demo keeps every published behaviour of issue 12's options
    assert "finetune.batch_size" in res.output and "pretrain.temperature" not in res.output


def test_format_recipe_counts_differences(paper):
    rows = recipe_rows(paper.model_copy(update={"pretrain": paper.pretrain.model_copy(
        update={"batch_size": 196})}), "pretrain")  # fmt: skip
    text = format_recipe(rows)
    assert "pretrain.batch_size" in text and "DIFFERS: set by config / flags" in text
    n = sum(r.status in ("changed", "deliberate") for r in rows)
    assert text.splitlines()[-1] == f"{n} value(s) differ from the published recipe"
    assert n == 2  # batch 196, plus the deliberate precision
