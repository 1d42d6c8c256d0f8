"""The `echoclr` command line. Parses, resolves the config, calls ONE core function, renders.

This is the only module that imports typer. Core modules are imported inside each command so
that `echoclr --help` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer

from echoclr_cli import __version__, report
from echoclr_cli.config import Config, config_to_dict, load_config, parse_set, resolve_profile
from echoclr_cli.errors import Preempted, UserError

app = typer.Typer(
    name="echoclr",
    help="EchoCLR for echocardiography: raw DICOM -> dataset -> self-supervised pretraining -> "
    "label-efficient classifiers -> AUROC/AUPR tables with confidence intervals.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# --------------------------------------------------------------------------- shared options
ConfigOpt = Annotated[
    list[Path] | None,
    typer.Option("--config", "-c", help="YAML config file(s), applied in order over the profile."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override any config key, e.g. --set pretrain.temperature=0.1 (repeatable)."
    ),
]
ProfileOpt = Annotated[
    str,
    typer.Option(
        "--profile",
        help="Base settings: paper (published), demo (small CPU profile), or auto = paper when "
        "CUDA is used, demo otherwise.",
    ),
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N (runtime.device).")
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Print the resolved config and full tracebacks.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and final results.")]
EpochsOpt = Annotated[
    int | None, typer.Option("--epochs", help="Training epochs (<section>.epochs).")
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch-size", help="Batch size per process (<section>.batch_size).")
]
LrOpt = Annotated[
    float | None, typer.Option("--lr", help="Learning rate (<section>.optim.learning_rate).")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Global seed (runtime.seed).")]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", help="Data loader workers (runtime.workers).")
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue the run from checkpoints/last.pt.")
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Replace the outputs of an existing run dir (files we wrote only)."
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Resume even if the config or dataset changed.")
]


def _put(d: dict, dotted: str, value: Any) -> None:
    node = d
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def build_config(
    section: str | None,
    config: list[Path] | None,
    sets: list[str] | None,
    profile: str,
    device: str | None,
    verbose: bool,
    quiet: bool,
    flags: dict[str, Any] | None = None,
) -> Config:
    """Resolve the config: defaults < profile < --config YAML < flags < --set."""
    # Under torchrun only rank 0 talks (the engine also writes outputs from rank 0 only).
    report.set_quiet(quiet or int(os.environ.get("RANK", "0")) > 0)
    overrides: dict = {}
    for key, value in (flags or {}).items():
        if value is not None:
            _put(overrides, key, value)
    if device is not None:
        _put(overrides, "runtime.device", device)
    from echoclr_cli.config import deep_merge

    overrides = deep_merge(overrides, parse_set(sets or []))
    dev = (overrides.get("runtime") or {}).get("device", "auto")
    cfg = load_config(config, overrides, resolve_profile(profile, dev), prefer=section)
    if verbose:
        report.print_config(config_to_dict(cfg))
    return cfg


def training_flags(section: str, epochs, batch_size, lr, seed, workers) -> dict[str, Any]:
    return {
        f"{section}.epochs": epochs,
        f"{section}.batch_size": batch_size,
        f"{section}.optim.learning_rate": lr,
        "runtime.seed": seed,
        "runtime.workers": workers,
    }


@contextlib.contextmanager
def handle_errors(verbose: bool):
    """User errors -> one line + fix, exit 1; preemption -> exit 143; no traceback unless -v."""
    try:
        yield
    except UserError as e:
        if verbose:
            traceback.print_exc()
        report.error(e.message, e.fix)
        raise typer.Exit(code=e.code) from None
    except Preempted as e:
        report.warn(f"preempted ({e}); checkpoint saved, continue with --resume")
        raise typer.Exit(code=143) from None
    except KeyboardInterrupt:
        report.error("interrupted")
        raise typer.Exit(code=130) from None


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
) -> None:
    """EchoCLR for echocardiography."""


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
    config: ConfigOpt = None,
    set_: SetOpt = None,
    profile: ProfileOpt = "auto",
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a synthetic echo archive (DICOM/AVI/MP4 studies with known anatomy and labels)."""
    with handle_errors(verbose):
        cfg = build_config(
            "synth",
            config,
            set_,
            profile,
            None,
            verbose,
            quiet,
            {"synth.studies": studies, "synth.seed": seed, "synth.format": fmt},
        )
        from echoclr_cli.data.synth import synthesize, write_preview

        out = out_dir if out_dir is not None else cfg.paths.raw
        with report.count_progress("synth") as update:
            res = synthesize(cfg, out, progress=update)
        if preview is not None:
            write_preview(out, preview)
        report.info(
            f"wrote {res.n_studies} studies ({res.n_patients} patients, {res.n_cine} cine videos, "
            f"{res.n_files} files) to {res.out_dir}; labels: {res.labels_csv}"
        )


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
        typer.Option("--layout", help="auto | dicom | video | echoclr | echonet | synth."),
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes.")] = None,
    size: Annotated[int | None, typer.Option("--size", help="Output frame size in pixels.")] = None,
    external_after: Annotated[
        int | None, typer.Option("--external-after", help="Studies after this year -> ext_test.")
    ] = None,
    salt: Annotated[
        str | None, typer.Option("--salt", help="Salt for de-identifying hashes.")
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
        cfg = build_config(
            "preprocess",
            config,
            set_,
            profile,
            None,
            verbose,
            quiet,
            {
                "preprocess.input": str(input_dir) if input_dir else None,
                "preprocess.labels": str(labels) if labels else None,
                "preprocess.layout": layout,
                "preprocess.workers": workers,
                "preprocess.size": size,
                "preprocess.external_after": external_after,
                "preprocess.salt": salt,
                "preprocess.overwrite": True if overwrite else None,
                "paths.data": str(output) if output else None,
            },
        )
        from echoclr_cli.preprocess import preprocess as run_preprocess

        with report.count_progress("preprocess") as update:
            res = run_preprocess(cfg, cfg.preprocess.input, cfg.paths.data, progress=update)
        report.show_preprocess(res)


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
        flags["pretrain.method"] = method
        flags["paths.data"] = str(data) if data else None
        cfg = build_config("pretrain", config, set_, profile, device, verbose, quiet, flags)
        from echoclr_cli.pretrain import run_pretrain

        run_dir = out or cfg.paths.runs / "pretrain" / cfg.pretrain.method
        with report.training_progress(f"pretrain {cfg.pretrain.method}") as progress:
            res = run_pretrain(
                cfg,
                cfg.paths.data,
                run_dir,
                resume=resume,
                overwrite=overwrite,
                force=force,
                progress=progress,
            )
        report.info(f"pretraining done: {res.run_dir} (checkpoints/last.pt)")


def _csv_list(text: str | None, cast, option: str):
    if text is None:
        return None
    from echoclr_cli.sweep import parse_list

    return parse_list(text, cast, option)


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
        cfg = build_config("finetune", config, set_, profile, device, verbose, quiet, flags)
        from echoclr_cli.finetune import run_finetune

        ft = cfg.finetune
        init_name = Path(ft.init).name if ft.init not in ("random", "kinetics") else ft.init
        run_dir = (
            out
            or cfg.paths.runs
            / "finetune"
            / f"{ft.task}-{init_name}-{ft.frac:g}-s{cfg.runtime.seed}"
        )
        with report.training_progress(f"finetune {ft.task}") as progress:
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
        str, typer.Option("--split", "--splits", help="Comma-separated splits, e.g. test,ext_test.")
    ] = "test",
    compare: Annotated[
        Path | None,
        typer.Option(
            "--compare", help="Another run dir: paired bootstrap + DeLong of the AUROC difference."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write files here instead of into the run dir.")
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
        clips_v: Any = None
        if clips is not None:
            clips_v = clips if clips == "all" else clips
        cfg = build_config(
            "evaluate",
            config,
            set_,
            profile,
            device,
            verbose,
            quiet,
            {
                "evaluate.clips_per_video": clips_v,
                "evaluate.bootstrap": bootstrap,
                "runtime.workers": workers,
            },
        )
        from echoclr_cli.inference import evaluate_run

        splits = [x.strip() for x in split.split(",") if x.strip()]
        with report.training_progress("evaluate") as progress:
            res = evaluate_run(
                cfg, run, data, splits, compare=compare, out_dir=out, progress=progress
            )
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
            "evaluate", config, set_, profile, device, verbose, quiet, {"runtime.workers": workers}
        )
        from echoclr_cli.inference import predict as run_predict

        with report.training_progress("predict") as progress:
            res = run_predict(cfg, run, input_path, out, overwrite=overwrite, progress=progress)
        report.info(
            f"predicted {res.n_videos} videos / {res.n_studies} studies -> {res.video_csv}, {res.study_csv}"
        )


# --------------------------------------------------------------------------- sweep
@app.command()
def sweep(
    data: Annotated[Path | None, typer.Option("--data", help="Dataset dir (paths.data).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Sweep dir. Default: <paths.runs>/sweep.")
    ] = None,
    ratios: Annotated[
        str | None,
        typer.Option("--ratios", help="Label fractions, e.g. 0.01,0.1,1.0 (sweep.ratios)."),
    ] = None,
    inits: Annotated[
        str | None,
        typer.Option(
            "--inits", help="random,kinetics,simclr,mi-simclr,echoclr or auto = what is available."
        ),
    ] = None,
    tasks: Annotated[
        str | None, typer.Option("--tasks", help="Label columns, e.g. as,lvh (sweep.tasks).")
    ] = None,
    lrs: Annotated[
        str | None, typer.Option("--lrs", help="Learning rates above the low ratio (sweep.lrs).")
    ] = None,
    low_ratio_lrs: Annotated[
        str | None,
        typer.Option(
            "--low-ratio-lrs", help="LR grid at ratio <= sweep.low_ratio (paper: 1e-5,1e-4,5e-4)."
        ),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Seeds, e.g. 0,1,2 (sweep.seeds).")
    ] = None,
    pretrain_dir: Annotated[
        Path | None,
        typer.Option("--pretrain-dir", help="Where SSL runs live (default <paths.runs>/pretrain)."),
    ] = None,
    pretrain_missing: Annotated[
        bool,
        typer.Option("--pretrain-missing", help="Run missing SSL pretraining instead of stopping."),
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard", help="Run only shard i/n of the grid (SLURM arrays, several GPUs)."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (done/pending, cost) and stop.")
    ] = False,
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
            "paths.data": str(data) if data else None,
            "sweep.ratios": _csv_list(ratios, float, "--ratios"),
            "sweep.inits": _csv_list(inits, str, "--inits"),
            "sweep.tasks": _csv_list(tasks, str, "--tasks"),
            "sweep.lrs": _csv_list(lrs, float, "--lrs"),
            "sweep.low_ratio_lrs": _csv_list(low_ratio_lrs, float, "--low-ratio-lrs"),
            "sweep.seeds": _csv_list(seeds, int, "--seeds"),
            "sweep.pretrain_dir": str(pretrain_dir) if pretrain_dir else None,
            "sweep.pretrain_missing": True if pretrain_missing else None,
            "runtime.workers": workers,
        }
        cfg = build_config("sweep", config, set_, profile, device, verbose, quiet, flags)
        from echoclr_cli.sweep import parse_shard, run_sweep

        shard_t = parse_shard(shard) if shard else None
        sweep_dir = out or cfg.paths.runs / "sweep"
        with report.training_progress("sweep") as progress:
            res = run_sweep(
                cfg, cfg.paths.data, sweep_dir, shard=shard_t, dry_run=dry_run, progress=progress
            )
        if dry_run:
            for line in res.plan.summary(res.assigned):
                report.info(line)
            frame = res.plan.frame()
            cols = [c for c in ("run_dir", "status", "est_seconds") if c in frame.columns]
            assigned = {str(r.run_dir) for r in res.assigned}
            rows = frame[frame["run_dir"].astype(str).isin(assigned)][cols].values.tolist()
            report.show(report.table("plan", cols, rows))
            return
        report.info(f"trained {len(res.trained)} run(s) now; results in {sweep_dir}")
        report.show_sweep_tables(res.tables)
        for fig in res.figures:
            report.info(f"figure: {fig}")
        if res.failed:
            for run_dir, msg in res.failed:
                report.error(f"{run_dir}: {msg}")
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
        str | None,
        typer.Option("--for", help="pretrain | finetune: also check batches against this config."),
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
            "check",
            config,
            set_,
            profile,
            None,
            verbose,
            quiet,
            {"paths.data": str(data) if data else None},
        )
        if for_ not in (None, "pretrain", "finetune"):
            raise UserError(
                f"--for '{for_}' is not pretrain or finetune", fix="use --for pretrain|finetune"
            )
        from echoclr_cli.check import run_check

        res = run_check(cfg, cfg.paths.data, task=task, section=for_)
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
        cfg = build_config("sweep", config, set_, profile, device, verbose, quiet)
        from echoclr_cli.demo import run_demo

        res = run_demo(
            cfg,
            root,
            count_progress=report.count_progress,
            training_progress=report.training_progress,
            say=report.info,
        )
        report.show_sweep_tables(res.sweep.tables)
        for fig in res.sweep.figures:
            report.info(f"figure: {fig}")


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
            "evaluate", config, set_, profile, device, verbose, quiet, {"paths.data": data}
        )
        from echoclr_cli.embed import run_embed

        all_splits = [x.strip() for x in split.split(",") if x.strip()]
        with report.training_progress("embed") as progress:
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
            "evaluate", config, set_, profile, device, verbose, quiet, {"paths.data": data}
        )
        from echoclr_cli.explain import run_explain

        with report.training_progress("explain") as progress:
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
        cfg = build_config("evaluate", config, set_, profile, None, verbose, quiet)
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
