"""Running a sweep: preflight, pretrain missing inits, fine-tune every unfinished run, aggregate.

Progress goes out as ``events``: the plan summary (``Note``), each run (``RunStart``, its own
training events tagged with the run dir, ``RunFailed``), and after every finished run the time
left measured on the finished runs (``Eta``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from echoclr_cli.config.load import config_to_dict
from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.events import Eta, Note, Progress, RunFailed, RunStart, in_run
from echoclr_cli.io import atomic_write_csv, atomic_write_text
from echoclr_cli.schema import RESULT_COLUMNS, SELECTION_COLUMNS
from echoclr_cli.sweep.plan import (
    CostModel,
    RunSpec,
    SweepPlan,
    cost_sample,
    epochs_left,
    plan_sweep,
    run_config,
    shard_runs,
)
from echoclr_cli.sweep.results import SweepTable, aggregate_all
from echoclr_cli.sweep.state import ERROR_FILE, check_sweep_config, run_status

FinetuneFn = Callable[..., Any]
PretrainFn = Callable[..., Any]


@dataclass
class SweepResult:
    plan: SweepPlan
    shard: tuple[int, int] | None
    assigned: list[RunSpec]  # the runs this invocation is responsible for (its shard)
    trained: list[str] = field(default_factory=list)  # run dirs trained (or resumed) now
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run dir, UserError text)
    pretrained: list[str] = field(default_factory=list)
    results: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(RESULT_COLUMNS))
    )
    selection: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(SELECTION_COLUMNS))
    )
    tables: dict[str, SweepTable] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    dry_run: bool = False
    out_dir: Path | None = None
    submitted: list[str] = field(default_factory=list)  # slurm job ids (launcher slurm)


def _write_sweep_files(cfg: Config, plan: SweepPlan, out_dir: Path) -> None:
    atomic_write_text(out_dir / "sweep.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    atomic_write_csv(out_dir / "plan.csv", plan.frame())


def _emit(progress: Progress | None, event: Any) -> None:
    if progress is not None and event is not None:
        progress(event)


def _pretrain_missing(
    cfg: Config,
    plan: SweepPlan,
    data_dir: Path,
    progress: Progress | None,
    pretrain_fn: PretrainFn | None,
) -> list[str]:
    if pretrain_fn is None:
        from echoclr_cli.pretrain.run import run_pretrain as pretrain_fn
    done = []
    for spec in plan.pretrain:
        _emit(progress, Note(f"pretraining {spec.method} -> {spec.run_dir} ({spec.status})"))
        mcfg = cfg.model_copy(deep=True)
        mcfg.pretrain.method = spec.method
        pretrain_fn(
            mcfg,
            data_dir,
            spec.run_dir,
            resume=spec.status == "partial",
            progress=in_run(progress, str(spec.run_dir)),
        )
        done.append(str(spec.run_dir))
    return done


def preflight_sweep(cfg: Config, data_dir: Path, plan: SweepPlan) -> None:
    """The preflight of ``echoclr check`` for every task of the grid (and for pretraining when
    the sweep pretrains missing inits), before anything is written, built or trained: missing
    files, leakage, one-class or empty training splits refuse the whole sweep at once."""
    from echoclr_cli.check import run_check

    for task in plan.tasks:
        tcfg = cfg.model_copy(deep=True)
        tcfg.finetune.task = task
        run_check(tcfg, data_dir, task=task, section="finetune").raise_if_failed()
    for spec in plan.pretrain:
        pcfg = cfg.model_copy(deep=True)
        pcfg.pretrain.method = spec.method
        run_check(pcfg, data_dir, section="pretrain").raise_if_failed()


class _Eta:
    """Time left for the runs still to train, refitted on every run that finishes."""

    def __init__(self, cfg: Config, plan: SweepPlan, out_dir: Path):
        self.cfg, self.out_dir = cfg, out_dir
        self.samples = [
            s
            for r in plan.runs
            if r.status == "done" and (s := cost_sample(out_dir / r.run_dir, r.n_studies))
        ]

    def after(self, finished: RunSpec, remaining: list[RunSpec]) -> Eta | None:
        sample = cost_sample(self.out_dir / finished.run_dir, finished.n_studies)
        if sample is not None:
            self.samples.append(sample)
        cost = CostModel.fit(self.samples)
        if cost is None or not remaining:
            return None
        seconds = sum(
            cost.estimate(r.n_studies, epochs_left(self.cfg, self.out_dir / r.run_dir))
            for r in remaining
        )
        return Eta(seconds=seconds, runs_left=len(remaining), basis=cost.basis)


def train_runs(
    cfg: Config,
    data_dir: Path,
    out_dir: Path,
    todo: list[RunSpec],
    progress: Progress | None = None,
    finetune_fn: FinetuneFn | None = None,
    eta: _Eta | None = None,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Fine-tune ``todo`` one after the other (the inline launcher, and each job of the others):
    done runs are skipped, partial ones resumed, leftovers overwritten; a UserError is written
    to the run's sweep_error.txt and the next run goes on. Returns (trained, failed)."""
    if finetune_fn is None:
        from echoclr_cli.finetune.run import run_finetune as finetune_fn
    trained: list[str] = []
    failed: list[tuple[str, str]] = []
    for k, spec in enumerate(todo, 1):
        run_dir = out_dir / spec.run_dir
        status = run_status(run_dir)
        if status == "done":  # another process finished it meanwhile
            continue
        resume = status == "partial"
        (run_dir / ERROR_FILE).unlink(missing_ok=True)  # a failure of an earlier try
        overwrite = not resume and run_dir.exists() and any(run_dir.iterdir())
        _emit(progress, RunStart(index=k, total=len(todo), run=spec.run_dir, resume=resume))
        try:
            finetune_fn(
                run_config(cfg, spec, data_dir),
                data_dir,
                run_dir,
                resume=resume,
                overwrite=overwrite,
                progress=in_run(progress, spec.run_dir),
            )
        except UserError as e:
            failed.append((spec.run_dir, str(e)))
            atomic_write_text(run_dir / ERROR_FILE, str(e) + "\n")
            _emit(progress, RunFailed(index=k, total=len(todo), run=spec.run_dir, error=str(e)))
            continue
        trained.append(spec.run_dir)
        if eta is not None:
            _emit(progress, eta.after(spec, todo[k:]))
    return trained, failed


