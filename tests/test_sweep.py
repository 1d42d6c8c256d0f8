"""Sweep: planning, idempotence, sharding, interruption, model selection, inits, tables.

Fast tests inject a fake fine-tune (`FakeFinetune`) that writes a plausible run dir in
milliseconds (config.yaml, checkpoints/last.pt, history.csv, metrics.json) and behaves like the
engine about run dirs (refuses a non-empty dir without overwrite/resume, refuses a resume whose
config changed). One slow test runs the real fine-tune on a tiny dataset.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import yaml

from echoclr_cli.config.load import config_to_dict, diff_configs, load_config, save_config
from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.events import Epoch, Eta, Note, RunStart
from echoclr_cli.io import atomic_write_json
from echoclr_cli.models.checkpoint import prepare_run_dir
from echoclr_cli.schema import RESULT_COLUMNS
from echoclr_cli.sweep import (
    aggregate,
    fmt_number,
    parse_shard,
    plan_sweep,
    results_table,
    run_config,
    run_dir_name,
    run_sweep,
    shard_runs,
)
from tests.helpers import make_dataset

ONE_CLASS_LR = 5e-4  # the fake gives these runs a one-class val split (and the best test AUROC)


class Interrupted(Exception):
    """Stands in for a kill during training (not a UserError, so the sweep stops)."""


class FakeFinetune:
    """``run_finetune`` stand-in: deterministic metrics from (task, init, frac, lr, seed)."""

    def __init__(
        self,
        fail_after: int | None = None,
        user_error_for: str | None = None,
        all_one_class: tuple[str, float] | None = None,
    ):
        self.calls: list[dict] = []
        self.fail_after = fail_after
        self.user_error_for = user_error_for
        self.all_one_class = all_one_class  # (init, ratio) whose every LR has a one-class val

    def __call__(self, cfg: Config, data_dir: Path, out_dir: Path, **opts):
        """Stands in for run_finetune; reads the options the sweep passes."""
        resume, overwrite = opts.get("resume", False), opts.get("overwrite", False)
        progress = opts.get("progress")
        out_dir = Path(out_dir)
        ft = cfg.finetune
        self.calls.append({"run": out_dir, "resume": resume, "overwrite": overwrite, "cfg": cfg})
        prepare_run_dir(out_dir, resume, overwrite)
        if resume:  # like the engine: the config must not have changed
            old = yaml.safe_load((out_dir / "config.yaml").read_text())
            changed = [
                k for k in diff_configs(old, config_to_dict(cfg)) if not k.startswith("paths.")
            ]
            assert not changed, changed
        save_config(cfg, out_dir / "config.yaml")
        (out_dir / "checkpoints").mkdir(exist_ok=True)
        (out_dir / "checkpoints" / "last.pt").write_bytes(b"fake")
        if self.fail_after is not None and len(self.calls) > self.fail_after:
            raise Interrupted(f"killed while training {out_dir}")
        if self.user_error_for and self.user_error_for in str(out_dir):
            raise UserError(f"no positive study at frac {ft.frac}", fix="use a larger ratio")
        if progress is not None:
            progress(Epoch(epoch=1, epochs=1, row={"epoch": 1}))
        # the tested weights are epoch 2's (finetune.json), not the lowest val loss (epoch 3)
        pd.DataFrame(
            {
                "epoch": [1, 2, 3],
                "val_loss": [0.7, 0.6, 0.55],
                "val_auroc": [0.6, 0.7, 0.68],
                "seconds": [1.0, 1.0, 1.0],
            }
        ).to_csv(out_dir / "history.csv", index=False)
        atomic_write_json(out_dir / "finetune.json", {"best_epoch": 2})
        atomic_write_json(out_dir / "metrics.json", self.metrics(cfg))
        return {"run_dir": out_dir}

    def metrics(self, cfg: Config) -> dict:
        ft = cfg.finetune
        init = Path(ft.init).name
        lr = ft.optim.learning_rate
        h = int(
            hashlib.sha256(
                f"{ft.task}|{init}|{ft.frac}|{lr}|{cfg.runtime.seed}".encode()
            ).hexdigest(),
            16,
        )
        jitter = (h % 1000) / 1e4  # 0 .. 0.1, stable
        base = {"random": 0.55, "kinetics": 0.6, "simclr": 0.62, "mi-simclr": 0.66, "echoclr": 0.7}[
            init
        ]
        one_class = math.isclose(lr, ONE_CLASS_LR) or (
            self.all_one_class is not None and (init, ft.frac) == self.all_one_class
        )
        val = None if one_class else base + 0.2 * ft.frac + jitter

        def cell(v: float | None, n: int = 10) -> dict:
            lo = None if v is None else v - 0.05
            hi = None if v is None else v + 0.05
            return {"value": v, "ci_low": lo, "ci_high": hi, "n": n}

        def level(v: float | None) -> dict:
            return {
                "auroc": cell(v),
                "ap": cell(None if v is None else v - 0.1),
                "aupr_trapz": cell(None if v is None else v - 0.11),
            }

        test = 0.99 if one_class else base + 0.2 * ft.frac + jitter / 2
        out = {"val": {"video": level(val), "study": level(val)}, "thresholds": {}, "reasons": {}}
        if one_class:
            out["reasons"]["val"] = {"study": {"auroc": "one class in y_true (all 0)"}}
        for split in cfg.evaluate.splits:
            out[split] = {"video": level(test - 0.01), "study": level(test)}
        return out


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """20 studies; half of the test patients moved to ext_test (patient-level, no leakage)."""
    data = make_dataset(
        tmp_path_factory.mktemp("sweepdata"),
        n_studies=20,
        videos_per_study=(1, 1),
        frames=(16, 16),
        size=16,
    )
    df = pd.read_csv(data / "manifest.csv")
    test_patients = sorted(df.loc[df["split"] == "test", "patient_id"].unique())
    df.loc[df["patient_id"].isin(test_patients[: max(1, len(test_patients) // 2)]), "split"] = (
        "ext_test"
    )
    df.to_csv(data / "manifest.csv", index=False)
    return data


def make_pretrain_runs(root: Path, methods=("simclr", "echoclr"), width: float = 1.0) -> Path:
    for m in methods:
        run = root / m
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints" / "last.pt").write_bytes(b"ssl")
        cfg = Config()
        cfg.model.width = width
        cfg.pretrain.epochs = 2
        save_config(cfg, run / "config.yaml")
        pd.DataFrame({"epoch": [1, 2], "loss": [1.0, 0.9]}).to_csv(run / "history.csv", index=False)
    return root


@pytest.fixture
def cfg(tmp_path) -> Config:
    c = Config()
    c.sweep.tasks = ["as", "lvh"]
    c.sweep.ratios = [0.05, 0.1, 0.5, 1.0]
    c.sweep.inits = ["random", "simclr", "echoclr"]
    c.sweep.pretrain_dir = make_pretrain_runs(tmp_path / "pretrain")
    c.sweep.seeds = [0]
    c.evaluate.plots = False  # figures are drawn in one test only (they dominate the time)
    return c


def read_bytes_sorted(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join([lines[0], *sorted(lines[1:])])


# --------------------------------------------------------------------------- planning
def test_plan_grid_names_and_overrides(cfg, data_dir, tmp_path):
    plan = plan_sweep(cfg, data_dir, tmp_path / "sweep")
    # 2 tasks x 3 inits x (2 low ratios x 3 lrs + 2 ratios x 1 lr) x 1 seed
    assert len(plan.runs) == 2 * 3 * 8
    assert [r.index for r in plan.runs] == list(range(len(plan.runs)))
    assert plan.inits == ["random", "simclr", "echoclr"]
    assert plan.splits == ["test", "ext_test"]
    assert plan.counts() == {"done": 0, "partial": 0, "pending": 48}
    # nothing finished: no estimate is made up (it is measured once a run finishes)
    assert plan.estimate_source == "none" and math.isnan(plan.pending_seconds())
    assert "measured once the first run finishes" in plan.summary()[0]
    lrs = {r.ratio: sorted({x.lr for x in plan.runs if x.ratio == r.ratio}) for r in plan.runs}
    assert lrs == {0.05: [1e-5, 1e-4, 5e-4], 0.1: [1e-5, 1e-4, 5e-4], 0.5: [1e-4], 1.0: [1e-4]}
    r = next(x for x in plan.runs if x.init == "echoclr" and x.ratio == 0.05 and x.lr == 1e-5)
    assert r.run_dir == "runs/as/echoclr/r0.05_lr1e-05_s0"
    assert r.init_source == str((tmp_path / "pretrain" / "echoclr").resolve())
    rc = run_config(cfg, r, data_dir)
    assert (rc.finetune.task, rc.finetune.init, rc.finetune.frac) == ("as", r.init_source, 0.05)
    assert rc.finetune.frac_seed == 0 and rc.runtime.seed == 0
    assert rc.finetune.optim.learning_rate == 1e-5
    assert rc.evaluate.splits == ["test", "ext_test"]
    n_train = pd.read_csv(data_dir / "manifest.csv").query("split == 'train'")["study_id"].nunique()
    full = next(x for x in plan.runs if x.ratio == 1.0)
    assert full.n_studies == n_train
    assert 2 <= r.n_studies < n_train  # int(0.05 * N) = 0, extended to hold both classes
    assert plan.frame().shape[0] == 48
    assert not (tmp_path / "sweep").exists()  # planning writes nothing


def test_low_ratio_seeds_apply_at_low_ratios_only(cfg, data_dir, tmp_path):
    cfg.sweep.tasks = ["as"]
    cfg.sweep.inits = ["random"]
    cfg.sweep.seeds = [0]
    cfg.sweep.low_ratio_seeds = [0, 1, 2]
    plan = plan_sweep(cfg, data_dir, tmp_path / "sweep")
    seeds = {r.ratio: sorted({x.seed for x in plan.runs if x.ratio == r.ratio}) for r in plan.runs}
    assert seeds == {0.05: [0, 1, 2], 0.1: [0, 1, 2], 0.5: [0], 1.0: [0]}
    # 2 low ratios x 3 lrs x 3 seeds + 2 ratios x 1 lr x 1 seed
    assert len(plan.runs) == 2 * 3 * 3 + 2
    cfg.sweep.low_ratio_seeds = None  # unset: every ratio uses sweep.seeds
    assert {x.seed for x in plan_sweep(cfg, data_dir, tmp_path / "sweep").runs} == {0}
    cfg.sweep.low_ratio_seeds = []
    with pytest.raises(UserError, match="low_ratio_seeds"):
        plan_sweep(cfg, data_dir, tmp_path / "sweep")


def test_names_are_stable_and_safe():
    assert (
        fmt_number(1e-4) == "0.0001" and fmt_number(1e-5) == "1e-05" and fmt_number(0.01) == "0.01"
    )
    assert run_dir_name("as", "mi-simclr", 0.25, 5e-4, 2) == "runs/as/mi-simclr/r0.25_lr0.0005_s2"
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(UserError):
            parse_shard(bad)


def test_dry_run_writes_nothing_then_uses_history(cfg, data_dir, tmp_path):
    out = tmp_path / "sweep"
    fake = FakeFinetune()
    res = run_sweep(cfg=cfg, data_dir=data_dir, out_dir=out, dry_run=True, finetune_fn=fake)
    assert res.dry_run and not out.exists() and fake.calls == []
    assert len(res.assigned) == 48
    cfg.sweep.ratios = [0.5]
    run_sweep(cfg=cfg, data_dir=data_dir, out_dir=out, finetune_fn=fake)
    cfg.sweep.ratios = [0.5, 1.0]
    plan = plan_sweep(cfg, data_dir, out)
    assert plan.counts() == {"done": 6, "partial": 0, "pending": 6}
    assert plan.estimate_source == "history"
    text = "\n".join(plan.summary())
    assert "12 runs (6 done, 0 to resume, 6 to train)" in text
    assert "measured on 6 finished runs" in text
    assert "init simclr: found" in text
    done = [r for r in plan.runs if r.status == "done"]
    assert all(3.0 <= r.est_seconds < 4.0 for r in done)  # history seconds + evaluation span
    # pending: 1 s per epoch for n_done studies -> 1/n_done s per study-epoch, 30 epochs
    pending = next(r for r in plan.runs if r.status == "pending")
    rate = 1.0 / done[0].n_studies
    assert pending.est_seconds == pytest.approx(
        rate * pending.n_studies * cfg.finetune.epochs, abs=1.0
    )


# --------------------------------------------------------------------------- idempotence, shards, resume
def test_rerun_trains_nothing_and_results_identical(cfg, data_dir, tmp_path):
    out = tmp_path / "sweep"
    cfg.evaluate.plots = True
    cfg.sweep.tasks = ["as"]
    fake = FakeFinetune()
    first = run_sweep(cfg=cfg, data_dir=data_dir, out_dir=out, finetune_fn=fake)
    assert len(fake.calls) == 24 and len(first.trained) == 24 and not first.failed
    files = ["results.csv", "selection.csv", "plan.csv", "sweep.yaml", "table_auroc_as_test.csv"]
    before = {f: (out / f).read_bytes() for f in files}
    again = FakeFinetune()
    second = run_sweep(cfg=cfg, data_dir=data_dir, out_dir=out, finetune_fn=again)
    assert again.calls == [] and second.trained == []
    assert second.plan.counts()["done"] == 24
    after = {f: (out / f).read_bytes() for f in files if f != "plan.csv"}
    assert all(after[f] == before[f] for f in after)
    for key, table in first.tables.items():
        pd.testing.assert_frame_equal(table.text, second.tables[key].text)
    assert {p.name for p in second.figures} == {
        "label_efficiency_as_test.png",
        "label_efficiency_as_ext_test.png",
    }
    res, tables = aggregate(out, cfg)
    pd.testing.assert_frame_equal(res, second.results)
    assert set(tables) == set(second.tables)


def test_shards_partition_and_match_unsharded(cfg, data_dir, tmp_path):
    sharded, whole = tmp_path / "sharded", tmp_path / "whole"
    fakes = [FakeFinetune(), FakeFinetune(), FakeFinetune()]
    a = run_sweep(cfg=cfg, data_dir=data_dir, out_dir=sharded, shard=(0, 2), finetune_fn=fakes[0])
    b = run_sweep(cfg=cfg, data_dir=data_dir, out_dir=sharded, shard=(1, 2), finetune_fn=fakes[1])
    run_sweep(cfg=cfg, data_dir=data_dir, out_dir=whole, finetune_fn=fakes[2])
    runs_a = {c["run"] for c in fakes[0].calls}
    runs_b = {c["run"] for c in fakes[1].calls}
    assert not runs_a & runs_b and len(runs_a) + len(runs_b) == 48
    assert {r.index % 2 for r in a.assigned} == {0} and {r.index % 2 for r in b.assigned} == {1}
    assert read_bytes_sorted(sharded / "results.csv") == read_bytes_sorted(whole / "results.csv")
    assert (sharded / "results.csv").read_bytes() == (whole / "results.csv").read_bytes()


def test_shard_assignment_ignores_done_state(cfg, data_dir, tmp_path):
    out = tmp_path / "sweep"
    plan0 = plan_sweep(cfg, data_dir, out)
    before = [r.run_dir for r in shard_runs(plan0.runs, (1, 3))]
    run_sweep(cfg=cfg, data_dir=data_dir, out_dir=out, shard=(0, 3), finetune_fn=FakeFinetune())
    plan1 = plan_sweep(cfg, data_dir, out)
    assert [r.run_dir for r in shard_runs(plan1.runs, (1, 3))] == before
    with pytest.raises(UserError):
        shard_runs(plan1.runs, (3, 3))


def test_interrupted_sweep_resumes_and_equals_uninterrupted(cfg, data_dir, tmp_path):
    """FAULTS.md 26: finished runs are not trained again; the tables equal an uninterrupted sweep's."""
    out, ref = tmp_path / "sweep", tmp_path / "ref"
    crash = FakeFinetune(fail_after=5)
    with pytest.raises(Interrupted):
        run_sweep(cfg=cfg, data_dir=data_dir, out_dir=out, finetune_fn=crash)
    killed = crash.calls[-1]["run"]
    assert (killed / "checkpoints" / "last.pt").exists() and not (killed / "metrics.json").exists()
    plan = plan_sweep(cfg, data_dir, out)
    assert plan.counts() == {"done": 5, "partial": 1, "pending": 42}
    cont = FakeFinetune()
    run_sweep(cfg=cfg, data_dir=data_dir, out_dir=out, finetune_fn=cont)
    assert len(cont.calls) == 43  # the 5 finished runs are not trained again
    resumed = [c for c in cont.calls if c["resume"]]
    assert [c["run"] for c in resumed] == [killed]
    run_sweep(cfg=cfg, data_dir=data_dir, out_dir=ref, finetune_fn=FakeFinetune())
    for f in (
        "results.csv",
        "selection.csv",
        "table_auroc_lvh_ext_test.csv",
        "table_ap_as_test.csv",
    ):
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f


