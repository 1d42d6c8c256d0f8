"""`echoclr synth` and `echoclr preprocess`: archive -> dataset dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from echoclr_cli import console as report
from echoclr_cli.cli.app import app
from echoclr_cli.cli.common import (
    FRAME_SIZE_KEY,
    OVERWRITE_HELP,
    Common,
    Options,
    command_options,
    common_options,
    key_option,
)
from echoclr_cli.events import counter


# --------------------------------------------------------------------------- synth
@dataclass(frozen=True)
class SynthOptions(Options):
    """``echoclr synth OUT``: the archive's size, seed, format and views."""

    out_dir: Annotated[
        Path | None, typer.Argument(help="Output directory for the synthetic archive.")
    ] = None
    studies: Annotated[
        int | None, key_option("synth.studies", "--studies", help="Number of studies ({key}).")
    ] = None
    seed: Annotated[int | None, key_option("synth.seed", "--seed", help="Random seed ({key}).")] = (
        None
    )
    fmt: Annotated[
        str | None, key_option("synth.format", "--format", help="dicom | avi | mp4 ({key}).")
    ] = None
    preview: Annotated[
        Path | None, typer.Option("--preview", help="Also write a PNG montage of frames here.")
    ] = None
    views: Annotated[
        str | None,
        key_option(
            "synth.views",
            "--views",
            help="Comma-separated views per study: plax,psax,a4c,a2c ({key}; default plax).",
        ),
    ] = None


@app.command()
@common_options(device=False)
@command_options(SynthOptions)
def synth(*, opts: SynthOptions, common: Common) -> None:
    """Write a synthetic echo archive (DICOM/AVI/MP4 studies with known anatomy and labels)."""
    cfg = common.resolve(section="synth", flags=opts.flags())
    from echoclr_cli.synth.archive import synthesize, write_preview

    out = opts.out_dir if opts.out_dir is not None else cfg.paths.raw
    with report.progress("synth") as on_event:
        res = synthesize(cfg, out, progress=counter(on_event, "synth"))
    if opts.preview is not None:
        write_preview(out, opts.preview)
    report.show_synth(res)


# --------------------------------------------------------------------------- preprocess
@dataclass(frozen=True)
class PreprocessOptions(Options):
    """``echoclr preprocess``: input, layout, labels, workers, frame size, view filter."""

    input_dir: Annotated[
        Path | None,
        key_option(
            "preprocess.input",
            "--input",
            "-i",
            help="Raw archive: DICOM/video tree, EchoCLR or EchoNet layout, "
            "or synth output. Default: the embedded synthetic archive (paths.raw).",
        ),
    ] = None
    output: Annotated[
        Path | None,
        key_option("paths.data", "--output", "-o", help="Dataset dir to write ({key})."),
    ] = None
    labels: Annotated[
        Path | None,
        key_option(
            "preprocess.labels",
            "--labels",
            help="Label CSV keyed by Accession Number, MRN/PatientID, StudyInstanceUID or Study "
            "Date + MRN (found from the column names; preprocess.label_key chooses).",
        ),
    ] = None
    layout: Annotated[
        str | None,
        key_option(
            "preprocess.layout",
            "--layout",
            help="auto | dicom | video | echoclr | echonet | synth | mimic-echo | echonet-lvh.",
        ),
    ] = None
    label_rule: Annotated[
        list[str] | None,
        key_option(
            "preprocess.label_rules",
            "--label-rule",
            help="Label rule NAME=EXPRESSION over the label table (repeatable), e.g. "
            "'as=av_vmax >= 4 or av_mean_gradient >= 40 or ava <= 1.0'.",
        ),
    ] = None
    label_preset: Annotated[
        list[str] | None,
        key_option(
            "preprocess.label_presets",
            "--label-preset",
            help="Guideline label with your column names (repeatable): "
            "'as:vmax=COL,mean_gradient=COL,ava=COL' or 'lvh:lvmi=COL,sex=COL'.",
        ),
    ] = None
    labels_long: Annotated[
        str | None,
        key_option(
            "preprocess.labels_long",
            "--labels-long",
            help="Label table with one row per measurement: auto | yes | no | NAME_COL,VALUE_COL.",
        ),
    ] = None
    workers: Annotated[
        str | None,
        key_option(
            "preprocess.workers",
            "--workers",
            help="Worker processes: N, or auto (all cores but one).",
        ),
    ] = None
    size: Annotated[
        int | None, key_option(FRAME_SIZE_KEY, "--size", help="Output frame size in pixels.")
    ] = None
    external_after: Annotated[
        int | None,
        key_option(
            "preprocess.external_after",
            "--external-after",
            help="Studies after this year -> ext_test.",
        ),
    ] = None
    salt: Annotated[
        str | None,
        key_option(
            "preprocess.salt",
            "--salt",
            help="Salt for de-identifying hashes (default: a random secret).",
        ),
    ] = None
    allow_label_issues: Annotated[
        bool,
        key_option(
            "preprocess.allow_label_issues",
            "--allow-label-issues",
            help="Accept label values that map to neither class (e.g. NA), duplicated or "
            "unmatched ids, a label file that matches no video.",
        ),
    ] = False
    migrate: Annotated[
        Path | None,
        typer.Option("--migrate", help="Convert a dataset dir of the previous format, then exit."),
    ] = None
    view_model: Annotated[
        Path | None,
        key_option(
            "preprocess.view_model",
            "--view-model",
            help="View classifier run on every video: a `finetune --task view` run dir, or a "
            "TorchScript/ONNX file with its .json class list beside it. Needs --keep-view.",
        ),
    ] = None
    keep_view: Annotated[
        str | None,
        key_option("preprocess.keep_view", "--keep-view", help="View class to keep, e.g. plax."),
    ] = None
    view_min: Annotated[
        float | None,
        key_option(
            "preprocess.keep_view_min",
            "--view-min",
            help="Also require the kept view's probability >= this.",
        ),
    ] = None
    overwrite: Annotated[
        bool,
        key_option("preprocess.overwrite", "--overwrite", help=OVERWRITE_HELP),
    ] = False


@app.command()
@common_options(device=False)
@command_options(PreprocessOptions)
def preprocess(*, opts: PreprocessOptions, common: Common) -> None:
    """Raw archive -> de-identified, sector-masked 112x112 dataset (manifest.csv, videos/, skipped.csv)."""
    if opts.migrate is not None:
        from echoclr_cli.preprocess.migrate import migrate_dataset

        done = migrate_dataset(opts.migrate)
        report.info(f"migrated {opts.migrate}: {done['videos']} videos, status {done['status']}")
        return
    cfg = common.resolve(section="preprocess", flags=opts.flags())
    from echoclr_cli.preprocess.view_filter import preprocess_with_view_filter

    with report.progress("preprocess") as on_event:
        res, vf = preprocess_with_view_filter(  # = preprocess when no --view-model
            cfg,
            cfg.preprocess.input,
            cfg.paths.data,
            progress=counter(on_event, "preprocess"),
        )
    report.show_preprocess(res)
    if vf is not None:
        report.info(
            f"view filter ({cfg.preprocess.keep_view}): kept {vf.kept}, filtered {vf.filtered} "
            f"(skipped.csv, reason view_filter); predicted {vf.predicted} video(s), "
            f"top classes {vf.by_pred}"
        )
