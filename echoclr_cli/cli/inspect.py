"""`echoclr embed`, `echoclr explain` and `echoclr export`."""

from __future__ import annotations

from echoclr_cli import console as report
from echoclr_cli.cli.app import app
from echoclr_cli.cli.common import Common, command_options, common_options
from echoclr_cli.cli.params import EmbedOptions, ExplainOptions, ExportOptions


# --------------------------------------------------------------------------- embed / explain / export
@app.command()
@common_options()
@command_options(EmbedOptions)
def embed(*, opts: EmbedOptions, common: Common) -> None:
    """Frozen backbone embeddings of runs/inits: .npy + index CSV, 2-D map, summary, label probe."""
    cfg = common.resolve(section="evaluate", flags=opts.flags(), data=True)
    from echoclr_cli.analysis.embed import run_embed

    all_splits = [x.strip() for x in opts.split.split(",") if x.strip()]
    with report.progress("embed") as progress:
        res = run_embed(
            cfg,
            sources=[*(opts.runs or []), *(opts.init or [])],
            data_dir=cfg.paths.data,
            out_dir=opts.out,
            splits=all_splits,
            probe_labels=opts.probe or [],
            map_method=opts.map_,
            clip_len=opts.clip_len,
            overwrite=opts.overwrite,
            progress=progress,
        )
    rows = [
        [r.source, r.colouring, r.n, r.silhouette, r.knn_auroc] for r in res.summary.itertuples()
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
@common_options()
@command_options(ExplainOptions)
def explain(*, opts: ExplainOptions, common: Common) -> None:
    """3-D Grad-CAM of the predicted class over whole videos: MP4, GIF and a PNG strip per video."""
    cfg = common.resolve(section="evaluate", flags=opts.flags(), data=True, run=opts.run)
    from echoclr_cli.analysis.explain import run_explain

    with report.progress("explain") as progress:
        res = run_explain(
            cfg,
            run_dir=opts.run,
            data_dir=cfg.paths.data,
            out_dir=opts.out,
            video_ids=opts.video or [],
            split=opts.split,
            top=opts.top,
            method=opts.method,
            layer=opts.layer,
            overwrite=opts.overwrite,
            progress=progress,
        )
    rows = [[r.video_id, r.y_prob, r.predicted, r.outcome, r.strip] for r in res.table.itertuples()]
    report.show(
        report.table(
            f"explain ({opts.method})", ["video", "p", "predicted", "outcome", "strip"], rows
        )
    )
    for note in res.notes:
        report.warn(note)
    report.info(f"wrote {len(res.files)} files to {res.out_dir}")


@app.command()
@common_options(device=False)
@command_options(ExportOptions)
def export(*, opts: ExportOptions, common: Common) -> None:
    """Export a run as TorchScript or ONNX (dynamic batch) with its preprocessing contract (JSON)."""
    cfg = common.resolve(section="evaluate", flags=opts.flags(), run=opts.run)
    from echoclr_cli.inference.export import SUFFIX, export_run

    out = opts.out
    if out is None:
        out = (
            opts.run / f"{'encoder' if opts.encoder else 'model'}{SUFFIX.get(opts.format_, '.bin')}"
        )
    res = export_run(
        cfg,
        run_dir=opts.run,
        fmt=opts.format_,
        out=out,
        encoder=opts.encoder,
        frame_size=opts.frame_size,
        overwrite=opts.overwrite,
    )
    report.info(
        f"exported {res.contract['what']} -> {res.path} (+ {res.contract_path.name}); "
        f"max |exported - eager| = {res.max_abs_diff:.1e}"
    )