def test_leftover_dir_without_checkpoint_is_restarted_with_overwrite(cfg, data_dir, tmp_path):
    out = tmp_path / "sweep"
    cfg.sweep.ratios = [1.0]
    cfg.sweep.tasks = ["as"]
    cfg.sweep.inits = ["random"]
    leftover = out / run_dir_name("as", "random", 1.0, 1e-4, 0)
    leftover.mkdir(parents=True)
    (leftover / "config.yaml").write_text("died before the first checkpoint\n")
    fake = FakeFinetune()
    run_sweep(cfg=cfg, data_dir=data_dir, out_dir=out, finetune_fn=fake)
    assert [(c["resume"], c["overwrite"]) for c in fake.calls] == [(False, True)]
    assert (leftover / "metrics.json").exists()


# --------------------------------------------------------------------------- selection
def test_selection_never_picks_one_class_val(cfg, data_dir, tmp_path):
    """FAULTS.md 15: a run with a one-class val split (AUROC undefined) is never selected."""
    out = tmp_path / "sweep"
    res = run_sweep(
        cfg=cfg,
        data_dir=data_dir,
        out_dir=out,
        finetune_fn=FakeFinetune(all_one_class=("simclr", 0.1)),
    )
    sel = res.selection
    assert len(sel) == 2 * 3 * 4
    chosen = sel[sel["run_dir"] != ""]
    assert not (chosen["lr"] == ONE_CLASS_LR).any()  # its test AUROC (0.99) would win otherwise
    assert (res.results["value"] < 0.99).all()
    empty = sel[(sel["init"] == "simclr") & (sel["ratio"] == 0.1)]
    assert (empty["run_dir"] == "").all() and empty["reason"].str.contains("one-class").all()
    assert not ((res.results["init"] == "simclr") & (res.results["ratio"] == 0.1)).any()
    low = chosen[chosen["ratio"] == 0.05]
    assert low["reason"].str.contains("1 one-class val run").all()
    # the selected run has the best val AUROC among the defined ones
    for row in low.itertuples():
        vals = []
        for lr in (1e-5, 1e-4):
            m = json.loads(
                (out / run_dir_name(row.task, row.init, 0.05, lr, 0) / "metrics.json").read_text()
            )
            vals.append((m["val"]["study"]["auroc"]["value"], lr))
        assert row.lr == max(vals)[1]
    # results carry the selected run's LR and its test metrics only
    r = res.results
    one = r[(r["task"] == "as") & (r["init"] == "echoclr") & (r["ratio"] == 0.05)]
    assert set(one["lr"]) == {
        float(low[(low["task"] == "as") & (low["init"] == "echoclr")]["lr"].iloc[0])
    }
    assert set(one["split"]) == {"test", "ext_test"} and set(one["level"]) == {"video", "study"}
    assert list(r.columns[:6]) == ["task", "init", "ratio", "n_studies", "seed", "lr"]


