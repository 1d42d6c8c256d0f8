"""`echoclr synth` and `echoclr preprocess`: archive -> dataset dir."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from echoclr_cli import report
from echoclr_cli.cli_app import app
from echoclr_cli.cli_options import (
    Common,
    OverwriteOpt,
    common_options,
    path_str,
)
from echoclr_cli.events import counter


# --------------------------------------------------------------------------- synth
@app.command()
@common_options(device=False)
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
    *,
    common: Common,
) -> None:
    """Write a synthetic echo archive (DICOM/AVI/MP4 studies with known anatomy and labels)."""
    flags = {"synth.studies": studies, "synth.seed": seed, "synth.format": fmt,
             "synth.views": views}  # fmt: skip
    cfg = common.resolve(section="synth", flags=flags)
    from echoclr_cli.data.synth import synthesize, write_preview

    out = out_dir if out_dir is not None else cfg.paths.raw
    with report.progress("synth") as on_event:
        res = synthesize(cfg, out, progress=counter(on_event, "synth"))
    if preview is not None:
        write_preview(out, preview)
    report.show_synth(res)


# --------------------------------------------------------------------------- preprocess
@app.command()
@common_options(device=False)
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
    *,
    common: Common,
) -> None:
    """Raw archive -> de-identified, sector-masked 112x112 dataset (manifest.csv, videos/, skipped.csv)."""
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
    cfg = common.resolve(section="preprocess", flags=flags)
    from echoclr_cli.data.view_filter import preprocess_with_view_filter
    from echoclr_cli.preprocess import size_set

    with report.progress("preprocess") as on_event:
        res, vf = preprocess_with_view_filter(  # = preprocess when no --view-model
            cfg,
            cfg.preprocess.input,
            cfg.paths.data,
            progress=counter(on_event, "preprocess"),
            size_explicit=size_set(size, common.set_, common.config),
        )
    report.show_preprocess(res)
    if vf is not None:
        report.info(
            f"view filter ({cfg.preprocess.keep_view}): kept {vf.kept}, filtered {vf.filtered} "
            f"(skipped.csv, reason view_filter); predicted {vf.predicted} video(s), "
            f"top classes {vf.by_pred}"
        )
