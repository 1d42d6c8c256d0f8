"""`echoclr sweep`, `echoclr check`, `echoclr demo` and `echoclr report`."""

from __future__ import annotations

import typer

from echoclr_cli import console as report
from echoclr_cli import rundir
from echoclr_cli.cli.app import app
from echoclr_cli.cli.common import Common, command_options, common_options, handle_errors
from echoclr_cli.cli.params import CheckOptions, DemoOptions, ReportOptions, SweepOptions
from echoclr_cli.errors import UserError


# --------------------------------------------------------------------------- sweep
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
@app.command()
@common_options(device=False)
@command_options(CheckOptions)
def check(*, opts: CheckOptions, common: Common) -> None:
    """Preflight a dataset: files, leakage, splits, labels, one-class splits, zero-step loaders."""
    cfg = common.resolve(section="check", flags=opts.flags(), data=True)
    from echoclr_cli.check import run_check

    section = opts.for_.value if opts.for_ else None
    res = run_check(cfg, cfg.paths.data, task=opts.task, section=section)
    report.show_check(res)
    if not res.ok:
        raise typer.Exit(code=1)


# --------------------------------------------------------------------------- demo
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
