"""`echoclr evaluate` and `echoclr predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from echoclr_cli import report
from echoclr_cli.cli_app import app
from echoclr_cli.cli_options import (
    AtSensOpt,
    AtThrOpt,
    CalibrateOpt,
    Common,
    OverwriteOpt,
    WorkersOpt,
    common_options,
)


# --------------------------------------------------------------------------- evaluate
@app.command()
@common_options()
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
    *,
    common: Common,
) -> None:
    """Evaluate a fine-tuned run: video- and study-level metrics with 95% CIs, plots, comparison."""
    flags = {
        "evaluate.clips_per_video": clips,  # "all" or a number (the config parses it)
        "evaluate.bootstrap": bootstrap,
        "evaluate.at_sensitivity": at_sensitivity,
        "evaluate.at_threshold": at_threshold,
        "evaluate.calibrate": calibrate,
        "runtime.workers": workers,
    }
    cfg = common.resolve(section="evaluate", flags=flags)
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
@common_options()
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
    *,
    common: Common,
) -> None:
    """Predict new, unlabeled studies (preprocessing raw files first when needed)."""
    cfg = common.resolve(section="evaluate", flags={"runtime.workers": workers})
    from echoclr_cli.predict import predict as run_predict

    with report.progress("predict") as progress:
        res = run_predict(cfg, run, input_path, out, overwrite=overwrite, progress=progress)
    report.info(
        f"predicted {res.n_videos} videos / {res.n_studies} studies -> {res.video_csv}, {res.study_csv}"
    )
    if res.original_ids_csv is not None:
        report.info(f"original ids of these rows (private, owner-only): {res.original_ids_csv}")
