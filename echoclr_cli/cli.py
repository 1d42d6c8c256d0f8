"""The `echoclr` command line. Parses, resolves the config, calls ONE core function, renders.

Shared options, config resolution and error handling live in cli_options.py. Core modules are imported inside each command so
that `echoclr --help` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from echoclr_cli import __version__, report, rundir
from echoclr_cli.cli_options import (
    AtSensOpt,
    AtThrOpt,
    BatchOpt,
    CalibrateOpt,
    CheckFor,
    ConfigOpt,
    DeviceOpt,
    DryRunOpt,
    EpochsOpt,
    ForceOpt,
    InitsOpt,
    JobsOpt,
    LauncherOpt,
    LowRatioLrsOpt,
    LrOpt,
    LrsOpt,
    OverwriteOpt,
    PretrainDirOpt,
    PretrainMissingOpt,
    ProfileOpt,
    QuietOpt,
    RatiosOpt,
    ResumeOpt,
    SeedOpt,
    SeedsOpt,
    SetOpt,
    ShardOpt,
    SlurmArrayParallelismOpt,
    SlurmGpusOpt,
    SlurmPartitionOpt,
    SlurmTimeOpt,
    TasksOpt,
    VerboseOpt,
    WorkersOpt,
    build_config,
    csv_list,
    handle_errors,
    path_str,
    training_flags,
)
from echoclr_cli.errors import UserError
from echoclr_cli.events import counter

app = typer.Typer(
    name="echoclr",
    help="EchoCLR for echocardiography: raw DICOM -> dataset -> self-supervised pretraining -> "
    "label-efficient classifiers -> AUROC/AUPR tables with confidence intervals.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"echoclr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ] = None,
    allow_failed_dataset: Annotated[
        bool,
        typer.Option(
            "--allow-failed-dataset",
            help="Use a dataset whose preprocess failed or did not finish (dataset.json status).",
        ),
    ] = False,
) -> None:
    """EchoCLR for echocardiography."""
    if allow_failed_dataset:
        os.environ["ECHOCLR_ALLOW_FAILED_DATASET"] = "1"  # read by data.manifest.load_manifest


# --------------------------------------------------------------------------- synth
@app.command()
def synth(
    out_dir: Annotated[
        Path, typer.Argument(help="Output directory for the synthetic archive.")
    ] = None,  # type: ignore[assignment]
    studies: Annotated[
        int | None, typer.Option("--studies", help="Number of studies (synth.studies).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (synth.seed).")] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="dicom | avi | mp4 (synth.format).")
    ] = None,
    preview: Annotated[
        Path | None, typer.Option("--preview", help="Also write a PNG montage of frames here.")
    ] = None,
    views: Annotated[
        str | None,
        typer.Option(
            "--views",
            help="Comma-separated views per study: plax,psax,a4c,a2c (synth.views; default plax).",
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    profile: ProfileOpt = "auto",
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a synthetic echo archive (DICOM/AVI/MP4 studies with known anatomy and labels)."""
    with handle_errors(verbose):
        flags = {"synth.studies": studies, "synth.seed": seed, "synth.format": fmt,
                 "synth.views": views}  # fmt: skip
        cfg = build_config(
            section="synth",
            config=config,
            sets=set_,
            profile=profile,
            verbose=verbose,
            quiet=quiet,
            flags=flags,
        )
        from echoclr_cli.data.synth import synthesize, write_preview

        out = out_dir if out_dir is not None else cfg.paths.raw
        with report.progress("synth") as on_event:
            res = synthesize(cfg, out, progress=counter(on_event, "synth"))
        if preview is not None:
            write_preview(out, preview)
        report.show_synth(res)