def test_selection_by_val_loss_and_ties(cfg, data_dir, tmp_path):
    cfg.sweep.select_metric = "val_loss"
    cfg.sweep.ratios = [0.05]
    cfg.sweep.tasks = ["as"]
    cfg.sweep.inits = ["random"]
    res = run_sweep(
        cfg=cfg, data_dir=data_dir, out_dir=tmp_path / "sweep", finetune_fn=FakeFinetune()
    )
    # every fake run has the same val loss at its best epoch (0.6): tie -> higher val AUROC
    row = res.selection.iloc[0]
    assert row["val_loss"] == pytest.approx(0.6) and row["lr"] in (1e-5, 1e-4)
    other = 1e-4 if row["lr"] == 1e-5 else 1e-5
    m = json.loads(
        (
            tmp_path / "sweep" / run_dir_name("as", "random", 0.05, other, 0) / "metrics.json"
        ).read_text()
    )
    assert row["val_auroc"] >= m["val"]["study"]["auroc"]["value"]


def test_partial_cell_waits_for_all_lrs(cfg, data_dir, tmp_path):
    cfg.sweep.ratios = [0.05]
    cfg.sweep.tasks = ["as"]
    cfg.sweep.inits = ["random"]
    out = tmp_path / "sweep"
    res = run_sweep(
        cfg=cfg, data_dir=data_dir, out_dir=out, shard=(0, 3), finetune_fn=FakeFinetune()
    )
    assert res.selection["reason"].iloc[0] == "waiting for 2 of 3 runs"
    assert res.results.empty
    assert (out / "results.csv").exists()


