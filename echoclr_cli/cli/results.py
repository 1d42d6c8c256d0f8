"""`echoclr evaluate` and `echoclr predict`."""

from __future__ import annotations

from echoclr_cli import console as report
from echoclr_cli.cli.app import app
from echoclr_cli.cli.common import Common, command_options, common_options
from echoclr_cli.cli.params import EvaluateOptions, PredictOptions


# --------------------------------------------------------------------------- evaluate
@app.command()
@common_options()
@command_options(EvaluateOptions)
def evaluate(*, opts: EvaluateOptions, common: Common) -> None:
    """Evaluate a fine-tuned run: video- and study-level metrics with 95% CIs, plots, comparison."""
    cfg = common.resolve(section="evaluate", flags=opts.flags(), data=opts.data, run=opts.run)
    from echoclr_cli.inference.evaluate import evaluate_run

    split = opts.split
    splits = [x.strip() for x in split.split(",") if x.strip()] if split is not None else None
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
@app.command()
@common_options()
@command_options(PredictOptions)
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
