"""`echoclr sweep`, `echoclr check`, `echoclr demo` and `echoclr report`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from echoclr_cli import console as report
from echoclr_cli import rundir
from echoclr_cli.cli.app import app
from echoclr_cli.cli.common import (
    AT_SENSITIVITY_HELP,
    AT_THRESHOLD_HELP,
    CALIBRATE_HELP,
    Common,
    DataOpt,
    Options,
    VerboseOpt,
    WorkersOpt,
    command_options,
    common_options,
    handle_errors,
    key_option,
)
from echoclr_cli.errors import UserError


# --------------------------------------------------------------------------- sweep
@dataclass(frozen=True)
class SweepOptions(Options):
    """``echoclr sweep``: the grid (comma-separated lists), launcher and SLURM settings."""

    data: DataOpt = None
    out: Annotated[
        Path | None, typer.Option("--out", help="Sweep dir. Default: <paths.runs>/sweep.")
    ] = None
    ratios: Annotated[
        str | None,
        key_option(
            "sweep.ratios",
            "--ratios",
            help="Label fractions, e.g. 0.01,0.1,1.0 ({key}).",
            items=float,
        ),
    ] = None
    inits: Annotated[
        str | None,
        key_option(
            "sweep.inits",
            "--inits",
            help="random,kinetics,simclr,mi-simclr,echoclr or auto = what is available.",
            items=str,
        ),
    ] = None
    tasks: Annotated[
        str | None,
        key_option("sweep.tasks", "--tasks", help="Label columns, e.g. as,lvh ({key}).", items=str),
    ] = None
    lrs: Annotated[
        str | None,
        key_option(
            "sweep.lrs", "--lrs", help="Learning rates above the low ratio ({key}).", items=float
        ),
    ] = None
    low_ratio_lrs: Annotated[
        str | None,
        key_option(
            "sweep.low_ratio_lrs",
            "--low-ratio-lrs",
            help="LR grid at ratio <= sweep.low_ratio (paper: 1e-5,1e-4,5e-4).",
            items=float,
        ),
    ] = None
    seeds: Annotated[
        str | None,
        key_option("sweep.seeds", "--seeds", help="Seeds, e.g. 0,1,2 ({key}).", items=int),
    ] = None
    low_ratio_seeds: Annotated[
        str | None,
        key_option(
            "sweep.low_ratio_seeds",
            "--low-ratio-seeds",
            help="Seeds at ratio <= sweep.low_ratio ({key}; default: --seeds).",
            items=int,
        ),
    ] = None
    pretrain_dir: Annotated[
        Path | None,
        key_option(
            "sweep.pretrain_dir",
            "--pretrain-dir",
            help="Where SSL runs live (default <paths.runs>/pretrain).",
        ),
    ] = None
    pretrain_missing: Annotated[
        bool,
        key_option(
            "sweep.pretrain_missing",
            "--pretrain-missing",
            help="Run missing SSL pretraining instead of stopping.",
        ),
    ] = False
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard", help="Run only shard i/n of the grid (SLURM arrays, several GPUs)."
        ),
    ] = None
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (done/pending, cost) and stop.")
    ] = False
    launcher: Annotated[
        str | None,
        key_option(
            "sweep.launcher",
            "--launcher",
            help="inline (default): train here; local: submitit jobs on this machine; slurm: a "
            "job array (needs the \\[cluster] extra; {key}).",
        ),
    ] = None
    jobs: Annotated[
        int | None,
        key_option(
            "sweep.jobs",
            "--jobs",
            help="local/slurm: jobs (array tasks) for the runs; 0 = one per run (slurm), one "
            "per GPU (local).",
        ),
    ] = None
    slurm_partition: Annotated[
        str | None,
        key_option("sweep.slurm.partition", "--slurm-partition", help="SLURM partition ({key})."),
    ] = None
    slurm_time: Annotated[
        int | None,
        key_option("sweep.slurm.time_min", "--slurm-time", help="Minutes per array task ({key})."),
    ] = None
    slurm_gpus: Annotated[
        int | None,
        key_option("sweep.slurm.gpus", "--slurm-gpus", help="GPUs per array task ({key})."),
    ] = None
    slurm_array_parallelism: Annotated[
        int | None,
        key_option(
            "sweep.slurm.array_parallelism",
            "--slurm-array-parallelism",
            help="Array tasks running at once ({key}).",
        ),
    ] = None
    workers: WorkersOpt = None


@app.command()
@common_options()
@command_options(SweepOptions)
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

    data: DataOpt = None
    task: Annotated[
        str | None, typer.Option("--task", "-t", help="Also check this label column.")
    ] = None
    for_: Annotated[
        CheckFor | None,
        typer.Option("--for", help="Also check batches against this section's config."),
    ] = None


@app.command()
@common_options(device=False)
@command_options(CheckOptions)
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

    root: Annotated[Path, typer.Option("--root", help="Where the demo writes everything.")] = Path(
        "demo"
    )


@app.command()
@common_options()
@command_options(DemoOptions)
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

    path: Annotated[Path, typer.Argument(help="A fine-tune run dir or a sweep dir.")]
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="HTML file; .md, _files/ and .model_card.json beside."),
    ] = Path("report.html")
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Dataset dir (default: the one recorded in the run)."),
    ] = None
    at_sensitivity: Annotated[
        float | None, typer.Option("--at-sensitivity", help=AT_SENSITIVITY_HELP)
    ] = None
    at_threshold: Annotated[
        float | None, typer.Option("--at-threshold", help=AT_THRESHOLD_HELP)
    ] = None
    calibrate: Annotated[str | None, typer.Option("--calibrate", help=CALIBRATE_HELP)] = None
    bootstrap: Annotated[
        int | None,
        typer.Option("--bootstrap", help="Resamples when clinical metrics are recomputed."),
    ] = None
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing report.")] = (
        False
    )
    verbose: VerboseOpt = False


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
