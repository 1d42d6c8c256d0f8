"""`echoclr sweep`, `echoclr check`, `echoclr demo` and `echoclr report`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import typer

from echoclr_cli import console as report
from echoclr_cli import rundir
from echoclr_cli.cli.app import app
from echoclr_cli.cli.common import (
    Common,
    Options,
    argument,
    command,
    command_options,
    data_option,
    handle_errors,
    operating_point_option,
    option,
    setting,
    verbose_option,
    workers_option,
)
from echoclr_cli.errors import UserError


# --------------------------------------------------------------------------- sweep
@dataclass(frozen=True)
class SweepOptions(Options):
    """``echoclr sweep``: the grid (comma-separated lists), launcher and SLURM settings."""

    section = "sweep"

    data: Path | None = data_option()
    out: Path | None = option("--out", help="Sweep dir. Default: <paths.runs>/sweep.")
    ratios: str | None = setting(
        items=float,
        help="Label fractions, e.g. 0.01,0.1,1.0 ({key}).",
    )
    inits: str | None = setting(
        items=str,
        help="random,kinetics,simclr,mi-simclr,echoclr or auto = what is available.",
    )
    tasks: str | None = setting(items=str, help="Label columns, e.g. as,lvh ({key}).")
    lrs: str | None = setting(items=float, help="Learning rates above the low ratio ({key}).")
    low_ratio_lrs: str | None = setting(
        items=float,
        help="LR grid at ratio <= sweep.low_ratio (paper: 1e-5,1e-4,5e-4).",
    )
    seeds: str | None = setting(items=int, help="Seeds, e.g. 0,1,2 ({key}).")
    low_ratio_seeds: str | None = setting(
        items=int,
        help="Seeds at ratio <= sweep.low_ratio ({key}; default: --seeds).",
    )
    pretrain_dir: Path | None = setting(
        help="Where SSL runs live (default <paths.runs>/pretrain).",
    )
    pretrain_missing: bool = setting(
        help="Run missing SSL pretraining instead of stopping.",
        default=False,
    )
    shard: str | None = option(
        "--shard", help="Run only shard i/n of the grid (SLURM arrays, several GPUs)."
    )
    dry_run: bool = option(
        "--dry-run", help="Print the plan (done/pending, cost) and stop.", default=False
    )
    launcher: str | None = setting(
        help="inline (default): train here; local: submitit jobs on this machine; slurm: a "
        "job array (needs the \\[cluster] extra; {key}).",
    )
    jobs: int | None = setting(
        help="local/slurm: jobs (array tasks) for the runs; 0 = one per run (slurm), one "
        "per GPU (local).",
    )
    slurm_partition: str | None = option(
        "--slurm-partition", key="sweep.slurm.partition", help="SLURM partition ({key})."
    )
    slurm_time: int | None = option(
        "--slurm-time", key="sweep.slurm.time_min", help="Minutes per array task ({key})."
    )
    slurm_gpus: int | None = option(
        "--slurm-gpus", key="sweep.slurm.gpus", help="GPUs per array task ({key})."
    )
    slurm_array_parallelism: int | None = option(
        "--slurm-array-parallelism",
        key="sweep.slurm.array_parallelism",
        help="Array tasks running at once ({key}).",
    )
    workers: int | None = workers_option()


@command(SweepOptions)
def sweep(*, opts: SweepOptions, common: Common) -> None:
    """The label-efficiency grid: inits x label fractions x tasks x seeds, selected on val, one table."""
    cfg = common.resolve(section="sweep", flags=opts.flags(), data=True)
    from echoclr_cli.sweep import parse_shard, run_sweep

    with report.progress("sweep") as on_event:
        res = run_sweep(
            cfg=cfg,
            data_dir=cfg.paths.data,
            out_dir=opts.out or rundir.sweep_dir(cfg),
            shard=parse_shard(opts.shard) if opts.shard else None,
            dry_run=opts.dry_run,
            progress=on_event,
        )
    report.show_sweep(res)
    if res.failed:
        raise UserError(
            f"{len(res.failed)} run(s) failed", fix="see sweep_error.txt in each run dir"
        )


# --------------------------------------------------------------------------- check
class CheckFor(StrEnum):
    """What ``echoclr check --for`` also checks batches against."""

    pretrain = "pretrain"
    finetune = "finetune"


@dataclass(frozen=True)
class CheckOptions(Options):
    """``echoclr check``."""

    data: Path | None = data_option()
    task: str | None = option("--task", "-t", help="Also check this label column.")
    for_: CheckFor | None = option(
        "--for", help="Also check batches against this section's config."
    )


@command(CheckOptions, device=False)
def check(*, opts: CheckOptions, common: Common) -> None:
    """Preflight a dataset: files, leakage, splits, labels, one-class splits, zero-step loaders."""
    cfg = common.resolve(section="check", flags=opts.flags(), data=True)
    from echoclr_cli.training.preflight import run_check

    section = opts.for_.value if opts.for_ else None
    res = run_check(cfg, cfg.paths.data, task=opts.task, section=section)
    report.show_check(res)
    if not res.ok:
        raise typer.Exit(code=1)


# --------------------------------------------------------------------------- demo
@dataclass(frozen=True)
class DemoOptions(Options):
    """``echoclr demo``."""

    root: Path = option("--root", help="Where the demo writes everything.", default=Path("demo"))


@command(DemoOptions)
def demo(*, opts: DemoOptions, common: Common) -> None:
    """The whole pipeline on synthetic data: synth, preprocess, pretrain x3, label-efficiency sweep.

    Pretrains SimCLR, MI-SimCLR and EchoCLR, then compares them with random init.
    """
    cfg = common.resolve(section="demo", flags=opts.flags())
    from echoclr_cli.demo import run_demo

    res = run_demo(cfg=cfg, root=opts.root, progress=report.progress, say=report.info)
    report.show_sweep(res.sweep)


# --------------------------------------------------------------------------- report
@dataclass(frozen=True)
class ReportOptions(Options):
    """``echoclr report PATH`` (no config: it reads what the run recorded)."""

    path: Path = argument(help="A fine-tune run dir or a sweep dir.")
    out: Path = option(
        "--out",
        "-o",
        help="HTML file; .md, _files/ and .model_card.json beside.",
        default=Path("report.html"),
    )
    data: Path | None = option("--data", help="Dataset dir (default: the one recorded in the run).")
    at_sensitivity: float | None = operating_point_option("at_sensitivity")
    at_threshold: float | None = operating_point_option("at_threshold")
    calibrate: str | None = operating_point_option("calibrate")
    bootstrap: int | None = option(
        "--bootstrap", help="Resamples when clinical metrics are recomputed."
    )
    overwrite: bool = option("--overwrite", help="Replace an existing report.", default=False)
    verbose: bool = verbose_option()


@app.command("report")
@command_options(ReportOptions)
def report_command(*, opts: ReportOptions) -> None:
    """Self-contained HTML report (+ Markdown, model card) with a TRIPOD+AI checklist."""
    with handle_errors(opts.verbose):
        from echoclr_cli.report.html import build_report

        res = build_report(
            opts.path, opts.out, data_dir=opts.data, overwrite=opts.overwrite,
            progress=report.info, at_sensitivity=opts.at_sensitivity,
            at_threshold=opts.at_threshold, calibrate=opts.calibrate, n_boot=opts.bootstrap,
        )  # fmt: skip
        report.info(
            f"wrote {res.html} ({res.n_figures} figures embedded), {res.markdown}, {res.model_card}"
        )
