"""The paper profile trains the published recipe (docs/METHOD.md, "The published recipe, line by
line"): every value asserted here as a literal, so a changed default or a changed entry of the
recipe table (echoclr_cli/recipe.py) fails; method-specific epochs on every path; --print-recipe.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from helpers import make_dataset
from typer.testing import CliRunner

from echoclr_cli import cli
from echoclr_cli.config.load import load_config
from echoclr_cli.config.recipe import (
    RECIPE,
    format_recipe,
    get,
    notes_table,
    published_value,
    recipe_rows,
)
from echoclr_cli.config.schema import Config, pretrain_epochs, with_pretrain_epochs
from echoclr_cli.finetune.losses import pos_weight_value
from echoclr_cli.training.engine import Engine

runner = CliRunner()

# key -> the paper profile's value (= the published one except the documented differences)
PAPER = {
    "model.arch": "r3d_18",
    "model.width": 1.0,
    "model.proj_hidden": 256,
    "model.proj_dim": 128,
    "pretrain.batch_size": 392,  # GLOBAL: 2 GPUs x 196
    "pretrain.bn_group_size": 196,  # BatchNorm per 196-clip group: the 2 DataParallel replicas
    "pretrain.optim.optimizer": "adam",
    "pretrain.optim.learning_rate": 0.1,
    "pretrain.optim.weight_decay": 0.0,
    "pretrain.optim.schedule": "none",
    "pretrain.temperature": 0.05,
    "pretrain.clip_len": 4,
    "pretrain.stride": 1,
    "pretrain.reorder_frames": 4,
    "pretrain.reorder_head": "linear",
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
    "finetune.pos_weight": "published",  # max(1, n_neg / n_pos)
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
    "sweep.ratios": [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0],  # the run scripts' 7 fractions
    "sweep.select_metric": "val_auroc",  # study level; the published rule is unstated
    "evaluate.clips_per_video": 4,
    "evaluate.bootstrap": 1000,
    "evaluate.ci": 0.95,  # deliberate: the published 5-95 percentiles are a 90% interval
    "preprocess.size": 112,
    "runtime.precision": "auto",  # deliberate: bf16 autocast on CUDA, losses in fp32
    "runtime.sync_bn": False,
}
# the documented deliberate differences of the paper profile: key -> published value
DELIBERATE = {"evaluate.ci": 0.90, "runtime.precision": "fp32", "evaluate.bootstrap_unit": "item"}
# behaviours with no config key (the code always does ours): key -> (ours, published), as words
FIXED = {
    "augment.crop_offset": ("[0, 2*pad] = [0, 16]", "[0, 2*pad - 1] = [0, 15]"),
    "augment.rotation": ("bilinear", "cubic spline (scipy rotate, order 3)"),
    "pretrain.clip_start": ("random in [0, T-4]", "random in [0, T-5]"),
    "finetune.clip_start": ("random in [0, T-16]", "random in [0, T-17]"),
    "finetune.dropout_placement": (
        "before the linear head",
        "after the logit layer (zeroes logits)",
    ),
    "finetune.fraction_sampling": (
        "stratified by label, nested across fractions",
        "np.random.choice over study ids (a prefix of one permutation: nested, not stratified)",
    ),
    "finetune.val_loss_weighting": (
        "positive terms only, as in training",
        "every element x the positive weight (BCELoss(weight=...))",
    ),
    "finetune.task_column": ("the --task column", "LVH runs trained on the AS column"),
    "finetune.ssl_loading": (
        "strict; init.json lists loaded / missing / unexpected tensors",
        "strict=False, unchecked",
    ),
    "finetune.kinetics_channels": (
        "RGB frames, RGB statistics",
        "BGR frames normalised with RGB statistics",
    ),
    "pretrain.methods_reach_dataset": (
        "all three methods reach the dataset",
        "only plain SimCLR could run (switches not passed)",
    ),
    "preprocess.split_unit": ("random by patient", "random by study"),
    "evaluate.aupr": (
        "ap (step-wise) and aupr_trapz (the published number), named distinctly",
        "trapezoid under the PR curve",
    ),
}
UNSTATED = {"sweep.select_metric"}
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
    keys = {it.key for it in RECIPE if not it.fixed}
    assert keys == set(PAPER) | set(EVALPREP) | {"pretrain.epochs"}
    assert {it.key for it in RECIPE if it.fixed} == set(FIXED)
    assert {it.key for it in RECIPE if it.unstated} == UNSTATED
    for it in RECIPE:
        pub = published_value(it, paper)
        if it.fixed:
            assert it.why and (it.ours, pub) == FIXED[it.key], it.key
        elif it.unstated:
            assert not it.why and "not stated" in pub, it.key
        elif it.key in DELIBERATE:
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
    assert {k for k, r in rows.items() if r.status == "deliberate"} == set(DELIBERATE) | set(FIXED)
    assert {k for k, r in rows.items() if r.status == "unstated"} == UNSTATED


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
    # batch 196, plus the deliberate precision, crop offset, rotation, clip starts, methods
    # reaching the dataset and patient-level splits
    assert n == 7
    text = format_recipe(recipe_rows(paper, "finetune"))
    assert text.splitlines()[-1] == (
        "14 value(s) differ from the published recipe; 1 rule(s) the published scripts leave "
        "unstated"
    )


def _rows(cfg: Config, section: str) -> dict:
    return {r.key: r for r in recipe_rows(cfg, section)}


def test_every_item_of_issue_24_finding_4_is_printed_with_both_values_and_why(paper):
    """The printout said "same" for all of these (issue 24, finding 4)."""
    pre, fine = _rows(paper, "pretrain"), _rows(paper, "finetune")
    both = ["augment.crop_offset", "augment.rotation", "preprocess.split_unit"]
    for rows, keys in (
        (pre, [*both, "pretrain.clip_start"]),
        (fine, [*both, "finetune.clip_start", "finetune.dropout_placement",
                "finetune.fraction_sampling", "finetune.val_loss_weighting"]),
    ):  # fmt: skip
        for key in keys:
            r = rows[key]
            assert r.verdict == "differs" and r.value != r.published and r.note, key
    assert (pre["augment.crop_offset"].value, pre["augment.crop_offset"].published) == (
        "[0, 2*pad] = [0, 16]", "[0, 2*pad - 1] = [0, 15]")  # fmt: skip
    assert pre["pretrain.clip_start"].published == "random in [0, T-5]"
    # the published positive-class weight is the paper default; 0.75 is in the sweep
    assert fine["finetune.pos_weight"].verdict == "same"
    assert fine["finetune.pos_weight"].value == "published"
    assert 0.75 in fine["sweep.ratios"].value and fine["sweep.ratios"].verdict == "same"
    # the lr selection rule is stated; BatchNorm groups of 196 clips are stated
    sel = fine["sweep.select_metric"]
    assert sel.status == "unstated" and "study-level validation AUROC" in sel.note
    assert (
        pre["pretrain.bn_group_size"].value == 196
        and pre["pretrain.bn_group_size"].verdict == "same"
    )
    assert fine["evaluate.bootstrap_unit"].published == "item"


def test_published_values_are_values_the_config_accepts(paper):
    """A published value the config refuses (``bootstrap_unit: video``) could not be set."""
    for it in RECIPE:
        if it.fixed or it.unstated or callable(it.published):
            continue
        tree: dict = {}
        node = tree
        *parents, leaf = it.key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = it.published
        cfg = Config.model_validate(tree)
        assert recipe_rows(cfg) and get(cfg, it.key) == it.published, it.key


def test_paper_sweep_profile_runs_the_published_fractions():
    from importlib.resources import files

    sweep = yaml.safe_load((files("echoclr_cli") / "configs/sweep/paper.yaml").read_text())["sweep"]
    published = next(it.published for it in RECIPE if it.key == "sweep.ratios")
    assert sweep["ratios"] == published == [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0]
    assert sweep["select_metric"] == "val_auroc"


def test_published_positive_class_weight_is_never_below_one():
    """published: max(1, n_neg / n_pos) (the published scripts divided the balanced class
    weights by the smaller one); balanced (ours, an option): n_neg / n_pos."""
    assert pos_weight_value("published", n_pos=25, n_neg=75) == 3.0
    assert pos_weight_value("published", n_pos=75, n_neg=25) == 1.0  # positives the majority
    assert pos_weight_value("balanced", n_pos=75, n_neg=25) == pytest.approx(1 / 3)
    assert Config().finetune.pos_weight == "published"


NOTES = Path(__file__).resolve().parents[1] / "docs" / "METHOD_NOTES.md"
NOTES_HEADING = "## Every item of --print-recipe"


def _notes_table() -> dict[str, tuple[str, str, str]]:
    """``key -> (paper profile, published, verdict)`` from METHOD_NOTES' machine-checked table."""
    text = NOTES.read_text()
    assert NOTES_HEADING in text, f"docs/METHOD_NOTES.md lost its section '{NOTES_HEADING}'"
    rows = {}
    for line in text.split(NOTES_HEADING, 1)[1].splitlines():
        if line.startswith("## "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2], cells[3])
    return rows


def test_method_notes_and_the_printout_agree_on_what_differs(paper):
    """docs/METHOD_NOTES.md keeps the table of every printed item with same / differs /
    unstated; it must say what the printout says (regenerate: recipe.notes_table)."""
    rows = recipe_rows(paper)
    want = {r.key: (str(r.value), str(r.published), r.verdict) for r in rows}
    got = _notes_table()
    hint = "\nthe table the printout gives:\n" + notes_table(rows)
    assert {k: v[2] for k, v in got.items()} == {k: v[2] for k, v in want.items()}, hint
    for key, (value, published, _) in want.items():
        assert got[key][:2] == (value.replace("|", "/"), published.replace("|", "/")), key + hint
