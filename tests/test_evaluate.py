"""`echoclr evaluate`: the model rebuilt from a run, splits from evaluate.splits, one folder per
evaluation under RUN/eval/, nothing written before every argument is checked."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import make_dataset, tiny_finetune_config
from sklearn.metrics import roc_auc_score

from echoclr_cli import rundir
from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.finetune.run import run_finetune
from echoclr_cli.inference.evaluate import eval_name, evaluate_run
from echoclr_cli.schema import RESULT_COLUMNS, RUN_COLUMNS


def tiny_cfg(**sections) -> Config:
    return tiny_finetune_config(epochs=1, **sections)


def with_ext_test(data: Path, dst: Path) -> Path:
    """A copy of ``data`` whose last test patient is an external (ext_test) cohort."""
    shutil.copytree(data, dst)
    man = pd.read_csv(dst / "manifest.csv")
    last = sorted(man.loc[man["split"] == "test", "patient_id"].unique())[-1]
    man.loc[man["patient_id"] == last, "split"] = "ext_test"
    man.to_csv(dst / "manifest.csv", index=False)
    return dst


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (the set of files included)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = with_ext_test(make_dataset(root, n_studies=16), root / "data_ext")
    run_finetune(tiny_cfg(), data, root / "a")
    run_finetune(tiny_cfg(runtime={"seed": 1}), data, root / "b")
    return data, root / "a", root / "b"


def test_evaluate_run_rebuilds_the_model_and_matches_the_run(runs, tmp_path):
    data, run_a, _ = runs
    # data from finetune.json
    res = evaluate_run(tiny_cfg(), run_a, None, ["test"], out_dir=tmp_path / "ev")
    assert res.checkpoint.name == "best.pt" and res.splits == ["val", "test"]
    own = json.loads((run_a / "metrics.json").read_text())
    assert res.metrics["test"]["study"]["auroc"]["value"] == pytest.approx(
        own["test"]["study"]["auroc"]["value"]
    )
    pred = pd.read_csv(tmp_path / "ev" / "predictions_test_study.csv")
    assert res.metrics["test"]["study"]["auroc"]["value"] == pytest.approx(
        roc_auc_score(pred["y_true"], pred["y_prob"])
    )
    # a results.csv row less the run's own columns (the sweep adds those)
    assert set(res.table.columns) == set(RESULT_COLUMNS) - set(RUN_COLUMNS)
    assert (tmp_path / "ev" / "metrics.json").exists() and res.comparison is None
    info = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert info["splits"] == ["val", "test"] and info["checkpoint"] == "best.pt"


def test_the_task_is_recorded_and_a_run_without_the_record_reads_the_same(runs, tmp_path):
    """finetune records the Task in RUN/task.json; a run dir from before the record (no
    task.json, no classes.json) is read as the same binary task and evaluates the same."""
    from echoclr_cli.inference.run import TASK_FILE, Task, read_task

    data, run_a, _ = runs
    task = tiny_cfg().finetune.task
    assert json.loads((run_a / TASK_FILE).read_text()) == {
        "column": task, "kind": "binary", "classes": [f"no {task}", task]
    }  # fmt: skip
    assert read_task(run_a) == Task.binary(task) and read_task(run_a).n_outputs == 1
    old = tmp_path / "old"
    shutil.copytree(run_a, old, ignore=shutil.ignore_patterns("eval"))
    (old / TASK_FILE).unlink()
    assert read_task(old) == read_task(run_a)
    new_ev = evaluate_run(tiny_cfg(), run_a, data, ["test"], out_dir=tmp_path / "new_ev")
    old_ev = evaluate_run(tiny_cfg(), old, data, ["test"], out_dir=tmp_path / "old_ev")
    assert old_ev.metrics == new_ev.metrics
    (old / TASK_FILE).write_text("{}")
    with pytest.raises(UserError, match="names no task kind"):
        read_task(old)


def test_evaluate_compare_gives_the_paired_difference(runs, tmp_path):
    data, run_a, run_b = runs
    res = evaluate_run(tiny_cfg(), run_a, data, ["test"], compare=run_b, out_dir=tmp_path / "ev")
    cmp = res.comparison["splits"]["test"]["study"]
    assert cmp["diff"] == pytest.approx(cmp["auroc_a"] - cmp["auroc_b"])
    assert cmp["auroc_a"] == pytest.approx(res.metrics["test"]["study"]["auroc"]["value"])
    assert {"diff", "ci_low", "ci_high", "p_value"} <= set(cmp["bootstrap"])
    assert "delong" in cmp and cmp["n"] == len(res.predictions["test"]["study"])
    assert json.loads((tmp_path / "ev" / "comparison.json").read_text())["run_b"] == str(run_b)
    same = evaluate_run(tiny_cfg(), run_a, data, ["test"], compare=run_a, out_dir=tmp_path / "ev2")
    s = same.comparison["splits"]["test"]["study"]
    assert s["diff"] == 0 and s["bootstrap"]["p_value"] == 1.0


def test_evaluate_refuses_absent_split_and_other_task(runs, tmp_path):
    data, run_a, _ = runs
    plain = make_dataset(tmp_path / "plain", n_studies=16)  # no ext_test
    with pytest.raises(UserError, match="ext_test"):
        evaluate_run(tiny_cfg(), run_a, plain, ["ext_test"], out_dir=tmp_path / "ev")
    with pytest.raises(UserError, match="unknown split"):
        evaluate_run(tiny_cfg(), run_a, data, ["tset"], out_dir=tmp_path / "ev")
    lvh = tmp_path / "lvh"
    run_finetune(tiny_cfg(finetune={"task": "lvh", "epochs": 1}), data, lvh)
    with pytest.raises(UserError, match="different tasks"):
        evaluate_run(tiny_cfg(), run_a, data, ["test"], compare=lvh, out_dir=tmp_path / "ev3")
    with pytest.raises(UserError, match="config.yaml"):
        evaluate_run(tiny_cfg(), tmp_path, data, ["test"])
    assert not (tmp_path / "ev").exists() and not (tmp_path / "ev3").exists()


def test_evaluate_all_clips(runs, tmp_path):
    data, run_a, _ = runs
    res = evaluate_run(
        tiny_cfg(evaluate={"clips_per_video": "all", "block_size": 3}),
        run_a,
        data,
        ["test"],
        out_dir=tmp_path / "ev",
    )
    assert (res.predictions["test"]["video"]["n_clips"] > 2).all()


# --------------------------------------------------------------------------- splits from the config
def test_default_splits_come_from_evaluate_splits(runs, tmp_path):
    data, run_a, _ = runs
    res = evaluate_run(tiny_cfg(evaluate={"splits": ["ext_test"]}), run_a, out_dir=tmp_path / "x")
    assert res.splits == ["val", "ext_test"] and "test" not in res.metrics
    res = evaluate_run(tiny_cfg(), run_a, out_dir=tmp_path / "both")  # default: test, ext_test
    assert res.splits == ["val", "test", "ext_test"] and not res.notes
    # a configured split the dataset lacks is skipped with a note (an explicit one is refused)
    plain = make_dataset(tmp_path / "plain", n_studies=16)
    res = evaluate_run(tiny_cfg(), run_a, plain, out_dir=tmp_path / "plain_ev")
    assert res.splits == ["val", "test"]
    assert any("evaluate.splits ['ext_test']" in n for n in res.notes)


# --------------------------------------------------------------------------- never clobber
def test_evaluate_writes_its_own_folder_and_leaves_the_finetune_results(runs):
    data, run_a, _ = runs
    own = json.loads((run_a / rundir.METRICS).read_text())
    assert {"val", "test", "ext_test"} <= set(own)  # the fine-tune evaluated every split
    before = {k: v for k, v in tree_digest(run_a).items() if not k.startswith("eval/")}
    res = evaluate_run(tiny_cfg(), run_a, None, ["test"])
    assert res.out_dir == run_a / "eval" / "test" == rundir.eval_dir(run_a, res.name)
    after = {k: v for k, v in tree_digest(run_a).items() if not k.startswith("eval/")}
    assert after == before  # metrics.json (with ext_test), predictions, plots: untouched
    assert set(json.loads((res.out_dir / "metrics.json").read_text())) >= {"val", "test"}
    # a narrower evaluation does not replace a wider one: each has its own folder
    wide = evaluate_run(tiny_cfg(), run_a, None, ["test", "ext_test"])
    assert wide.out_dir.name == "test+ext_test" and (res.out_dir / "metrics.json").exists()
    # the same evaluation again replaces its own files only (issue 23 case 8: it used to
    # delete the folder, a file the user had added included)
    (res.out_dir / "notes.txt").write_text("mine")
    again = evaluate_run(tiny_cfg(), run_a, None, ["test"])
    assert again.out_dir == res.out_dir and (res.out_dir / "notes.txt").read_text() == "mine"
    assert not [p for p in (run_a / "eval").iterdir() if p.name.startswith(".")]
    assert not [p for p in res.out_dir.iterdir() if p.name.startswith(".echoclr-stage")]
    named = evaluate_run(tiny_cfg(), run_a, None, ["test"], name="mine")
    assert named.out_dir == run_a / "eval" / "mine"


def test_eval_names():
    assert eval_name(["test"]) == "test"
    assert (
        eval_name(["test", "ext_test"], "other_data", "run b")
        == "test+ext_test_other_data_vs-run-b"
    )


def test_nothing_is_written_before_every_argument_is_checked(runs, tmp_path):
    data, run_a, _ = runs
    before = tree_digest(run_a)
    with pytest.raises(UserError, match="nonexistent"):
        evaluate_run(tiny_cfg(), run_a, data, ["test"], compare=tmp_path / "nonexistent")
    with pytest.raises(UserError, match="--name"):
        evaluate_run(tiny_cfg(), run_a, data, ["test"], name="../escape")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not an earlier `echoclr evaluate` output"):
        evaluate_run(tiny_cfg(), run_a, data, ["test"], out_dir=foreign)
    with pytest.raises(UserError, match="not an earlier"):
        evaluate_run(tiny_cfg(), run_a, data, ["test"], out_dir=run_a)  # the run dir itself
    assert tree_digest(run_a) == before and (foreign / "notes.txt").read_text() == "keep"
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_a_failure_while_writing_keeps_the_previous_folder(runs, tmp_path, monkeypatch):
    from echoclr_cli.inference import write as write_mod

    data, run_a, _ = runs
    first = evaluate_run(tiny_cfg(), run_a, data, ["test"], out_dir=tmp_path / "ev")
    before = tree_digest(first.out_dir)

    def broken(*args, **kwargs):
        raise OSError("disk went away")

    monkeypatch.setattr(write_mod, "write_predictions", broken)
    with pytest.raises(OSError, match="disk went away"):
        evaluate_run(tiny_cfg(), run_a, data, ["test"], out_dir=tmp_path / "ev")
    assert tree_digest(first.out_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev"]  # no temporary folder left
