"""`echoclr embed`, `echoclr explain` and `echoclr export`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from echoclr_cli import console as report
from echoclr_cli.cli.common import (
    Common,
    Options,
    argument,
    command,
    data_option,
    option,
    overwrite_option,
    parse_list,
)


# --------------------------------------------------------------------------- embed
@dataclass(frozen=True)
class EmbedOptions(Options):
    """``echoclr embed [RUNS]...``."""

    runs: list[Path] | None = argument(
        help="Pretrain or fine-tune run dirs (best.pt, else last.pt).", default=None
    )
    data: Path | None = data_option()
    out: Path = option(
        "--out", "-o", help="Output dir (one subdir per source).", default=Path("embeddings")
    )
    init: list[str] | None = option(
        "--init", help="Also embed with an init: random | kinetics (repeatable)."
    )
    split: str = option(
        "--split",
        "--splits",
        help="Comma-separated splits to embed.",
        default="train,val,test,ext_test",
    )
    probe: list[str] | None = option(
        "--probe", help="Label: logistic regression on train, AUROC + CI on the rest."
    )
    map_: str = option(
        "--map", help="2-D map: auto (UMAP if installed) | umap | pca.", default="auto"
    )
    clip_len: int | None = option("--clip-len", help="Frames per clip (default: the run's own).")
    overwrite: bool = overwrite_option()


@command(EmbedOptions)
def embed(*, opts: EmbedOptions, common: Common) -> None:
    """Frozen backbone embeddings of runs/inits: .npy + index CSV, 2-D map, summary, label probe."""
    cfg = common.resolve(section="evaluate", flags=opts.flags(), data=True)
    from echoclr_cli.analysis.embed import run_embed

    splits = parse_list(opts.split, str, "--split")
    with report.progress("embed") as progress:
        res = run_embed(
            cfg,
            sources=[*(opts.runs or []), *(opts.init or [])],
            data_dir=cfg.paths.data,
            out_dir=opts.out,
            splits=splits,
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


# --------------------------------------------------------------------------- explain
@dataclass(frozen=True)
class ExplainOptions(Options):
    """``echoclr explain RUN``."""

    run: Path = argument(help="Fine-tune run dir.")
    data: Path | None = data_option()
    video: list[str] | None = option("--video", help="video_id to explain (repeatable).")
    split: str = option("--split", help="Split the videos come from.", default="test")
    top: int = option(
        "--top", help="The K most confident TP/FP/TN/FN videos of the split.", default=0
    )
    method: str = option("--method", help="gradcam | ig (integrated gradients).", default="gradcam")
    layer: str = option("--layer", help="Grad-CAM layer: layer1..layer4.", default="layer4")
    out: Path = option("--out", "-o", help="Output dir.", default=Path("explain"))
    overwrite: bool = overwrite_option()


@command(ExplainOptions)
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


# --------------------------------------------------------------------------- export
@dataclass(frozen=True)
class ExportOptions(Options):
    """``echoclr export RUN``."""

    run: Path = argument(help="Fine-tune run dir (or any run with --encoder).")
    format_: str = option("--format", help="torchscript | onnx.", default="onnx")
    out: Path | None = option("--out", "-o", help="Model file (default: RUN/model.<pt|onnx>).")
    encoder: bool = option(
        "--encoder", help="Export the backbone (features) instead of the classifier.", default=False
    )
    frame_size: int | None = option(
        "--frame-size", help="Frame size in pixels (default: the run's)."
    )
    overwrite: bool = overwrite_option()


@command(ExportOptions, device=False)
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