def test_failed_run_is_recorded_and_others_finish(cfg, data_dir, tmp_path):
    cfg.sweep.tasks = ["as"]
    fake = FakeFinetune(user_error_for="random/r0.05_lr1e-05")
    res = run_sweep(cfg=cfg, data_dir=data_dir, out_dir=tmp_path / "sweep", finetune_fn=fake)
    assert len(res.failed) == 1 and "no positive study" in res.failed[0][1]
    assert len(res.trained) == 23
    cell = res.selection[(res.selection["init"] == "random") & (res.selection["ratio"] == 0.05)]
    assert cell["reason"].iloc[0].startswith("waiting for 1 of 3 runs (1 failed: no positive study")
    # the next sweep retries the failed run (it had a checkpoint: resumed) and the cell is selected
    again = FakeFinetune()
    res2 = run_sweep(cfg=cfg, data_dir=data_dir, out_dir=tmp_path / "sweep", finetune_fn=again)
    assert [(c["run"].name, c["resume"]) for c in again.calls] == [("r0.05_lr1e-05_s0", True)]
    assert not res2.failed and (res2.selection["run_dir"] != "").all()
    assert not list((tmp_path / "sweep").rglob("sweep_error.txt"))


def test_sweep_refuses_torchrun(cfg, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="torchrun"):
        run_sweep(
            cfg=cfg, data_dir=data_dir, out_dir=tmp_path / "sweep", finetune_fn=FakeFinetune()
        )


# --------------------------------------------------------------------------- inits
def test_missing_ssl_init_names_the_pretrain_command(cfg, data_dir, tmp_path):
    cfg.sweep.inits = ["random", "mi-simclr", "echoclr"]
    with pytest.raises(UserError) as e:
        plan_sweep(cfg, data_dir, tmp_path / "sweep")
    root = (tmp_path / "pretrain").resolve()
    cmd = f"echoclr pretrain --method mi-simclr --data {data_dir.resolve()} --out {root / 'mi-simclr'}"
    assert cmd in str(e.value) and "--pretrain-missing" in str(e.value)
    cfg.sweep.inits = ["nosuchrun"]
    with pytest.raises(UserError, match="nosuchrun"):
        plan_sweep(cfg, data_dir, tmp_path / "sweep")


def test_unfinished_or_other_model_pretrain_run_refused(cfg, data_dir, tmp_path):
    root = tmp_path / "pretrain"
    cfg.sweep.inits = ["echoclr"]
    pd.DataFrame({"epoch": [1], "loss": [1.0]}).to_csv(
        root / "echoclr" / "history.csv", index=False
    )
    with pytest.raises(UserError) as e:
        plan_sweep(cfg, data_dir, tmp_path / "sweep")
    assert "stopped at epoch 1 of 2" in str(e.value) and "--resume" in str(e.value)
    make_pretrain_runs(root, ("echoclr",), width=0.5)
    with pytest.raises(UserError, match="model.width 0.5"):
        plan_sweep(cfg, data_dir, tmp_path / "sweep")


