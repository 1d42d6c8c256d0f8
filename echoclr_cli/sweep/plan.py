"""Planning a sweep: the sorted grid, each run's status, labeled-study count, overrides and cost.

``plan_sweep`` reads the manifest (no video), the pretrain dir and the sweep dir, and writes
nothing. Time estimates are measured, never guessed: ``CostModel.fit`` fits seconds per labeled
study-epoch (plus the final evaluation) on the runs that finished; with none finished the plan
says the estimate comes after the first run (``run_sweep`` then emits ``events.Eta``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from echoclr_cli.config.load import config_to_dict, deep_merge
from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.events import fmt_duration
from echoclr_cli.schema import PLAN_COLUMNS
from echoclr_cli.sweep.grid import check_grid, lr_grid, run_dir_name, seed_grid
from echoclr_cli.sweep.inits import PretrainSpec, resolve_inits
from echoclr_cli.sweep.state import read_history, run_seconds, run_status


@dataclass(frozen=True)
class RunSpec:
    """One grid point = one fine-tune run dir (``run_dir`` is relative to the sweep dir)."""

    index: int  # position in the sorted full plan (shards use index % n)
    task: str
    init: str  # name: random | kinetics | a pretrain run name (simclr, ...)
    init_source: str  # finetune.init value: random | kinetics | absolute pretrain run dir
    ratio: float
    lr: float
    seed: int
    n_studies: int  # labeled training studies at this ratio
    run_dir: str
    status: str  # done | partial (resume from last.pt) | pending
    est_seconds: float  # history seconds when done, else an estimate
    overrides: dict[str, Any]  # nested config overrides applied to the sweep's config


@dataclass
class SweepPlan:
    runs: list[RunSpec]
    inits: list[str]  # resolved init names, in table order
    init_notes: dict[str, str]  # init -> where it was found / why it was left out
    pretrain: list[PretrainSpec]
    tasks: list[str]
    splits: list[str]  # evaluation splits present in the data (subset of sweep.splits)
    split_notes: list[str]
    cost: CostModel | None  # fitted on the finished runs; None when none has finished

    def frame(self, runs: Sequence[RunSpec] | None = None) -> pd.DataFrame:
        """plan.csv: one row per run (``overrides`` as JSON); ``runs`` = a subset (a shard)."""
        rows = [
            {
                "index": r.index,
                "task": r.task,
                "init": r.init,
                "init_source": r.init_source,
                "ratio": r.ratio,
                "lr": r.lr,
                "seed": r.seed,
                "n_studies": r.n_studies,
                "run_dir": r.run_dir,
                "status": r.status,
                "est_seconds": round(r.est_seconds, 1),
                "overrides": json.dumps(r.overrides, sort_keys=True),
            }
            for r in (self.runs if runs is None else runs)
        ]
        return pd.DataFrame(rows, columns=list(PLAN_COLUMNS))

    def counts(self, runs: Sequence[RunSpec] | None = None) -> dict[str, int]:
        """Runs by status: done, partial (to resume), pending (to train)."""
        out = {"done": 0, "partial": 0, "pending": 0}
        for r in self.runs if runs is None else runs:
            out[r.status] += 1
        return out

    @property
    def estimate_source(self) -> str:
        """history (measured on finished runs) | none (nothing finished: no estimate yet)."""
        return "history" if self.cost is not None else "none"

    def pending_seconds(self, runs: Sequence[RunSpec] | None = None) -> float:
        """Estimated seconds left (NaN while no run has finished)."""
        return float(
            sum(r.est_seconds for r in (self.runs if runs is None else runs) if r.status != "done")
        )

    def summary(self, runs: Sequence[RunSpec] | None = None) -> list[str]:
        """Plain-text lines for the terminal: grid size, statuses, cost, inits, pretraining."""
        runs = self.runs if runs is None else runs
        counts = self.counts(runs)
        left = counts["partial"] + counts["pending"]
        if not left:
            eta = "nothing left to train"
        elif self.cost is None:
            eta = "time left: measured once the first run finishes (none finished yet)"
        else:
            eta = (
                f"estimated time left {fmt_duration(self.pending_seconds(runs))} "
                f"({self.cost.basis})"
            )
        lines = [
            f"{len(runs)} runs ({counts['done']} done, {counts['partial']} to resume, "
            f"{counts['pending']} to train); {eta}",
            f"tasks {', '.join(self.tasks)}; results on {', '.join(self.splits)}",
        ]
        lines += [f"init {name}: {note}" for name, note in self.init_notes.items()]
        lines += [f"pretrain first: {p.command}" for p in self.pretrain]
        lines += self.split_notes
        return lines


def _task_studies(data_dir: Path, task: str) -> tuple[pd.DataFrame, list[str]]:
    """Labeled training studies of ``task`` (``fractions.study_labels``) and the splits that
    hold labeled videos."""
    from echoclr_cli.data.fractions import study_labels
    from echoclr_cli.data.manifest import load_manifest

    df = load_manifest(data_dir, task=task, check_files=False)
    present = sorted(df["split"].unique())
    train = df[df["split"] == "train"]
    if train.empty:
        raise UserError(
            f"{data_dir}/manifest.csv: no training study with a '{task}' label",
            fix=f"check the '{task}' column or drop the task from sweep.tasks",
        )
    if "val" not in present:
        raise UserError(
            f"{data_dir}/manifest.csv: no val split with a '{task}' label; the sweep "
            "selects models on it",
            fix="re-run `echoclr preprocess` with a val split",
        )
    return study_labels(train, task), present


def subset_size(studies: pd.DataFrame, ratio: float, seed: int, task: str) -> int:
    """Labeled training studies a fine-tune run at ``ratio`` / ``frac_seed`` uses: the paper's
    ``int(ratio * N)``, extended (FAULTS.md 17) to hold both classes, exactly as
    ``fractions.sample_label_fraction`` draws them."""
    from echoclr_cli.data.fractions import sample_label_fraction

    return len(sample_label_fraction(studies, ratio, seed, task).studies)


@dataclass(frozen=True)
class CostModel:
    """``seconds = eval_seconds + seconds_per_study_epoch x labeled studies x epochs``, measured."""

    seconds_per_study_epoch: float
    eval_seconds: float
    n_runs: int  # finished runs it was fitted on

    @classmethod
    def fit(cls, done: Sequence[tuple[int, int, float, float]]) -> CostModel | None:
        """From finished runs ``(n_studies, epochs_run, train_s, eval_s)``; None without one."""
        ok = [d for d in done if d[1] > 0 and math.isfinite(d[2])]
        units = sum(n * e for n, e, _, _ in ok)
        if units <= 0:
            return None
        rate = sum(t for _, _, t, _ in ok) / units
        return cls(rate, float(np.mean([v for *_, v in ok])), len(ok))

    @property
    def basis(self) -> str:
        return f"measured on {self.n_runs} finished run{'s' if self.n_runs != 1 else ''}"

    def estimate(self, n_studies: int, epochs: int) -> float:
        return self.eval_seconds + self.seconds_per_study_epoch * n_studies * epochs


def cost_sample(run_dir: Path, n_studies: int) -> tuple[int, int, float, float] | None:
    """``(n_studies, epochs_run, train_s, eval_s)`` of a finished run (for ``CostModel.fit``)."""
    if run_status(run_dir) != "done":
        return None
    history = read_history(run_dir)
    return (n_studies, len(history) if history is not None else 0, *run_seconds(run_dir, history))


def epochs_left(cfg: Config, run_dir: Path) -> int:
    """Fine-tune epochs a run still has to train (its history.csv rows are done)."""
    history = read_history(run_dir)
    return max(cfg.finetune.epochs - (len(history) if history is not None else 0), 0)


def plan_sweep(cfg: Config, data_dir: Path, out_dir: Path) -> SweepPlan:
    """The full grid, sorted (task, init, ratio, lr, seed), with each run's status and cost.

    Reads the manifest (no video), the pretrain dir and the sweep dir; writes nothing.
    Raises UserError for an empty or bad grid, a missing task label, and unavailable named
    inits (with the `echoclr pretrain` command to run).
    """
    check_grid(cfg)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    sw = cfg.sweep
    tasks = list(dict.fromkeys(sw.tasks))
    studies: dict[str, pd.DataFrame] = {}
    present: set[str] = set()
    for task in tasks:
        studies[task], splits_here = _task_studies(data_dir, task)
        present.update(splits_here)
    n_cache: dict[tuple[str, float, int], int] = {}

    def n_studies(task: str, ratio: float, seed: int) -> int:
        key = (task, ratio, seed)
        if key not in n_cache:
            n_cache[key] = subset_size(studies[task], ratio, seed, task)
        return n_cache[key]

    splits = [s for s in dict.fromkeys(sw.splits) if s in present]
    split_notes = [
        f"split '{s}' not in the data: not evaluated" for s in sw.splits if s not in present
    ]
    if not splits:
        raise UserError(
            f"none of sweep.splits {sw.splits} is in {data_dir}/manifest.csv",
            fix="set sweep.splits to splits the manifest has (test, ext_test)",
        )
    inits, notes, to_pretrain = resolve_inits(cfg, data_dir)

    specs = []
    for task in tasks:
        for init, source in inits:
            for ratio in sorted(set(float(r) for r in sw.ratios)):
                for lr in lr_grid(cfg, ratio):
                    for seed in seed_grid(cfg, ratio):
                        specs.append((task, init, source, ratio, lr, seed))

    states = [run_status(out_dir / run_dir_name(t, i, r, lr, s)) for t, i, _, r, lr, s in specs]
    history: dict[tuple, pd.DataFrame | None] = {}
    spent: dict[tuple, tuple[float, float]] = {}
    for (t, i, _, r, lr, s), st in zip(specs, states, strict=True):
        if st == "pending":
            continue
        run_dir = out_dir / run_dir_name(t, i, r, lr, s)
        history[(t, i, r, lr, s)] = hist = read_history(run_dir)
        if st == "done":
            spent[(t, i, r, lr, s)] = run_seconds(run_dir, hist)
    cost = CostModel.fit(
        [
            (n_studies(k[0], k[2], k[4]), len(history[k]) if history[k] is not None else 0, *v)
            for k, v in spent.items()
        ]
    )

    runs = []
    for index, ((task, init, src, ratio, lr, seed), status) in enumerate(
        zip(specs, states, strict=True)
    ):
        n = n_studies(task, ratio, seed)
        key = (task, init, ratio, lr, seed)
        if key in spent and math.isfinite(spent[key][0]):
            est = spent[key][0] + spent[key][1]
        else:
            hist = history.get(key)
            left = cfg.finetune.epochs - (len(hist) if hist is not None else 0)
            est = cost.estimate(n, max(left, 0)) if cost is not None else math.nan
        overrides = {
            "finetune": {
                "task": task,
                "init": src,
                "frac": ratio,
                "frac_seed": seed,
                "optim": {"learning_rate": lr},
            },
            "runtime": {"seed": seed},
            "evaluate": {"splits": list(dict.fromkeys(sw.splits))},
        }
        runs.append(
            RunSpec(
                index,
                task,
                init,
                src,
                ratio,
                lr,
                seed,
                n,
                run_dir_name(task, init, ratio, lr, seed),
                status,
                est,
                overrides,
            )
        )
    return SweepPlan(
        runs, [i for i, _ in inits], notes, to_pretrain, tasks, splits, split_notes, cost
    )


def run_config(cfg: Config, spec: RunSpec, data_dir: Path) -> Config:
    """The sweep's resolved config with the run's overrides (and ``paths.data``) applied."""
    data = deep_merge(config_to_dict(cfg, private=True), spec.overrides)  # in memory only
    data["paths"]["data"] = str(Path(data_dir))
    # Per-run ROC/PR/calibration figures only when asked (sweep.run_plots); the sweep's own
    # label-efficiency figure follows evaluate.plots.
    data["evaluate"]["plots"] = bool(cfg.evaluate.plots and cfg.sweep.run_plots)
    return Config.model_validate(data)


def shard_runs(runs: Sequence[RunSpec], shard: tuple[int, int] | None) -> list[RunSpec]:
    """Runs of shard ``(i, n)``: index modulo n over the full sorted plan (done or not)."""
    if shard is None:
        return list(runs)
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"shard {i}/{n} is not i/n with 0 <= i < n", fix="use e.g. --shard 0/4")
    return [r for r in runs if r.index % n == i]
