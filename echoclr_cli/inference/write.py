"""The files of an evaluation, written the same way by a fine-tune's own final evaluation and by
``echoclr evaluate``: :func:`write_evaluation` turns per-video predictions of several splits into
``metrics.json``, ``predictions_{split}_{level}.csv`` and ``plots/``, as the run's Task says.

- binary: metrics with bootstrap CIs (``metrics.splits``), thresholds chosen on ``val`` and
  applied to the other splits, ROC/PR/confusion/calibration figures, and the clinical hook
  (``clinical.write.write_clinical``: calibration, operating points, subgroups);
- K-class: ``metrics.multiclass`` (accuracy, balanced accuracy, macro and per-class AUROC with
  class-stratified CIs), predictions with class names (``y_true``, ``y_pred``, ``prob_<class>``),
  ``confusion_{split}_{level}.csv`` + ``plots/confusion_{split}_{level}.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from echoclr_cli import rundir
from echoclr_cli.clinical.write import write_clinical
from echoclr_cli.config.schema import Config
from echoclr_cli.events import Progress, Status
from echoclr_cli.inference.run import Task
from echoclr_cli.io import atomic_write_csv, atomic_write_json
from echoclr_cli.metrics import splits as ev
from echoclr_cli.metrics.aggregate import aggregate_levels
from echoclr_cli.metrics.multiclass import (
    evaluate_multiclass_frame,
    levels_of,
    prob_columns,
    write_confusion,
)

Written = tuple[dict[str, Any], dict[str, dict[str, pd.DataFrame]], list[Path]]


def write_evaluation(
    cfg: Config,
    task: Task,
    video_by_split: dict[str, pd.DataFrame],
    out_dir: Path,
    history_csv: Path | None = None,
    manifest: pd.DataFrame | None = None,
    progress: Progress | None = None,
) -> Written:
    """Metrics, prediction CSVs and plots of per-video predictions of several splits (learning
    curves too when ``history_csv`` exists; ``manifest``: the subgroups of the clinical hook).
    Returns ``(metrics, levels_by_split, paths written)``."""
    if task.is_multiclass:
        return _write_multiclass(cfg, video_by_split, task.classes, out_dir, history_csv, progress)
    metrics, levels, paths = _write_binary(cfg, video_by_split, out_dir, history_csv, progress)
    paths += write_clinical(cfg, video_by_split, out_dir, manifest=manifest, metrics=metrics)
    return metrics, levels, paths


def write_predictions(
    levels_by_split: dict[str, dict[str, pd.DataFrame]], out_dir: Path
) -> list[Path]:
    """``predictions_{split}_{level}.csv`` for every split and level; returns the paths."""
    paths = []
    for split, levels in levels_by_split.items():
        for level, df in levels.items():
            path = rundir.predictions_csv(out_dir, split, level)
            atomic_write_csv(path, df)
            paths.append(path)
    return paths


def _write_binary(
    cfg: Config,
    video_by_split: dict[str, pd.DataFrame],
    out_dir: Path,
    history_csv: Path | None,
    progress: Progress | None,
) -> Written:
    """Thresholds are chosen on ``val`` (when in ``video_by_split``) and applied to the others.
    Writes ``metrics.json``, ``predictions_{split}_{video,study}.csv`` and ``plots/*.png``
    (ROC/PR with CI bands, confusion matrices, calibration, learning curves)."""
    out_dir = Path(out_dir)
    cb = (lambda msg: progress(Status(msg))) if progress else None
    metrics = ev.evaluate_predictions(video_by_split, cfg, progress=cb)
    levels_by_split = {split: aggregate_levels(df) for split, df in video_by_split.items()}
    paths = write_predictions(levels_by_split, out_dir)
    atomic_write_json(out_dir / rundir.METRICS, metrics)
    paths.append(out_dir / rundir.METRICS)
    if cfg.evaluate.plots:
        from echoclr_cli.metrics import plots  # matplotlib: only when plots are asked for

        plot_dir = out_dir / rundir.PLOTS
        e = cfg.evaluate
        paths += plots.plot_evaluation(
            levels_by_split,
            plot_dir,
            metrics.get("thresholds"),
            n_boot=e.bootstrap,
            seed=e.bootstrap_seed,
            ci=e.ci,
            unit=e.bootstrap_unit,
        )
        if history_csv is not None and Path(history_csv).exists():
            paths.append(plots.plot_history(history_csv, plot_dir / "history.png"))
    return metrics, levels_by_split, paths


def _write_multiclass(
    cfg: Config,
    video_by_split: dict[str, pd.DataFrame],
    classes: Sequence[str],
    out_dir: Path,
    history_csv: Path | None,
    progress: Progress | None,
) -> Written:
    """metrics.json, prediction CSVs (class names), confusion CSV/PNG for every split and level."""
    out_dir = Path(out_dir)
    classes = list(classes)
    e = cfg.evaluate
    metrics: dict[str, Any] = {}
    levels_by_split: dict[str, dict[str, pd.DataFrame]] = {}
    paths: list[Path] = []
    names = np.asarray(classes, dtype=object)
    for split, video in video_by_split.items():
        levels = levels_of(video, classes)
        levels_by_split[split] = levels
        metrics[split] = {}
        for level, df in levels.items():
            if progress is not None:
                progress(
                    Status(f"metrics {split}/{level}: {len(df)} rows, {e.bootstrap} resamples")
                )
            metrics[split][level] = evaluate_multiclass_frame(
                df, classes, e.bootstrap, e.ci, e.bootstrap_seed
            )
            public = df.copy()
            public["y_true"] = names[public["y_true"].to_numpy(dtype=np.int64)]
            public["y_pred"] = (
                names[df[prob_columns(classes)].to_numpy().argmax(axis=1)] if len(df) else []
            )
            path = rundir.predictions_csv(out_dir, split, level)
            atomic_write_csv(path, public)
            paths.append(path)
            png = out_dir / rundir.PLOTS / f"confusion_{split}_{level}.png" if e.plots else None
            paths += write_confusion(df, classes, out_dir / f"confusion_{split}_{level}.csv", png)
    metrics["thresholds"] = {}
    metrics["reasons"] = {}
    atomic_write_json(out_dir / rundir.METRICS, metrics)
    paths.append(out_dir / rundir.METRICS)
    if e.plots and history_csv is not None and Path(history_csv).exists():
        from echoclr_cli.metrics import plots  # matplotlib: only when plots are asked for

        paths.append(plots.plot_history(history_csv, out_dir / rundir.PLOTS / "history.png"))
    return metrics, levels_by_split, paths