def test_kinetics_without_weights_says_where_to_put_them(cfg, data_dir, tmp_path):
    cfg.sweep.inits = ["random", "kinetics"]
    cfg.finetune.weights = tmp_path / "weights" / "r3d_18-b3b3357e.pth"
    with pytest.raises(UserError) as e:
        plan_sweep(cfg, data_dir, tmp_path / "sweep")
    assert str(cfg.finetune.weights) in str(e.value)
    assert "https://download.pytorch.org/models/r3d_18-b3b3357e.pth" in str(e.value)
    cfg.finetune.weights.parent.mkdir()
    cfg.finetune.weights.write_bytes(b"w")
    plan = plan_sweep(cfg, data_dir, tmp_path / "sweep")
    assert plan.inits == ["random", "kinetics"]
    assert {r.init_source for r in plan.runs} == {"random", "kinetics"}


def test_auto_inits_include_what_is_found(cfg, data_dir, tmp_path):
    cfg.sweep.inits = ["auto"]
    cfg.finetune.weights = tmp_path / "absent.pth"
    plan = plan_sweep(cfg, data_dir, tmp_path / "sweep")
    assert plan.inits == ["random", "simclr", "echoclr"]
    assert plan.init_notes["kinetics"].startswith("left out")
    assert plan.init_notes["mi-simclr"].startswith("left out")
    cfg.finetune.weights.write_bytes(b"w")
    cfg.model.width = 0.5  # Kinetics weights cannot load into a narrow model: left out
    make_pretrain_runs(tmp_path / "pretrain", ("simclr", "echoclr"), width=0.5)
    plan = plan_sweep(cfg, data_dir, tmp_path / "sweep")
    assert plan.inits == ["random", "simclr", "echoclr"] and "width" in plan.init_notes["kinetics"]
    cfg.model.width = 1.0
    make_pretrain_runs(tmp_path / "pretrain", ("simclr", "echoclr"), width=1.0)
    assert plan_sweep(cfg, data_dir, tmp_path / "sweep").inits == [
        "random",
        "kinetics",
        "simclr",
        "echoclr",
    ]
    with pytest.raises(UserError, match="auto"):
        cfg.sweep.inits = ["auto", "random"]
        plan_sweep(cfg, data_dir, tmp_path / "sweep")


def test_pretrain_missing_runs_pretraining_first(cfg, data_dir, tmp_path):
    cfg.sweep.inits = ["random", "mi-simclr"]
    cfg.sweep.tasks = ["as"]
    cfg.sweep.ratios = [1.0]
    cfg.sweep.pretrain_missing = True
    calls = []

    def fake_pretrain(
        pcfg, data, out_dir, resume=False, overwrite=False, force=False, progress=None
    ):
        calls.append((pcfg.pretrain.method, Path(out_dir), resume))
        make_pretrain_runs(Path(out_dir).parent, (pcfg.pretrain.method,))

    sweep = partial(
        run_sweep, cfg=cfg, data_dir=data_dir, out_dir=tmp_path / "sweep", pretrain_fn=fake_pretrain
    )
    with pytest.raises(UserError, match="shard"):
        sweep(shard=(0, 2), finetune_fn=FakeFinetune())
    dry = sweep(dry_run=True)
    assert [p.method for p in dry.plan.pretrain] == ["mi-simclr"] and calls == []
    fake = FakeFinetune()
    res = sweep(finetune_fn=fake)
    root = (tmp_path / "pretrain").resolve()
    assert calls == [("mi-simclr", root / "mi-simclr", False)]
    assert res.pretrained == [str(root / "mi-simclr")]
    assert {Path(c["cfg"].finetune.init).name for c in fake.calls} == {"random", "mi-simclr"}


# --------------------------------------------------------------------------- config safety, tables
def test_changed_run_config_is_refused_but_grid_may_grow(cfg, data_dir, tmp_path):
    out = tmp_path / "sweep"
    cfg.sweep.tasks = ["as"]
    cfg.sweep.ratios = [1.0]
    run_sweep(cfg=cfg, data_dir=data_dir, out_dir=out, finetune_fn=FakeFinetune())
    cfg.sweep.ratios = [0.5, 1.0]
    cfg.runtime.workers = 0
    fake = FakeFinetune()
    run_sweep(cfg=cfg, data_dir=data_dir, out_dir=out, finetune_fn=fake)
    assert len(fake.calls) == 3
    cfg.finetune.epochs = 3
    with pytest.raises(UserError, match="finetune.epochs"):
        run_sweep(cfg=cfg, data_dir=data_dir, out_dir=out, finetune_fn=FakeFinetune())
    with pytest.raises(UserError, match="finetune.epochs"):
        run_sweep(cfg=cfg, data_dir=data_dir, out_dir=out, dry_run=True)


def test_aggregate_needs_a_sweep_dir(cfg, tmp_path):
    with pytest.raises(UserError, match="plan.csv"):
        aggregate(tmp_path / "nothing", cfg)


def test_paper_grid_config(data_dir, tmp_path):
    paper = Path(__file__).resolve().parents[1] / "configs" / "sweep" / "paper.yaml"
    weights = tmp_path / "r3d_18-b3b3357e.pth"
    weights.write_bytes(b"w")
    root = make_pretrain_runs(tmp_path / "pretrain", ("simclr", "mi-simclr", "echoclr"))
    c = load_config(
        [paper],
        overrides={"sweep": {"pretrain_dir": str(root)}, "finetune": {"weights": str(weights)}},
    )
    plan = plan_sweep(c, data_dir, tmp_path / "sweep")
    assert plan.inits == ["random", "kinetics", "simclr", "mi-simclr", "echoclr"]
    assert len(plan.runs) == 130  # 2 tasks x 5 inits x (3 x 3 + 4 x 1) LR/ratio points
    assert {r.lr for r in plan.runs if r.ratio == 0.1} == {1e-5, 1e-4, 5e-4}
    assert {r.lr for r in plan.runs if r.ratio == 0.25} == {1e-4}


