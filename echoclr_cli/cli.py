"""The `echoclr` command line. Parses, resolves the config, calls ONE core function, renders.

This is the only module that imports typer. Core modules are imported inside each command so
that `echoclr --help` stays fast.
"""

from __future__ import annotations

import contextlib
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
    report.set_quiet(quiet)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