# --------------------------------------------------------------------------- preprocess
@app.command()
def preprocess(
    input_dir: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            help="Raw archive: DICOM/video tree, EchoCLR or EchoNet layout, "
            "or synth output. Default: the embedded synthetic archive (paths.raw).",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Dataset dir to write (paths.data).")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="Label CSV keyed by study or patient id.")
    ] = None,
    layout: Annotated[
        str | None,
        typer.Option(
            "--layout",
            help="auto | dicom | video | echoclr | echonet | synth | mimic-echo | echonet-lvh.",
        ),
    ] = None,
    label_rule: Annotated[
        list[str] | None,
        typer.Option(
            "--label-rule",
            help="Label rule NAME=EXPRESSION over the label table (repeatable), e.g. "
            "'as=av_vmax >= 4 or av_mean_gradient >= 40 or ava <= 1.0'.",
        ),
    ] = None,
    label_preset: Annotated[
        list[str] | None,
        typer.Option(
            "--label-preset",
            help="Guideline label with your column names (repeatable): "
            "'as:vmax=COL,mean_gradient=COL,ava=COL' or 'lvh:lvmi=COL,sex=COL'.",
        ),
    ] = None,
    labels_long: Annotated[
        str | None,
        typer.Option(
            "--labels-long",
            help="Label table with one row per measurement: auto | yes | no | NAME_COL,VALUE_COL.",
        ),
    ] = None,
    workers: Annotated[
        str | None,
        typer.Option("--workers", help="Worker processes: N, or auto (all cores but one)."),
    ] = None,
    size: Annotated[int | None, typer.Option("--size", help="Output frame size in pixels.")] = None,
    external_after: Annotated[
        int | None, typer.Option("--external-after", help="Studies after this year -> ext_test.")
    ] = None,
    salt: Annotated[
        str | None,
        typer.Option("--salt", help="Salt for de-identifying hashes (default: a random secret)."),
    ] = None,
    allow_label_issues: Annotated[
        bool,
        typer.Option(
            "--allow-label-issues", help="Accept bad label values, duplicated or unmatched ids."
        ),
    ] = False,
    migrate: Annotated[
        Path | None,
        typer.Option("--migrate", help="Convert a dataset dir of the previous format, then exit."),
    ] = None,
    view_model: Annotated[
        Path | None,
        typer.Option(
            "--view-model",
            help="View classifier run on every video: a `finetune --task view` run dir, or a "
            "TorchScript/ONNX file with its .json class list beside it. Needs --keep-view.",
        ),
    ] = None,
    keep_view: Annotated[
        str | None, typer.Option("--keep-view", help="View class to keep, e.g. plax.")
    ] = None,
    view_min: Annotated[
        float | None,
        typer.Option("--view-min", help="Also require the kept view's probability >= this."),
    ] = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    profile: ProfileOpt = "auto",
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Raw archive -> de-identified, sector-masked 112x112 dataset (manifest.csv, videos/, skipped.csv)."""
    with handle_errors(verbose):
        if migrate is not None:
            from echoclr_cli.data.migrate import migrate_dataset

            done = migrate_dataset(migrate)
            report.info(f"migrated {migrate}: {done['videos']} videos, status {done['status']}")
            return
        flags = {
            "preprocess.input": path_str(input_dir),
            "preprocess.labels": path_str(labels),
            "preprocess.layout": layout,
            "preprocess.label_rules": list(label_rule) if label_rule else None,
            "preprocess.label_presets": list(label_preset) if label_preset else None,
            "preprocess.labels_long": labels_long,
            "preprocess.workers": workers,
            "preprocess.size": size,
            "preprocess.external_after": external_after,
            "preprocess.salt": salt,
            "preprocess.allow_label_issues": True if allow_label_issues else None,
            "preprocess.overwrite": True if overwrite else None,
            "preprocess.view_model": path_str(view_model),
            "preprocess.keep_view": keep_view,
            "preprocess.keep_view_min": view_min,
            "paths.data": path_str(output),
        }
        cfg = build_config(
            section="preprocess",
            config=config,
            sets=set_,
            profile=profile,
            verbose=verbose,
            quiet=quiet,
            flags=flags,
        )
        from echoclr_cli.data.view_filter import preprocess_with_view_filter
        from echoclr_cli.preprocess import size_set

        with report.progress("preprocess") as on_event:
            res, vf = preprocess_with_view_filter(  # = preprocess when no --view-model
                cfg,
                cfg.preprocess.input,
                cfg.paths.data,
                progress=counter(on_event, "preprocess"),
                size_explicit=size_set(size, set_, config),
            )
        report.show_preprocess(res)
        if vf is not None:
            report.info(
                f"view filter ({cfg.preprocess.keep_view}): kept {vf.kept}, filtered {vf.filtered} "
                f"(skipped.csv, reason view_filter); predicted {vf.predicted} video(s), "
                f"top classes {vf.by_pred}"
            )


# --------------------------------------------------------------------------- pretrain
@app.command()
def pretrain(
    method: Annotated[
        str | None,
        typer.Option("--method", "-m", help="simclr | mi-simclr | echoclr (pretrain.method)."),
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Dataset dir (paths.data).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run dir. Default: <paths.runs>/pretrain/<method>.")
    ] = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    force: ForceOpt = False,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    workers: WorkersOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    profile: ProfileOpt = "auto",
    device: DeviceOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Self-supervised pretraining: SimCLR, multi-instance SimCLR or EchoCLR."""
    with handle_errors(verbose):
        flags = training_flags("pretrain", epochs, batch_size, lr, seed, workers)
        flags.update({"pretrain.method": method, "paths.data": path_str(data)})
        cfg = build_config(
            section="pretrain",
            config=config,
            sets=set_,
            profile=profile,
            device=device,
            verbose=verbose,
            quiet=quiet,
            flags=flags,
        )
        from echoclr_cli.pretrain import run_pretrain

        with report.progress(f"pretrain {cfg.pretrain.method}") as on_event:
            res = run_pretrain(
                cfg,
                cfg.paths.data,
                out or rundir.pretrain_run_dir(cfg),
                resume=resume,
                overwrite=overwrite,
                force=force,
                progress=on_event,
            )
        report.info(f"pretraining done: {res.run_dir} (checkpoints/last.pt)")