def test_progress_events(cfg, data_dir, tmp_path):
    cfg.sweep.tasks = ["as"]
    cfg.sweep.ratios = [1.0]
    cfg.sweep.inits = ["random"]
    events = []
    run_sweep(
        cfg=cfg,
        data_dir=data_dir,
        out_dir=tmp_path / "sweep",
        finetune_fn=FakeFinetune(),
        progress=events.append,
    )
    # the plan summary comes first, before any training
    assert isinstance(events[0], Note) and "1 to train" in events[0].text
    k = next(i for i, e in enumerate(events) if isinstance(e, RunStart))
    assert all(isinstance(e, Note) and e.run is None for e in events[:k])
    assert events[k] == RunStart(index=1, total=1, run="runs/as/random/r1_lr0.0001_s0")
    assert events[k + 1] == Epoch(
        epoch=1, epochs=1, row={"epoch": 1}, run="runs/as/random/r1_lr0.0001_s0"
    )
    assert not any(isinstance(e, Eta) for e in events)  # nothing left after the only run


def test_first_eta_is_measured_on_the_first_finished_run(cfg, data_dir, tmp_path):
    """No time estimate before anything ran; after run 1 the ETA is its measured rate x what is
    left (the fake's history says 3 s of training per run)."""
    cfg.sweep.tasks = ["as"]
    cfg.sweep.ratios = [0.5, 1.0]
    cfg.sweep.inits = ["random"]
    events = []
    res = run_sweep(
        cfg=cfg,
        data_dir=data_dir,
        out_dir=tmp_path / "sweep",
        finetune_fn=FakeFinetune(),
        progress=events.append,
    )
    summary = [e.text for e in events if isinstance(e, Note)]
    assert "measured once the first run finishes" in summary[0]
    etas = [e for e in events if isinstance(e, Eta)]
    assert [e.runs_left for e in etas] == [1]  # after the first of two runs
    first = next(r for r in res.plan.runs if r.ratio == 0.5)
    second = next(r for r in res.plan.runs if r.ratio == 1.0)
    rate = 3.0 / (first.n_studies * 3)  # 3 history epochs of 1 s on first.n_studies studies
    expected = rate * second.n_studies * cfg.finetune.epochs  # + the measured evaluation span
    assert etas[0].seconds == pytest.approx(expected, abs=1.0)
    assert etas[0].basis == "measured on 1 finished run"
    # the next invocation's plan (the grid grew) starts from the measurement of both runs
    cfg.sweep.ratios = [0.25, 0.5, 1.0]
    again = plan_sweep(cfg, data_dir, tmp_path / "sweep")
    assert again.estimate_source == "history"
    assert "estimated time left" in again.summary()[0]
    assert "measured on 2 finished runs" in again.summary()[0]


def _results(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        [(*r[:5], 1e-4, "test", "study", "auroc", *r[5:], 10, "patient") for r in rows],
        columns=list(RESULT_COLUMNS),
    )


def test_results_table_ci_best_and_seeds():
    df = _results(
        [
            ("as", "random", 0.01, 53, 0, 0.51, 0.45, 0.57),
            ("as", "echoclr", 0.01, 53, 0, 0.818, 0.79, 0.84),
            ("as", "random", 1.0, 5311, 0, 0.925, 0.91, 0.94),
            ("as", "echoclr", 1.0, 5311, 0, 0.933, 0.92, 0.95),
        ]
    )
    t = results_table(df, "as", "test", "auroc", inits=["random", "echoclr"])
    assert list(t.text.columns) == ["1% (n=53)", "100% (n=5311)"]
    assert list(t.text.index) == ["random", "echoclr"]
    assert t.text.loc["echoclr", "1% (n=53)"] == "0.818 [0.790, 0.840] *"
    assert t.text.loc["random", "1% (n=53)"] == "0.510 [0.450, 0.570]"
    assert t.best.loc["echoclr"].all() and not t.best.loc["random"].any()
    assert t.values.loc["random", "100% (n=5311)"] == pytest.approx(0.925)
    assert t.ci_unit == "patient"  # the table names what its CIs resampled
    seeds = _results(
        [("as", "random", 0.1, 5, s, v, v - 0.1, v + 0.1) for s, v in enumerate([0.6, 0.7, 0.8])]
    )
    undefined = _results([("as", "kinetics", 0.01, 53, 0, math.nan, math.nan, math.nan)])
    t2 = results_table(
        pd.concat([df, undefined]), "as", "test", inits=["random", "kinetics", "echoclr"]
    )
    assert list(t2.text.index) == ["random", "kinetics", "echoclr"]
    assert list(t2.text.loc["kinetics"]) == ["-", "-"]  # one-class test split / no 100% run
    t3 = results_table(seeds, "as", "test")
    assert t3.text.iloc[0, 0] == "0.700 ± 0.100 (n=3) *"
    assert t3.n_seeds.iloc[0, 0] == 3


