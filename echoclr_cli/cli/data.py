"""`echoclr synth` and `echoclr preprocess`: archive -> dataset dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from echoclr_cli import console as report
from echoclr_cli.cli.common import (
    Common,
    Options,
    argument,
    command,
    option,
    overwrite_option,
    setting,
)
from echoclr_cli.cli.follow import FRAME_SIZE_KEY
from echoclr_cli.events import counter


# --------------------------------------------------------------------------- synth
@dataclass(frozen=True)
class SynthOptions(Options):
    """``echoclr synth OUT``: the archive's size, seed, format and views."""

    section = "synth"

    out_dir: Path | None = argument(
        help="Output directory for the synthetic archive.", default=None
    )
    studies: int | None = setting(help="Number of studies ({key}).")
    seed: int | None = setting(help="Random seed ({key}).")
    fmt: str | None = option("--format", key="synth.format", help="dicom | avi | mp4 ({key}).")
    preview: Path | None = option("--preview", help="Also write a PNG montage of frames here.")
    views: str | None = setting(
        help="Comma-separated views per study: plax,psax,a4c,a2c ({key}; default plax).",
    )


@command(SynthOptions, device=False)
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

    section = "preprocess"

    input_dir: Path | None = option(
        "--input",
        "-i",
        key="preprocess.input",
        help="Raw archive: DICOM/video tree, EchoCLR or EchoNet layout, "
        "or synth output. Default: the embedded synthetic archive (paths.raw).",
    )
    output: Path | None = option(
        "--output", "-o", key="paths.data", help="Dataset dir to write ({key})."
    )
    labels: Path | None = setting(
        help="Label CSV keyed by Accession Number, MRN/PatientID, StudyInstanceUID or Study "
        "Date + MRN (found from the column names; preprocess.label_key chooses).",
    )
    layout: str | None = setting(
        help="auto | dicom | video | echoclr | echonet | synth | mimic-echo | echonet-lvh.",
    )
    label_rule: list[str] | None = option(
        "--label-rule",
        key="preprocess.label_rules",
        help="Label rule NAME=EXPRESSION over the label table (repeatable), e.g. "
        "'as=av_vmax >= 4 or av_mean_gradient >= 40 or ava <= 1.0'.",
    )
    label_preset: list[str] | None = option(
        "--label-preset",
        key="preprocess.label_presets",
        help="Guideline label with your column names (repeatable): "
        "'as:vmax=COL,mean_gradient=COL,ava=COL' or 'lvh:lvmi=COL,sex=COL'.",
    )
    labels_long: str | None = setting(
        help="Label table with one row per measurement: auto | yes | no | NAME_COL,VALUE_COL.",
    )
    workers: str | None = setting(
        help="Worker processes: N, or auto (all cores but one).",
    )
    size: int | None = option("--size", key=FRAME_SIZE_KEY, help="Output frame size in pixels.")
    external_after: int | None = setting(
        help="Studies after this year -> ext_test.",
    )
    salt: str | None = setting(
        help="Salt for de-identifying hashes (default: a random secret).",
    )
    allow_label_issues: bool = setting(
        help="Accept label values that map to neither class (e.g. NA), duplicated or "
        "unmatched ids, a label file that matches no video.",
        default=False,
    )
    migrate: Path | None = option(
        "--migrate", help="Convert a dataset dir of the previous format, then exit."
    )
    view_model: Path | None = setting(
        help="View classifier run on every video: a `finetune --task view` run dir, or a "
        "TorchScript/ONNX file with its .json class list beside it. Needs --keep-view.",
    )
    keep_view: str | None = setting(help="View class to keep, e.g. plax.")
    view_min: float | None = option(
        "--view-min",
        key="preprocess.keep_view_min",
        help="Also require the kept view's probability >= this.",
    )
    overwrite: bool = overwrite_option("preprocess.overwrite")


@command(PreprocessOptions, device=False)
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