def run_sweep(
    *,
    cfg: Config,
    data_dir: Path,
    out_dir: Path,
    shard: tuple[int, int] | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    finetune_fn: FinetuneFn | None = None,
    pretrain_fn: PretrainFn | None = None,
    launcher: str | None = None,
) -> SweepResult:
    """Plan, (pretrain missing SSL inits,) fine-tune every unfinished run of this shard, aggregate.

    ``dry_run``: plan only, nothing is written or trained. A run that raises UserError (e.g. a
    label fraction with no positive study) is recorded in ``failed`` and the sweep goes on; any
    other exception (preemption, Ctrl-C, a bug) stops the sweep, and re-running it resumes.
    ``finetune_fn`` / ``pretrain_fn`` default to ``finetune.run_finetune`` / ``pretrain.run_pretrain``
    (tests inject fakes with the same signature). ``launcher`` (default ``sweep.launcher``):
    ``inline`` trains here, ``local`` / ``slurm`` run the same runs as submitit jobs
    (``sweep/launch.py``); slurm returns after submitting (``result.submitted``).
    """
    from echoclr_cli.runtime import dist_env

    if dist_env()[1] > 1:
        raise UserError(
            "echoclr sweep runs one process per shard, not under torchrun (WORLD_SIZE > 1)",
            fix="start one `echoclr sweep --shard i/n` per GPU (docs/SLURM.md)",
        )
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    plan = plan_sweep(cfg, data_dir, out_dir)
    mine = shard_runs(plan.runs, shard)
    result = SweepResult(plan=plan, shard=shard, assigned=mine, dry_run=dry_run, out_dir=out_dir)
    check_sweep_config(cfg, out_dir)
    if dry_run:
        return result
    if plan.pretrain and (shard is not None or (launcher or cfg.sweep.launcher) != "inline"):
        cmds = " && ".join(p.command for p in plan.pretrain)
        raise UserError(
            "--pretrain-missing cannot run inside a sharded or launched sweep "
            "(every shard or job would pretrain)",
            fix=f"pretrain first ({cmds}), then launch the shards",
        )
    if (launcher or cfg.sweep.launcher) != "inline":  # its optional extra, before any write
        from echoclr_cli.sweep.launch import require_submitit

        require_submitit()
    preflight_sweep(cfg, data_dir, plan)
    for line in plan.summary(mine):  # what is about to happen, before hours of training
        _emit(progress, Note(line))
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_sweep_files(cfg, plan, out_dir)
    result.pretrained = _pretrain_missing(cfg, plan, data_dir, progress, pretrain_fn)

    todo = [r for r in mine if run_status(out_dir / r.run_dir) != "done"]
    launcher = launcher or cfg.sweep.launcher
    if launcher != "inline":
        from echoclr_cli.sweep.launch import launch

        outcome = launch(launcher, cfg, data_dir, out_dir, plan, todo, progress, finetune_fn)
        result.trained, result.failed = outcome.trained, outcome.failed
        result.submitted = outcome.submitted
        if result.submitted:  # slurm: the array trains, a dependent job aggregates
            return result
    else:
        eta = _Eta(cfg, plan, out_dir)
        result.trained, result.failed = train_runs(
            cfg, data_dir, out_dir, todo, progress=progress, finetune_fn=finetune_fn, eta=eta
        )

    agg = aggregate_all(out_dir, cfg, plan_frame=plan.frame(), inits=plan.inits)
    result.results, result.selection, result.tables, result.figures = agg
    return result
