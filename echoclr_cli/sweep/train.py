"""Training a list of sweep runs one after the other: done runs skipped, partial ones resumed,
a UserError recorded in the run's sweep_error.txt; the time left after each finished run.

The inline launcher and every job of the ``local`` / ``slurm`` launchers (``sweep/launch.py``)
train their runs here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.events import Eta, Progress, RunFailed, RunStart, in_run
from echoclr_cli.io import atomic_write_text
from echoclr_cli.sweep.plan import (
    CostModel,
    RunSpec,
    SweepPlan,
    cost_sample,
    epochs_left,
    run_config,
)
from echoclr_cli.sweep.state import ERROR_FILE, run_status

FinetuneFn = Callable[..., Any]


def emit(progress: Progress | None, event: Any) -> None:
    if progress is not None and event is not None:
        progress(event)


class TimeLeft:
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
    eta: TimeLeft | None = None,
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
        emit(progress, RunStart(index=k, total=len(todo), run=spec.run_dir, resume=resume))
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
            emit(progress, RunFailed(index=k, total=len(todo), run=spec.run_dir, error=str(e)))
            continue
        trained.append(spec.run_dir)
        if eta is not None:
            emit(progress, eta.after(spec, todo[k:]))
    return trained, failed