@pytest.mark.slow
def test_real_finetune_sweep_end_to_end(tmp_path):
    pytest.importorskip("echoclr_cli.finetune.run")
    data = make_dataset(tmp_path, n_studies=12, videos_per_study=(1, 2), frames=(20, 24), size=32)
    c = Config()
    c.runtime.workers = 0
    c.runtime.threads = 1
    c.model.width = 0.125
    c.finetune.epochs = 1
    c.finetune.batch_size = 4
    c.finetune.clip_len = 4
    c.evaluate.bootstrap = 20
    c.evaluate.clips_per_video = 1
    c.evaluate.plots = False
    c.pretrain.epochs = 1
    c.pretrain.batch_size = 4
    c.sweep.tasks = ["as"]
    c.sweep.inits = ["random", "mi-simclr"]
    c.sweep.pretrain_missing = True  # the real run_pretrain makes the mi-simclr init first
    c.sweep.pretrain_dir = tmp_path / "pretrain"
    c.sweep.ratios = [0.5, 1.0]
    c.sweep.lrs = [1e-3]
    c.sweep.low_ratio_lrs = [1e-3]
    out = tmp_path / "sweep"
    first = run_sweep(cfg=c, data_dir=data, out_dir=out)
    assert first.pretrained == [str((tmp_path / "pretrain" / "mi-simclr").resolve())]
    assert len(first.trained) == 4 and not first.failed
    assert (out / "runs/as/random/r1_lr0.001_s0/metrics.json").exists()
    init = json.loads((out / "runs/as/mi-simclr/r1_lr0.001_s0/init.json").read_text())
    assert init["source"].endswith("mi-simclr/checkpoints/last.pt") and init["loaded"]
    before = (out / "results.csv").read_bytes()
    second = run_sweep(cfg=c, data_dir=data, out_dir=out)
    assert second.trained == [] and second.pretrained == []
    assert (out / "results.csv").read_bytes() == before
    assert list(first.tables["auroc_as_test"].text.index) == ["random", "mi-simclr"]
    # a run that died after its last checkpoint: the sweep resumes it through the real engine's
    # config check (same config) and the results do not change
    (out / "runs/as/mi-simclr/r0.5_lr0.001_s0/metrics.json").unlink()
    third = run_sweep(cfg=c, data_dir=data, out_dir=out)
    assert third.trained == ["runs/as/mi-simclr/r0.5_lr0.001_s0"] and not third.failed
    assert (out / "results.csv").read_bytes() == before
    assert set(first.results["split"]) <= {"test", "ext_test"}


# --------------------------------------------------------------------------- launchers
def _small_grid(cfg: Config) -> Config:
    cfg.sweep.tasks = ["as"]
    cfg.sweep.ratios = [0.5, 1.0]
    cfg.sweep.inits = ["random", "echoclr"]
    return cfg  # 4 runs


def test_local_launcher_results_byte_identical_to_inline(cfg, data_dir, tmp_path, monkeypatch):
    """submitit's LocalExecutor: 2 jobs (subprocesses) for the 4 runs, then the same
    aggregation as inline: results.csv byte for byte."""
    pytest.importorskip("submitit")
    root = Path(__file__).resolve().parents[1]
    # the jobs unpickle FakeFinetune from this module: make it importable in the subprocesses
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), str(root / "tests")]))
    cfg = _small_grid(cfg)
    inline, local = tmp_path / "inline", tmp_path / "local"
    run_sweep(cfg=cfg, data_dir=data_dir, out_dir=inline, finetune_fn=FakeFinetune())
    cfg.sweep.jobs = 2
    res = run_sweep(
        cfg=cfg, data_dir=data_dir, out_dir=local, finetune_fn=FakeFinetune(), launcher="local"
    )
    assert sorted(res.trained) == sorted(r.run_dir for r in res.plan.runs) and not res.failed
    logs = [p for p in (local / "submitit").iterdir() if p.name.isdigit()]
    assert len(logs) == 2  # one log folder per job
    assert (local / "results.csv").read_bytes() == (inline / "results.csv").read_bytes()
    again = run_sweep(
        cfg=cfg, data_dir=data_dir, out_dir=local, finetune_fn=FakeFinetune(), launcher="local"
    )
    assert again.trained == []  # everything done: no job at all


class GpuRecordingFinetune(FakeFinetune):
    """Writes the CUDA_VISIBLE_DEVICES its job process saw into the run dir."""

    def __call__(self, cfg, data_dir, out_dir, **kw):
        res = super().__call__(cfg, data_dir, out_dir, **kw)
        (Path(out_dir) / "cuda.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
        return res


def test_local_launcher_puts_one_job_on_each_gpu(cfg, data_dir, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    import echoclr_cli.sweep.launch as launch_mod

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), str(root / "tests")]))
    monkeypatch.setattr(launch_mod, "local_gpus", lambda cfg: 2)  # as on a 2-GPU machine
    out = tmp_path / "local"
    res = run_sweep(
        cfg=_small_grid(cfg), data_dir=data_dir, out_dir=out, finetune_fn=GpuRecordingFinetune(),
        launcher="local",
    )  # fmt: skip
    runs = [r.run_dir for r in res.plan.runs]  # plan order: run i in job i mod 2, on GPU i mod 2
    seen = [(out / r / "cuda.txt").read_text() for r in runs]
    assert seen == ["0", "1", "0", "1"]


@pytest.mark.slow  # job subprocesses: ~15 s
def test_local_launcher_defaults_to_one_job_on_cpu(cfg, data_dir, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from echoclr_cli.sweep.launch import local_gpus

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), str(root / "tests")]))
    cfg = _small_grid(cfg)
    cfg.runtime.device = "cpu"
    assert local_gpus(cfg) == 0
    out = tmp_path / "local"
    res = run_sweep(
        cfg=cfg, data_dir=data_dir, out_dir=out, finetune_fn=FakeFinetune(), launcher="local"
    )
    assert len(res.trained) == 4
    assert len([p for p in (out / "submitit").iterdir() if p.name.isdigit()]) == 1


@pytest.mark.slow  # job subprocesses: ~15 s
def test_local_launcher_records_user_errors_and_reports_crashes(
    cfg, data_dir, tmp_path, monkeypatch
):
    pytest.importorskip("submitit")
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), str(root / "tests")]))
    cfg = _small_grid(cfg)
    cfg.sweep.jobs = 1
    res = run_sweep(
        cfg=cfg,
        data_dir=data_dir,
        out_dir=tmp_path / "a",
        finetune_fn=FakeFinetune(user_error_for="r0.5"),
        launcher="local",
    )
    assert len(res.failed) == 2 and len(res.trained) == 2
    assert all((tmp_path / "a" / run / "sweep_error.txt").exists() for run, _ in res.failed)
    with pytest.raises(UserError, match="1 sweep job\\(s\\) crashed.*killed while training"):
        run_sweep(
            cfg=cfg,
            data_dir=data_dir,
            out_dir=tmp_path / "b",
            finetune_fn=FakeFinetune(fail_after=1),
            launcher="local",
        )


