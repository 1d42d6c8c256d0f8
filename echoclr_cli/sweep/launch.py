"""Sweep launchers beyond ``inline``: the same runs as submitit jobs (``pip install 'echoclr[cluster]'``).

- ``local``: submitit's LocalExecutor, every job a subprocess of this machine, all started at once:
  ``sweep.jobs`` of them (0 = one per visible GPU, each job on its own GPU; 1 on CPU); the sweep
  waits for them, then aggregates here exactly as the inline launcher does (same results.csv).
- ``slurm``: one job array (one array task per job) with the ``sweep.slurm`` parameters, then one
  CPU job that aggregates once the array has ended (``--dependency=afterany``); the command
  returns after submitting. Every array task gets USR2 ``signal_delay_s`` before its time limit
  (and on preemption): submitit calls ``SweepJob.checkpoint`` and requeues the task, which skips
  its finished runs and resumes the partial one from ``checkpoints/last.pt``.

Jobs: the runs still to train in plan order, run ``i`` in job ``i mod n`` (``n = sweep.jobs``;
0 = one job per run for slurm, one per GPU for local). A job is ``train.train_runs`` on its runs,
so a UserError is recorded in the run's sweep_error.txt and the job goes on, as inline. Logs:
``SWEEP/submitit/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError, require_extra
from echoclr_cli.events import Note, Progress, RunFailed
from echoclr_cli.sweep.plan import RunSpec, SweepPlan
from echoclr_cli.sweep.results import aggregate_all
from echoclr_cli.sweep.train import train_runs

LOG_DIR = "submitit"


@dataclass
class LaunchOutcome:
    trained: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)  # slurm job ids


def require_submitit() -> Any:
    return require_extra("submitit", "sweep --launcher local|slurm")


def split_jobs(todo: list[RunSpec], jobs: int) -> list[list[RunSpec]]:
    """Run ``i`` of ``todo`` in job ``i mod n``; ``jobs`` 0 (or more than runs) = one per run."""
    n = len(todo) if jobs <= 0 else min(jobs, len(todo))
    return [todo[j::n] for j in range(n)] if n else []


class SweepJob:
    """One submitit job: ``train_runs`` on its runs; checkpointable (requeue resumes)."""

    def __init__(
        self, cfg: Config, data_dir: Path, out_dir: Path, runs: list[RunSpec], finetune_fn=None
    ):
        self.cfg, self.data_dir, self.out_dir = cfg, Path(data_dir), Path(out_dir)
        self.runs, self.finetune_fn = runs, finetune_fn

    def __call__(self) -> tuple[list[str], list[tuple[str, str]]]:
        return train_runs(
            self.cfg, self.data_dir, self.out_dir, self.runs, finetune_fn=self.finetune_fn
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on USR2 (time limit near, preemption): requeue this same job;
        the new attempt skips done runs and resumes the partial one from its last.pt."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class AggregateJob:
    """The slurm launcher's last job: results.csv, selection, tables and figures."""

    def __init__(self, cfg: Config, out_dir: Path, inits: list[str]):
        self.cfg, self.out_dir, self.inits = cfg, Path(out_dir), inits

    def __call__(self) -> int:
        results, *_ = aggregate_all(self.out_dir, self.cfg, inits=self.inits)
        return len(results)


def slurm_parameters(cfg: Config) -> dict[str, Any]:
    """submitit SlurmExecutor parameters of one array task, from ``sweep.slurm``."""
    s = cfg.sweep.slurm
    params: dict[str, Any] = {
        "job_name": s.job_name,
        "time": s.time_min,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": s.cpus,
        "array_parallelism": s.array_parallelism,
        "signal_delay_s": s.signal_delay_s,
    }
    if s.gpus:
        params["gpus_per_node"] = s.gpus
    for key, value in (("partition", s.partition), ("account", s.account), ("qos", s.qos)):
        if value:
            params[key] = value
    if s.mem_gb:
        params["mem"] = f"{s.mem_gb}GB"
    return params


