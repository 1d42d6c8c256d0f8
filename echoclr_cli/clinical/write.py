"""The ``"clinical"`` key of metrics.json: every split and level, subgroups, figures, flat tables."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from echoclr_cli.clinical.core import OPERATING_METRICS, ClinicalOptions, evaluate_level
from echoclr_cli.clinical.plots import plot_clinical
from echoclr_cli.clinical.subgroups import (
    _label_columns,
    subgroup_columns,
    subgroup_metrics,
    with_derived_columns,
)
from echoclr_cli.io import atomic_write_json
from echoclr_cli.metrics.aggregate import aggregate_levels


# --------------------------------------------------------------------------- whole evaluation
def clinical_metrics(
    pred_by_split: Mapping[str, pd.DataFrame],
    opts: ClinicalOptions,
    manifest: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Calibration, operating points and subgroups of every split (the ``"clinical"`` key).

    ``pred_by_split``: split -> per-video (or per-clip) predictions (``video_id, study_id,
    patient_id, y_true, y_prob``), as given to ``metrics.evaluate_predictions``. ``manifest``
    (optional): the dataset's manifest rows; its columns define the subgroups. Returns
    ``{"options", "levels": {level: evaluate_level(...)}, "subgroups": {split: {column: ...}},
    "subgroups_skipped": {column: why}}``.
    """
    levels_by_split = {s: aggregate_levels(df) for s, df in pred_by_split.items()}
    out: dict[str, Any] = {
        "options": {
            "at_sensitivity": opts.at_sensitivity,
            "at_threshold": opts.at_threshold,
            "calibrate": opts.calibrate,
            "n_bins": opts.n_bins,
            "bootstrap": opts.n_boot,
            "ci": opts.ci,
            "subgroup_min_n": opts.subgroup_min_n,
        },
        "levels": {},
    }
    for level in opts.levels:
        by_split = {s: lv[level] for s, lv in levels_by_split.items()}
        out["levels"][level] = evaluate_level(by_split.get("val"), by_split, opts)
    if manifest is not None and len(manifest):
        man = with_derived_columns(manifest)
        labels = _label_columns(manifest)
        cols, skipped = subgroup_columns(man, opts.subgroups, labels if not opts.subgroups else ())
        thr = out["levels"].get("study", {}).get("thresholds", {})
        out["subgroups"] = {
            split: subgroup_metrics(lv, man, cols, thr, opts)
            for split, lv in levels_by_split.items()
            if split != "val"
        }
        out["subgroups_skipped"] = skipped
    return out


def write_clinical(
    cfg: Any,
    video_by_split: Mapping[str, pd.DataFrame],
    out_dir: Path | str,
    manifest: pd.DataFrame | None = None,
    metrics: dict[str, Any] | None = None,
    **overrides: Any,
) -> list[Path]:
    """The evaluation hook: ``clinical_metrics`` into ``metrics.json`` (key ``"clinical"``) and,
    with ``cfg.evaluate.plots``, reliability and decision-curve figures into ``plots/``.

    ``metrics`` (the dict the evaluation returned; default: ``metrics.json`` as on disk) is
    copied, not changed: callers that tabulate it (``metrics_to_frame``) keep its split-only
    shape. ``overrides`` replace options from ``cfg.evaluate`` (``at_sensitivity`` ...).
    Returns the paths written.
    """
    out_dir = Path(out_dir)
    opts = ClinicalOptions.from_config(cfg, **overrides)
    result = clinical_metrics(video_by_split, opts, manifest)
    path = out_dir / "metrics.json"
    current = dict(metrics) if metrics is not None else json.loads(path.read_text())
    current["clinical"] = result
    atomic_write_json(path, current)
    paths = [path]
    if cfg.evaluate.plots:
        levels = {s: aggregate_levels(df) for s, df in video_by_split.items()}
        paths += plot_clinical(levels, result, out_dir / "plots")
    return paths


@dataclass
class ClinicalSummary:
    """Flat rows of a ``"clinical"`` dict for tables (report, sweep)."""

    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)
    operating: pd.DataFrame = field(default_factory=pd.DataFrame)
    subgroups: pd.DataFrame = field(default_factory=pd.DataFrame)


def summarize(clinical: Mapping[str, Any]) -> ClinicalSummary:
    """Long tables: calibration (split, level, variant, metric, value, ci_low, ci_high, n),
    operating points (split, level, point, threshold, metric, value, ci_low, ci_high, tp, fp,
    fn, tn) and subgroups (split, column, level, value, n, n_pos, metric, value, ci...)."""
    cal, ops, sub = [], [], []
    for level, body in clinical.get("levels", {}).items():
        for split, entry in body.get("splits", {}).items():
            for variant, cells in entry.get("calibration", {}).items():
                for metric, c in cells.items():
                    cal.append({"split": split, "level": level, "variant": variant,
                                "metric": metric, **c})  # fmt: skip
            for point, cells in entry.get("operating_points", {}).items():
                counts = {k: cells[k] for k in ("threshold", "tp", "fp", "fn", "tn")}
                for metric in OPERATING_METRICS:
                    ops.append({"split": split, "level": level, "point": point, **counts,
                                "metric": metric, **cells[metric]})  # fmt: skip
    for split, by_col in clinical.get("subgroups", {}).items():
        for col, body in by_col.items():
            for g in body["groups"]:
                base = {"split": split, "column": col, "level": body["level"],
                        "group": g["value"], "n": g["n"], "n_pos": g["n_pos"],
                        "warning": g.get("warning", "")}  # fmt: skip
                for metric in ("auroc", "ap", "brier"):
                    sub.append({**base, "metric": metric, **_cell(g[metric])})
                for metric in ("sensitivity", "specificity"):
                    if "youden" in g:
                        sub.append({**base, "metric": f"{metric}@youden",
                                    **_cell(g["youden"][metric])})  # fmt: skip
    return ClinicalSummary(pd.DataFrame(cal), pd.DataFrame(ops), pd.DataFrame(sub))


def _cell(c: Mapping[str, Any]) -> dict[str, Any]:
    return {k: c.get(k) for k in ("value", "ci_low", "ci_high")}
