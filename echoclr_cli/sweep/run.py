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
from echoclr_cli.events import Note, Progress, in_run
from echoclr_cli.io import atomic_write_csv, atomic_write_text
from echoclr_cli.schema import RESULT_COLUMNS, SELECTION_COLUMNS
from echoclr_cli.sweep.launch import launch, require_submitit
from echoclr_cli.sweep.plan import (
    RunSpec,
    SweepPlan,
    plan_sweep,
    shard_runs,
)
from echoclr_cli.sweep.results import SweepTable, aggregate_all
from echoclr_cli.sweep.state import check_sweep_config, run_status
from echoclr_cli.sweep.train import FinetuneFn, TimeLeft, emit, train_runs

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
        emit(progress, Note(f"pretraining {spec.method} -> {spec.run_dir} ({spec.status})"))
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
    from echoclr_cli.training.preflight import run_check

    for task in plan.tasks:
        tcfg = cfg.model_copy(deep=True)
        tcfg.finetune.task = task
        run_check(tcfg, data_dir, task=task, section="finetune").raise_if_failed()
    for spec in plan.pretrain:
        pcfg = cfg.model_copy(deep=True)
        pcfg.pretrain.method = spec.method
        run_check(pcfg, data_dir, section="pretrain").raise_if_failed()


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
        require_submitit()
    preflight_sweep(cfg, data_dir, plan)
    for line in plan.summary(mine):  # what is about to happen, before hours of training
        emit(progress, Note(line))
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_sweep_files(cfg, plan, out_dir)
    result.pretrained = _pretrain_missing(cfg, plan, data_dir, progress, pretrain_fn)

    todo = [r for r in mine if run_status(out_dir / r.run_dir) != "done"]
    launcher = launcher or cfg.sweep.launcher
    if launcher != "inline":
        outcome = launch(launcher, cfg, data_dir, out_dir, plan, todo, progress, finetune_fn)
        result.trained, result.failed = outcome.trained, outcome.failed
        result.submitted = outcome.submitted
        if result.submitted:  # slurm: the array trains, a dependent job aggregates
            return result
    else:
        eta = TimeLeft(cfg, plan, out_dir)
        result.trained, result.failed = train_runs(
            cfg, data_dir, out_dir, todo, progress=progress, finetune_fn=finetune_fn, eta=eta
        )

    agg = aggregate_all(out_dir, cfg, plan_frame=plan.frame(), inits=plan.inits)
    result.results, result.selection, result.tables, result.figures = agg
    return result