def launch(
    launcher: str,
    cfg: Config,
    data_dir: Path,
    out_dir: Path,
    plan: SweepPlan,
    todo: list[RunSpec],
    progress: Progress | None = None,
    finetune_fn=None,
) -> LaunchOutcome:
    submitit = require_submitit()
    n_gpus = local_gpus(cfg) if launcher == "local" else 0
    jobs = cfg.sweep.jobs or (max(1, n_gpus) if launcher == "local" else 0)
    chunks = split_jobs(todo, jobs)
    folder = out_dir / LOG_DIR / "%j"
    jobs_of = [SweepJob(cfg, data_dir, out_dir, chunk, finetune_fn) for chunk in chunks]
    if launcher == "local":
        return _run_local(submitit, folder, jobs_of, progress, n_gpus)
    if launcher == "slurm":
        return _submit_slurm(submitit, cfg, out_dir, folder, plan, jobs_of, progress)
    raise UserError(f"unknown sweep launcher '{launcher}'", fix="use inline, local or slurm")


def local_gpus(cfg: Config) -> int:
    """GPUs the local launcher spreads its jobs over (0 for a CPU run)."""
    from echoclr_cli.runtime import cuda_available

    if cfg.runtime.device == "cpu" or not cuda_available():
        return 0
    import torch

    return torch.cuda.device_count()


def _run_local(
    submitit, folder: Path, jobs_of: list[SweepJob], progress, n_gpus: int = 0
) -> LaunchOutcome:
    """All jobs at once, job ``j`` on GPU ``j mod n_gpus`` (CUDA_VISIBLE_DEVICES)."""
    out = LaunchOutcome()
    if not jobs_of:
        return out
    ex = submitit.LocalExecutor(folder=folder)
    ex.update_parameters(timeout_min=60 * 24 * 30)
    jobs = []
    for j, job_fn in enumerate(jobs_of):
        if n_gpus:
            ex.update_parameters(gpus_per_node=1, visible_gpus=[j % n_gpus])
        jobs.append(ex.submit(job_fn))
    if progress is not None:
        progress(Note(f"{len(jobs)} local job(s) started; logs in {folder.parent}"))
    crashed = []
    for job, spec in zip(jobs, jobs_of, strict=True):
        try:
            trained, failed = job.result()
        except Exception as e:  # noqa: BLE001 - a crash of one job: the others still finish
            runs = ", ".join(r.run_dir for r in spec.runs)
            crashed.append(f"job {job.job_id} ({runs}): {_last_trace_line(e)}")
            continue
        out.trained += trained
        out.failed += failed
        for k, (run, err) in enumerate(failed, 1):
            if progress is not None:
                progress(RunFailed(index=k, total=len(failed), run=run, error=err))
    if crashed:
        raise UserError(
            f"{len(crashed)} sweep job(s) crashed: {crashed[0]}",
            fix=f"see the job logs in {folder.parent}; re-running the sweep resumes",
        )
    return out


def _submit_slurm(
    submitit, cfg: Config, out_dir: Path, folder: Path, plan: SweepPlan, jobs_of, progress
) -> LaunchOutcome:
    out = LaunchOutcome()
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=cfg.sweep.slurm.max_requeue)
    params = slurm_parameters(cfg)
    ex.update_parameters(**params)
    dependency = None
    if jobs_of:
        with ex.batch():
            jobs = [ex.submit(j) for j in jobs_of]
        array_id = str(jobs[0].job_id).split("_")[0]
        out.submitted.append(array_id)
        dependency = f"afterany:{array_id}"
    agg = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
    agg_params = {
        k: v for k, v in params.items() if k not in ("gpus_per_node", "array_parallelism")
    }
    agg_params.update(
        job_name=f"{params['job_name']}-aggregate",
        cpus_per_task=2,
        time=max(10, math.ceil(params["time"] / 4)),
    )
    if dependency:
        agg_params["dependency"] = dependency
    agg.update_parameters(**agg_params)
    out.submitted.append(str(agg.submit(AggregateJob(cfg, out_dir, list(plan.inits))).job_id))
    if progress is not None:
        n = len(jobs_of)
        progress(
            Note(
                f"submitted {n} array task(s) as job {out.submitted[0]} and the aggregation"
                f" job {out.submitted[-1]}; logs in {folder.parent}"
                if n
                else f"nothing to train; aggregation job {out.submitted[-1]}"
            )
        )
    return out


def _last_trace_line(e: BaseException) -> str:
    """The exception line of a failed job's traceback (submitit puts it between dashes)."""
    text = str(e)
    parts = text.split("-" * 22)
    trace = parts[1] if len(parts) >= 3 else text
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    return lines[-1] if lines else repr(e)
