"""`echoclr sweep`, `echoclr check`, `echoclr demo` and `echoclr report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from echoclr_cli import report, rundir
from echoclr_cli.cli_app import app
from echoclr_cli.cli_options import (
    AtSensOpt,
    AtThrOpt,
    CalibrateOpt,
    CheckFor,
    Common,
    DataOpt,
    DryRunOpt,
    InitsOpt,
    JobsOpt,
    LauncherOpt,
    LowRatioLrsOpt,
    LrsOpt,
    PretrainDirOpt,
    PretrainMissingOpt,
    RatiosOpt,
    SeedsOpt,
    ShardOpt,
    SlurmArrayParallelismOpt,
    SlurmGpusOpt,
    SlurmPartitionOpt,
    SlurmTimeOpt,
    TasksOpt,
    VerboseOpt,
    WorkersOpt,
    common_options,
    csv_list,
    handle_errors,
    path_str,
)
from echoclr_cli.errors import UserError


# --------------------------------------------------------------------------- sweep
@app.command()
@common_options()
def sweep(
    data: DataOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Sweep dir. Default: <paths.runs>/sweep.")
    ] = None,
    ratios: RatiosOpt = None,
    inits: InitsOpt = None,
    tasks: TasksOpt = None,
    lrs: LrsOpt = None,
    low_ratio_lrs: LowRatioLrsOpt = None,
    seeds: SeedsOpt = None,
    pretrain_dir: PretrainDirOpt = None,
    pretrain_missing: PretrainMissingOpt = False,
    shard: ShardOpt = None,
    dry_run: DryRunOpt = False,
    launcher: LauncherOpt = None,
    jobs: JobsOpt = None,
    slurm_partition: SlurmPartitionOpt = None,
    slurm_time: SlurmTimeOpt = None,
    slurm_gpus: SlurmGpusOpt = None,
    slurm_array_parallelism: SlurmArrayParallelismOpt = None,
    workers: WorkersOpt = None,
    *,
    common: Common,
) -> None:
    """The label-efficiency grid: inits x label fractions x tasks x seeds, selected on val, one table."""
    flags = {
        "paths.data": path_str(data),
        "sweep.ratios": csv_list(ratios, float, "--ratios"),
        "sweep.inits": csv_list(inits, str, "--inits"),
        "sweep.tasks": csv_list(tasks, str, "--tasks"),
        "sweep.lrs": csv_list(lrs, float, "--lrs"),
        "sweep.low_ratio_lrs": csv_list(low_ratio_lrs, float, "--low-ratio-lrs"),
        "sweep.seeds": csv_list(seeds, int, "--seeds"),
        "sweep.pretrain_dir": path_str(pretrain_dir),
        "sweep.pretrain_missing": True if pretrain_missing else None,
        "sweep.launcher": launcher,
        "sweep.jobs": jobs,
        "sweep.slurm.partition": slurm_partition,
        "sweep.slurm.time_min": slurm_time,
        "sweep.slurm.gpus": slurm_gpus,
        "sweep.slurm.array_parallelism": slurm_array_parallelism,
        "runtime.workers": workers,
    }
    cfg = common.resolve(section="sweep", flags=flags)
    from echoclr_cli.sweep import parse_shard, run_sweep

    with report.progress("sweep") as on_event:
        res = run_sweep(
            cfg=cfg,
            data_dir=cfg.paths.data,
            out_dir=out or rundir.sweep_dir(cfg),
            shard=parse_shard(shard) if shard else None,
            dry_run=dry_run,
            progress=on_event,
        )
    report.show_sweep(res)
    if res.failed:
        raise UserError(
            f"{len(res.failed)} run(s) failed", fix="see sweep_error.txt in each run dir"
        )


# --------------------------------------------------------------------------- check
@app.command()
@common_options(device=False)
def check(
    data: DataOpt = None,
    task: Annotated[
        str | None, typer.Option("--task", "-t", help="Also check this label column.")
    ] = None,
    for_: Annotated[
        CheckFor | None,
        typer.Option("--for", help="Also check batches against this section's config."),
    ] = None,
    *,
    common: Common,
) -> None:
    """Preflight a dataset: files, leakage, splits, labels, one-class splits, zero-step loaders."""
    cfg = common.resolve(section="check", flags={"paths.data": path_str(data)})
    from echoclr_cli.check import run_check

    res = run_check(cfg, cfg.paths.data, task=task, section=for_.value if for_ else None)
    report.show_check(res)
    if not res.ok:
        raise typer.Exit(code=1)


# --------------------------------------------------------------------------- demo
@app.command()
@common_options()
def demo(
    root: Annotated[Path, typer.Option("--root", help="Where the demo writes everything.")] = Path(
        "demo"
    ),
    *,
    common: Common,
) -> None:
    """The whole pipeline on synthetic data: synth, preprocess, pretrain x2, label-efficiency sweep."""
    cfg = common.resolve(section="demo")
    from echoclr_cli.demo import run_demo

    res = run_demo(cfg=cfg, root=root, progress=report.progress, say=report.info)
    report.show_sweep(res.sweep)


# --------------------------------------------------------------------------- report
@app.command("report")
def report_command(
    path: Annotated[Path, typer.Argument(help="A fine-tune run dir or a sweep dir.")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="HTML file; .md, _files/ and .model_card.json beside."),
    ] = Path("report.html"),
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Dataset dir (default: the one recorded in the run)."),
    ] = None,
    at_sensitivity: AtSensOpt = None,
    at_threshold: AtThrOpt = None,
    calibrate: CalibrateOpt = None,
    bootstrap: Annotated[
        int | None,
        typer.Option("--bootstrap", help="Resamples when clinical metrics are recomputed."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing report.")
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Self-contained HTML report (+ Markdown, model card) with a TRIPOD+AI checklist."""
    with handle_errors(verbose):
        from echoclr_cli.report_html import build_report

        res = build_report(
            path, out, data_dir=data, overwrite=overwrite, progress=report.info,
            at_sensitivity=at_sensitivity, at_threshold=at_threshold, calibrate=calibrate,
            n_boot=bootstrap,
        )  # fmt: skip
        report.info(
            f"wrote {res.html} ({res.n_figures} figures embedded), {res.markdown}, {res.model_card}"
        )