def test_missing_submitit_names_the_extra(cfg, data_dir, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_submitit(name, *args, **kwargs):
        if name == "submitit":
            raise ImportError("No module named 'submitit'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_submitit)
    with pytest.raises(UserError, match=r"\[cluster\]") as e:
        run_sweep(
            cfg=_small_grid(cfg), data_dir=data_dir, out_dir=tmp_path / "s",
            finetune_fn=FakeFinetune(), launcher="slurm",
        )  # fmt: skip
    assert "pip install 'echoclr[cluster]'" in e.value.fix


def test_launchers_refuse_pretrain_missing(cfg, data_dir, tmp_path):
    cfg = _small_grid(cfg)
    cfg.sweep.inits = ["random", "mi-simclr"]
    cfg.sweep.pretrain_missing = True
    with pytest.raises(UserError, match="sharded or launched sweep"):
        run_sweep(
            cfg=cfg, data_dir=data_dir, out_dir=tmp_path / "s", finetune_fn=FakeFinetune(),
            launcher="local",
        )  # fmt: skip


def test_split_jobs_round_robin():
    from echoclr_cli.sweep.launch import split_jobs

    runs = list(range(5))
    assert split_jobs(runs, 0) == [[0], [1], [2], [3], [4]]
    assert split_jobs(runs, 2) == [[0, 2, 4], [1, 3]]
    assert split_jobs(runs, 9) == [[0], [1], [2], [3], [4]]
    assert split_jobs([], 3) == []


def _fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """`srun` and `sbatch` stand-ins on PATH: sbatch keeps a copy of each script it is given and
    answers like SLURM with increasing job ids."""
    bin_dir, captured = tmp_path / "bin", tmp_path / "sbatch_scripts"
    bin_dir.mkdir()
    captured.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\n"
        f'n=$(ls "{captured}" | wc -l); id=$((4242 + n))\n'
        f'cp "$1" "{captured}/$id.sh"\n'
        'echo "Submitted batch job $id"\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return captured


def test_slurm_launcher_submits_an_array_and_a_dependent_aggregation(
    cfg, data_dir, tmp_path, monkeypatch
):
    pytest.importorskip("submitit")
    captured = _fake_slurm(tmp_path, monkeypatch)
    cfg = _small_grid(cfg)
    cfg.sweep.slurm.partition = "gpu"
    cfg.sweep.slurm.time_min = 90
    cfg.sweep.slurm.gpus = 1
    cfg.sweep.slurm.array_parallelism = 3
    cfg.sweep.slurm.signal_delay_s = 180
    fake = FakeFinetune()
    out = tmp_path / "sweep"
    res = run_sweep(cfg=cfg, data_dir=data_dir, out_dir=out, finetune_fn=fake, launcher="slurm")
    assert fake.calls == []  # nothing trains on the submitting machine
    assert res.submitted == ["4242", "4243"]
    assert not (out / "results.csv").exists()  # the aggregation job writes it
    array, agg = ((captured / f"{i}.sh").read_text() for i in res.submitted)
    assert "#SBATCH --array=0-3%3" in array  # one array task per run, 3 at once
    assert "#SBATCH --partition=gpu" in array and "#SBATCH --time=90" in array
    assert "#SBATCH --gpus-per-node=1" in array
    assert "#SBATCH --signal=USR2@180" in array  # checkpoint + requeue before the time limit
    assert "#SBATCH --job-name=echoclr-sweep" in array
    assert "#SBATCH --dependency=afterany:4242" in agg and "gpus" not in agg
    assert "--array" not in agg
    # the pickled jobs are checkpointable and each holds one run
    import pickle

    from echoclr_cli.sweep.launch import SweepJob

    pickles = sorted((out / "submitit").glob("4242_*/*_submitted.pkl"))
    assert len(pickles) == 4
    jobs = [pickle.loads(p.read_bytes()).function for p in pickles]
    assert all(isinstance(j, SweepJob) and len(j.runs) == 1 for j in jobs)
    requeued = jobs[0].checkpoint()
    assert requeued.function is jobs[0]


def test_slurm_array_task_runs_its_runs_and_aggregation_job_writes_results(
    cfg, data_dir, tmp_path, monkeypatch
):
    """What the array tasks and the aggregation job do, run here in order: same results.csv
    as inline."""
    pytest.importorskip("submitit")
    import pickle

    captured = _fake_slurm(tmp_path, monkeypatch)
    cfg = _small_grid(cfg)
    cfg.sweep.jobs = 2
    out, inline = tmp_path / "sweep", tmp_path / "inline"
    res = run_sweep(
        cfg=cfg, data_dir=data_dir, out_dir=out, finetune_fn=FakeFinetune(), launcher="slurm"
    )
    assert "#SBATCH --array=0-1%2" in (captured / f"{res.submitted[0]}.sh").read_text()
    for p in sorted((out / "submitit").glob("*/*_submitted.pkl")):
        job = pickle.loads(p.read_bytes()).function
        if not p.parent.name.startswith(res.submitted[-1]):
            job()
    agg = next((out / "submitit").glob(f"{res.submitted[-1]}/*_submitted.pkl"))
    assert pickle.loads(agg.read_bytes()).function() == len(pd.read_csv(out / "results.csv"))
    run_sweep(cfg=cfg, data_dir=data_dir, out_dir=inline, finetune_fn=FakeFinetune())
    assert (out / "results.csv").read_bytes() == (inline / "results.csv").read_bytes()


def test_cli_slurm_options_reach_the_sbatch_script(data_dir, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from typer.testing import CliRunner

    from echoclr_cli.cli import app

    captured = _fake_slurm(tmp_path, monkeypatch)
    out = tmp_path / "sweep"
    args = [
        "sweep", "--data", str(data_dir), "--out", str(out), "--tasks", "as", "--inits", "random",
        "--ratios", "0.5,1.0", "--launcher", "slurm", "--jobs", "2", "--slurm-partition", "a100",
        "--slurm-time", "30", "--slurm-gpus", "2", "--slurm-array-parallelism", "1",
        "--set", "evaluate.plots=false",
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    array = (captured / "4242.sh").read_text()
    for line in ("--array=0-1%1", "--partition=a100", "--time=30", "--gpus-per-node=2"):
        assert f"#SBATCH {line}" in array
    assert "afterany:4242" in (captured / "4243.sh").read_text()
    assert yaml.safe_load((out / "sweep.yaml").read_text())["sweep"]["launcher"] == "slurm"