# --------------------------------------------------------------------------- finetune
@app.command()
def finetune(
    data: Annotated[Path | None, typer.Option("--data", help="Dataset dir (paths.data).")] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task", "-t", help="Binary label column: as, lvh or any other (finetune.task)."
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="random | kinetics | an SSL run dir | a checkpoint file "
            "(ours, published EchoCLR, torchvision) (finetune.init).",
        ),
    ] = None,
    frac: Annotated[
        float | None,
        typer.Option("--frac", help="Fraction of labeled training studies, 0-1 (finetune.frac)."),
    ] = None,
    frac_seed: Annotated[
        int | None,
        typer.Option("--frac-seed", help="Seed of the nested study subsets (finetune.frac_seed)."),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights", help="Kinetics-400 weight file for --init kinetics (finetune.weights)."
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option("--mode", help="full | linear (frozen backbone) | lp-ft (finetune.mode)."),
    ] = None,
    monitor: Annotated[
        str | None,
        typer.Option("--monitor", help="Early stopping / best checkpoint: val_loss | val_auroc."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Run dir. Default: <paths.runs>/finetune/<task>-<init>-<frac>-s<seed>."
        ),
    ] = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    force: ForceOpt = False,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    workers: WorkersOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    profile: ProfileOpt = "auto",
    device: DeviceOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune a classifier on a label fraction; writes metrics.json with 95% CIs and predictions."""
    with handle_errors(verbose):
        flags = training_flags("finetune", epochs, batch_size, lr, seed, workers)
        flags.update(
            {
                "paths.data": str(data) if data else None,
                "finetune.task": task,
                "finetune.init": init,
                "finetune.frac": frac,
                "finetune.frac_seed": frac_seed,
                "finetune.weights": str(weights) if weights else None,
                "finetune.mode": mode,
                "finetune.monitor": monitor,
            }
        )
        cfg = build_config(
            section="finetune",
            config=config,
            sets=set_,
            profile=profile,
            device=device,
            verbose=verbose,
            quiet=quiet,
            flags=flags,
        )
        from echoclr_cli.finetune import follow_init_model, run_finetune, user_model_keys

        cfg, followed = follow_init_model(cfg, user_model_keys(config, set_))
        if followed:
            report.info(followed)
        run_dir = out or rundir.finetune_run_dir(cfg)
        with report.progress(f"finetune {cfg.finetune.task}") as progress:
            res = run_finetune(
                cfg,
                cfg.paths.data,
                run_dir,
                resume=resume,
                overwrite=overwrite,
                force=force,
                progress=progress,
            )
        from echoclr_cli.metrics import metrics_to_frame

        report.info(
            f"fine-tuned on {res.n_train_studies} studies ({res.n_train_positive_studies} positive), "
            f"best epoch {res.best_epoch}; run dir {res.run_dir}"
        )
        report.show_metrics(metrics_to_frame(res.metrics), f"{res.task}: metrics (95% CI)")


# --------------------------------------------------------------------------- evaluate
@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Fine-tune run dir (uses checkpoints/best.pt).")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Dataset dir (default: the one the run was trained on)."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            "--splits",
            help="Comma-separated splits, e.g. test,ext_test (default: evaluate.splits; val is "
            "always evaluated, its thresholds apply to the others).",
        ),
    ] = None,
    compare: Annotated[
        Path | None,
        typer.Option(
            "--compare", help="Another run dir: paired bootstrap + DeLong of the AUROC difference."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the evaluation folder here instead of RUN/eval/<name>/."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Folder name under RUN/eval/ (default: the splits, + the dataset when --data "
            "is not the run's, + vs-<run> with --compare).",
        ),
    ] = None,
    clips: Annotated[
        str | None,
        typer.Option(
            "--clips", help="Clips per video: a number or 'all' (evaluate.clips_per_video)."
        ),
    ] = None,
    bootstrap: Annotated[
        int | None,
        typer.Option("--bootstrap", help="Bootstrap resamples for CIs (evaluate.bootstrap)."),
    ] = None,
    at_sensitivity: AtSensOpt = None,
    at_threshold: AtThrOpt = None,
    calibrate: CalibrateOpt = None,
    workers: WorkersOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    profile: ProfileOpt = "auto",
    device: DeviceOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a fine-tuned run: video- and study-level metrics with 95% CIs, plots, comparison."""
    with handle_errors(verbose):
        flags = {
            "evaluate.clips_per_video": clips,  # "all" or a number (the config parses it)
            "evaluate.bootstrap": bootstrap,
            "evaluate.at_sensitivity": at_sensitivity,
            "evaluate.at_threshold": at_threshold,
            "evaluate.calibrate": calibrate,
            "runtime.workers": workers,
        }
        cfg = build_config(
            section="evaluate",
            config=config,
            sets=set_,
            profile=profile,
            device=device,
            verbose=verbose,
            quiet=quiet,
            flags=flags,
        )
        from echoclr_cli.evaluate import evaluate_run

        splits = [x.strip() for x in split.split(",") if x.strip()] if split is not None else None
        with report.progress("evaluate") as progress:
            res = evaluate_run(
                cfg=cfg,
                run_dir=run,
                data_dir=data,
                splits=splits,
                compare=compare,
                out_dir=out,
                name=name,
                progress=progress,
            )
        for note in res.notes:
            report.warn(note)
        report.show_metrics(res.table, f"{res.task}: {res.run_dir} ({res.checkpoint.name}), 95% CI")
        if res.comparison:
            report.show_comparison(res.comparison)
        report.info(f"wrote {len(res.files)} files to {res.out_dir}")


