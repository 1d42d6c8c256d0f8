"""`echoclr evaluate` and `echoclr predict`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from echoclr_cli import console as report
from echoclr_cli.cli.common import (
    Common,
    Options,
    argument,
    command,
    operating_point_option,
    option,
    overwrite_option,
    parse_list,
    setting,
    workers_option,
)


# --------------------------------------------------------------------------- evaluate
@dataclass(frozen=True)
class EvaluateOptions(Options):
    """``echoclr evaluate RUN``."""

    section = "evaluate"

    run: Path = argument(help="Fine-tune run dir (uses checkpoints/best.pt).")
    data: Path | None = option(
        "--data", help="Dataset dir (default: the one the run was trained on)."
    )
    split: str | None = option(
        "--split",
        "--splits",
        help="Comma-separated splits, e.g. test,ext_test (default: evaluate.splits; val is "
        "always evaluated, its thresholds apply to the others).",
    )
    compare: Path | None = option(
        "--compare", help="Another run dir: paired bootstrap + DeLong of the AUROC difference."
    )
    out: Path | None = option(
        "--out", help="Write the evaluation folder here instead of RUN/eval/<name>/."
    )
    name: str | None = option(
        "--name",
        help="Folder name under RUN/eval/ (default: the splits, + the dataset when --data "
        "is not the run's, + vs-<run> with --compare).",
    )
    clips: str | None = option(
        "--clips",
        key="evaluate.clips_per_video",
        help="Clips per video: a number or 'all' ({key}).",
    )  # "all" or a number: the config parses it
    bootstrap: int | None = setting(help="Bootstrap resamples for CIs ({key}).")
    at_sensitivity: float | None = operating_point_option("at_sensitivity", keyed=True)
    at_threshold: float | None = operating_point_option("at_threshold", keyed=True)
    calibrate: str | None = operating_point_option("calibrate", keyed=True)
    workers: int | None = workers_option()


@command(EvaluateOptions)
def evaluate(*, opts: EvaluateOptions, common: Common) -> None:
    """Evaluate a fine-tuned run: video- and study-level metrics with 95% CIs, plots, comparison."""
    cfg = common.resolve(section="evaluate", flags=opts.flags(), data=opts.data, run=opts.run)
    from echoclr_cli.inference.evaluate import evaluate_run

    splits = parse_list(opts.split, str, "--split") if opts.split is not None else None
    with report.progress("evaluate") as progress:
        res = evaluate_run(
            cfg=cfg,
            run_dir=opts.run,
            data_dir=opts.data,
            splits=splits,
            compare=opts.compare,
            out_dir=opts.out,
            name=opts.name,
            progress=progress,
        )
    for note in res.notes:
        report.warn(note)
    report.show_metrics(res.table, f"{res.task}: {res.run_dir} ({res.checkpoint.name}), 95% CI")
    if res.comparison:
        report.show_comparison(res.comparison)
    report.info(f"wrote {len(res.files)} files to {res.out_dir}")


# --------------------------------------------------------------------------- predict
@dataclass(frozen=True)
class PredictOptions(Options):
    """``echoclr predict RUN --input ...``."""

    run: Path = argument(help="Fine-tune run dir.")
    input_path: Path = option(
        "--input", "-i", help="A dataset dir (manifest.csv) or raw DICOM/video files.", default=...
    )
    out: Path = option(
        "--out",
        "-o",
        help="Video-level CSV; the study-level CSV gets a _study suffix, the private ids "
        "(AccessionNumber, PatientID, original file; mode 0600) a .private suffix.",
        default=Path("predictions.csv"),
    )
    threshold: str | None = option(
        "--threshold",
        help="Adds y_pred (0/1): 'val' = the run's operating point chosen on validation "
        "(Youden; the default when the run has one), or a probability, e.g. 0.5.",
    )
    keep_data: Path | None = option(
        "--keep-data",
        help="Raw input: preprocess it into this folder and keep it (default: a temporary "
        "folder, removed afterwards).",
    )
    overwrite: bool = overwrite_option()
    workers: int | None = workers_option()


@command(PredictOptions)
def predict(*, opts: PredictOptions, common: Common) -> None:
    """Predict new, unlabeled studies (preprocessing raw files first when needed)."""
    cfg = common.resolve(section="evaluate", flags=opts.flags(), run=opts.run)
    from echoclr_cli.inference.predict import predict as run_predict

    with report.progress("predict") as progress:
        res = run_predict(
            cfg,
            opts.run,
            opts.input_path,
            opts.out,
            overwrite=opts.overwrite,
            progress=progress,
            keep_data=opts.keep_data,
            threshold=opts.threshold,
        )
    if res.skipped:
        counts = ", ".join(f"{reason} {n}" for reason, n in res.skipped.items())
        where = (
            f"{res.data_dir}/skipped.csv" if res.data_dir else "--keep-data DIR keeps skipped.csv"
        )
        report.warn(f"skipped {sum(res.skipped.values())} input file(s): {counts} ({where})")
    for note in res.notes:
        report.warn(note)
    report.info(
        f"predicted {res.n_videos} videos / {res.n_studies} studies -> {res.video_csv}, {res.study_csv}"
    )
    if res.thresholds is not None:
        t = res.thresholds
        why = (
            "the run's operating point chosen on validation (Youden)"
            if res.threshold_source == "val"
            else "--threshold"
        )
        report.info(
            f"y_pred = y_prob >= {t['video']:.4g} (videos), {t['study']:.4g} (studies): {why}"
        )
    if res.original_ids_csv is not None:
        report.info(
            f"AccessionNumber/PatientID of these rows (private, owner-only): {res.original_ids_csv}"
        )