# --------------------------------------------------------------------------- predict
@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Fine-tune run dir.")],
    input_path: Annotated[
        Path,
        typer.Option(
            "--input", "-i", help="A dataset dir (manifest.csv) or raw DICOM/video files."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Video-level CSV; the study-level CSV gets a _study suffix."
        ),
    ] = Path("predictions.csv"),
    overwrite: OverwriteOpt = False,
    workers: WorkersOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    profile: ProfileOpt = "auto",
    device: DeviceOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Predict new, unlabeled studies (preprocessing raw files first when needed)."""
    with handle_errors(verbose):
        cfg = build_config(
            section="evaluate",
            config=config,
            sets=set_,
            profile=profile,
            device=device,
            verbose=verbose,
            quiet=quiet,
            flags={"runtime.workers": workers},
        )
        from echoclr_cli.predict import predict as run_predict

        with report.progress("predict") as progress:
            res = run_predict(cfg, run, input_path, out, overwrite=overwrite, progress=progress)
        report.info(
            f"predicted {res.n_videos} videos / {res.n_studies} studies -> {res.video_csv}, {res.study_csv}"
        )
        if res.original_ids_csv is not None:
            report.info(f"original ids of these rows (private, owner-only): {res.original_ids_csv}")


# --------------------------------------------------------------------------- sweep
@app.command()
def sweep(
    data: Annotated[Path | None, typer.Option("--data", help="Dataset dir (paths.data).")] = None,
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
    config: ConfigOpt = None,
    set_: SetOpt = None,
    profile: ProfileOpt = "auto",
    device: DeviceOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The label-efficiency grid: inits x label fractions x tasks x seeds, selected on val, one table."""
    with handle_errors(verbose):
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
        cfg = build_config(
            section="sweep",
            config=config,
            sets=set_,
            profile=profile,
            device=device,
            verbose=verbose,
            quiet=quiet,
            flags=flags,
        )
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
def check(
    data: Annotated[Path | None, typer.Option("--data", help="Dataset dir (paths.data).")] = None,
    task: Annotated[
        str | None, typer.Option("--task", "-t", help="Also check this label column.")
    ] = None,
    for_: Annotated[
        CheckFor | None,
        typer.Option("--for", help="Also check batches against this section's config."),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    profile: ProfileOpt = "auto",
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Preflight a dataset: files, leakage, splits, labels, one-class splits, zero-step loaders."""
    with handle_errors(verbose):
        cfg = build_config(
            section="check",
            config=config,
            sets=set_,
            profile=profile,
            verbose=verbose,
            quiet=quiet,
            flags={"paths.data": path_str(data)},
        )
        from echoclr_cli.check import run_check

        res = run_check(cfg, cfg.paths.data, task=task, section=for_.value if for_ else None)
        report.show_check(res)
        if not res.ok:
            raise typer.Exit(code=1)


# --------------------------------------------------------------------------- demo
@app.command()
def demo(
    root: Annotated[Path, typer.Option("--root", help="Where the demo writes everything.")] = Path(
        "demo"
    ),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    profile: ProfileOpt = "auto",
    device: DeviceOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The whole pipeline on synthetic data: synth, preprocess, pretrain x2, label-efficiency sweep."""
    with handle_errors(verbose):
        cfg = build_config(
            section="demo",
            config=config,
            sets=set_,
            profile=profile,
            device=device,
            verbose=verbose,
            quiet=quiet,
        )
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


# --------------------------------------------------------------------------- embed / explain / export
@app.command()
def embed(
    runs: Annotated[
        list[Path] | None,
        typer.Argument(help="Pretrain or fine-tune run dirs (best.pt, else last.pt)."),
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Dataset dir (paths.data).")] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output dir (one subdir per source).")
    ] = Path("embeddings"),
    init: Annotated[
        list[str] | None,
        typer.Option("--init", help="Also embed with an init: random | kinetics (repeatable)."),
    ] = None,
    split: Annotated[
        str, typer.Option("--split", "--splits", help="Comma-separated splits to embed.")
    ] = "train,val,test,ext_test",
    probe: Annotated[
        list[str] | None,
        typer.Option(
            "--probe", help="Label: logistic regression on train, AUROC + CI on the rest."
        ),
    ] = None,
    map_: Annotated[
        str, typer.Option("--map", help="2-D map: auto (UMAP if installed) | umap | pca.")
    ] = "auto",
    clip_len: Annotated[
        int | None, typer.Option("--clip-len", help="Frames per clip (default: the run's own).")
    ] = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    profile: ProfileOpt = "auto",
    device: DeviceOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Frozen backbone embeddings of runs/inits: .npy + index CSV, 2-D map, summary, label probe."""
    with handle_errors(verbose):
        cfg = build_config(
            section="evaluate",
            config=config,
            sets=set_,
            profile=profile,
            device=device,
            verbose=verbose,
            quiet=quiet,
            flags={"paths.data": path_str(data)},
        )
        from echoclr_cli.embed import run_embed

        all_splits = [x.strip() for x in split.split(",") if x.strip()]
        with report.progress("embed") as progress:
            res = run_embed(
                cfg,
                sources=[*(runs or []), *(init or [])],
                data_dir=cfg.paths.data,
                out_dir=out,
                splits=all_splits,
                probe_labels=probe or [],
                map_method=map_,
                clip_len=clip_len,
                overwrite=overwrite,
                progress=progress,
            )
        rows = [
            [r.source, r.colouring, r.n, r.silhouette, r.knn_auroc]
            for r in res.summary.itertuples()
        ]
        report.show(
            report.table(
                "embedding summary", ["source", "colouring", "n", "silhouette", "kNN AUROC"], rows
            )
        )
        if res.probe is not None:
            p = res.probe
            auc = p[p["metric"] == "auroc"]
            rows = [
                [
                    r.source,
                    r.label,
                    r.split,
                    r.level,
                    report.fmt_ci(r.value, r.ci_low, r.ci_high),
                    r.n,
                ]
                for r in auc.itertuples()
            ]
            report.show(
                report.table(
                    "probe AUROC (95% CI)",
                    ["source", "label", "split", "level", "AUROC", "n"],
                    rows,
                )
            )
        report.info(f"wrote {len(res.files)} files to {res.out_dir}")


@app.command()
def explain(
    run: Annotated[Path, typer.Argument(help="Fine-tune run dir.")],
    data: Annotated[Path | None, typer.Option("--data", help="Dataset dir (paths.data).")] = None,
    video: Annotated[
        list[str] | None, typer.Option("--video", help="video_id to explain (repeatable).")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Split the videos come from.")] = "test",
    top: Annotated[
        int, typer.Option("--top", help="The K most confident TP/FP/TN/FN videos of the split.")
    ] = 0,
    method: Annotated[
        str, typer.Option("--method", help="gradcam | ig (integrated gradients).")
    ] = "gradcam",
    layer: Annotated[
        str, typer.Option("--layer", help="Grad-CAM layer: layer1..layer4.")
    ] = "layer4",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dir.")] = Path("explain"),
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    profile: ProfileOpt = "auto",
    device: DeviceOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """3-D Grad-CAM of the predicted class over whole videos: MP4, GIF and a PNG strip per video."""
    with handle_errors(verbose):
        cfg = build_config(
            section="evaluate",
            config=config,
            sets=set_,
            profile=profile,
            device=device,
            verbose=verbose,
            quiet=quiet,
            flags={"paths.data": path_str(data)},
        )
        from echoclr_cli.explain import run_explain

        with report.progress("explain") as progress:
            res = run_explain(
                cfg,
                run_dir=run,
                data_dir=cfg.paths.data,
                out_dir=out,
                video_ids=video or [],
                split=split,
                top=top,
                method=method,
                layer=layer,
                overwrite=overwrite,
                progress=progress,
            )
        rows = [
            [r.video_id, r.y_prob, r.predicted, r.outcome, r.strip] for r in res.table.itertuples()
        ]
        report.show(
            report.table(
                f"explain ({method})", ["video", "p", "predicted", "outcome", "strip"], rows
            )
        )
        for note in res.notes:
            report.warn(note)
        report.info(f"wrote {len(res.files)} files to {res.out_dir}")


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Fine-tune run dir (or any run with --encoder).")],
    format_: Annotated[str, typer.Option("--format", help="torchscript | onnx.")] = "onnx",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Model file (default: RUN/model.<pt|onnx>).")
    ] = None,
    encoder: Annotated[
        bool,
        typer.Option("--encoder", help="Export the backbone (features) instead of the classifier."),
    ] = False,
    frame_size: Annotated[
        int | None,
        typer.Option("--frame-size", help="Frame size in pixels (default: the run's)."),
    ] = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    profile: ProfileOpt = "auto",
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export a run as TorchScript or ONNX (dynamic batch) with its preprocessing contract (JSON)."""
    with handle_errors(verbose):
        cfg = build_config(
            section="evaluate",
            config=config,
            sets=set_,
            profile=profile,
            verbose=verbose,
            quiet=quiet,
        )
        from echoclr_cli.export import SUFFIX, export_run

        if out is None:
            out = run / f"{'encoder' if encoder else 'model'}{SUFFIX.get(format_, '.bin')}"
        res = export_run(
            cfg,
            run_dir=run,
            fmt=format_,
            out=out,
            encoder=encoder,
            frame_size=frame_size,
            overwrite=overwrite,
        )
        report.info(
            f"exported {res.contract['what']} -> {res.path} (+ {res.contract_path.name}); "
            f"max |exported - eager| = {res.max_abs_diff:.1e}"
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
