"""The metrics.json table: metrics with CIs of every split and level, thresholds chosen on val."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from echoclr_cli.metrics.aggregate import aggregate_levels
from echoclr_cli.metrics.bootstrap import bootstrap_ci
from echoclr_cli.metrics.clustered import resolve_clusters
from echoclr_cli.metrics.core import (
    COUNT_METRICS,
    _clean,
    choose_thresholds,
    compute_metrics_with_reasons,
    one_class_reason,
)


def evaluate_frame(
    df: pd.DataFrame,
    thresholds: Mapping[str, float | None] | None,
    n_boot: int,
    ci: float,
    seed: int,
    unit: str = "item",
) -> tuple[dict[str, dict[str, float | None]], dict[str, str]]:
    """Metrics with CIs for one aggregated prediction frame (``y_true``, ``y_prob`` columns).

    ``unit`` (``metrics.clustered.resolve_clusters``): ``"patient"`` resamples whole patients
    (the frame's ``patient_id``; the study where there is none), ``"study"`` whole studies (the
    ``study_id`` of video rows), ``"item"`` the frame's rows. Returns ``({metric: {"value",
    "ci_low", "ci_high", "n"[, "ci_unit"]}}, {metric: reason})``; ``ci_unit`` (cells with a
    bootstrap) names what was resampled: ``patient``, ``study``, ``video``, or ``study (no
    patient id)`` when patients were asked for and the frame has none. NaN is written as None;
    ``n`` and ``n_pos`` are ints. Counts (``n, n_pos, prevalence``) carry no CI.
    """
    y, p = df["y_true"].to_numpy(), df["y_prob"].to_numpy()
    clusters, ci_unit = resolve_clusters(df, unit)
    values, reasons = compute_metrics_with_reasons(y, p, thresholds)
    boot_names = [k for k in values if k not in COUNT_METRICS and math.isfinite(values[k])]
    intervals: dict[str, tuple[float, float]] = {}
    if n_boot > 0 and boot_names:
        intervals = bootstrap_ci(
            y, p, boot_names, n=n_boot, ci=ci, seed=seed, thresholds=thresholds,
            clusters=clusters,
        )  # fmt: skip
    nan_ci = (math.nan, math.nan)
    table = {
        k: {
            "value": int(v) if k in ("n", "n_pos") else _clean(v),
            "ci_low": _clean(intervals.get(k, nan_ci)[0]),
            "ci_high": _clean(intervals.get(k, nan_ci)[1]),
            "n": len(y),
            **({"ci_unit": ci_unit} if k in intervals else {}),
        }
        for k, v in values.items()
    }
    return table, reasons


def evaluate_predictions(
    pred_by_split: Mapping[str, pd.DataFrame],
    cfg: Any,
    progress: Callable[[str], None] | None = None,
    thresholds: Mapping[str, Mapping[str, float | None]] | None = None,
) -> dict[str, Any]:
    """Metrics of every split at video and study level, in the ``metrics.json`` shape.

    ``pred_by_split``: split -> per-video (or per-clip) predictions with ``video_id, study_id,
    patient_id, y_true, y_prob``. Operating thresholds (``choose_thresholds``) are chosen on the
    ``val`` split when present, separately per level, and applied to every other split
    (``f1@youden`` ...; never in-sample to val). ``thresholds`` (``{level: {name: t}}``, e.g. the
    ``"thresholds"`` of a fine-tuning run's metrics.json) is used instead of choosing, so a later
    evaluation of test alone applies the thresholds chosen at training time. With neither, only
    the 0.5 operating point is reported. CIs use ``cfg.evaluate.bootstrap`` stratified resamples
    (0 = no CI), level ``cfg.evaluate.ci``, seed ``cfg.evaluate.bootstrap_seed``; CIs of both
    levels resample by ``cfg.evaluate.bootstrap_unit`` (patients by default). ``progress``
    (optional) receives one status line per split and level before its metrics are computed.

    Returns ``{split: {level: {metric: {"value", "ci_low", "ci_high", "n"}}}, "thresholds":
    {level: {name: t}}, "reasons": {split: {level: {metric: why}}, "thresholds": {level: {name:
    why}}}}``. Undefined values are None with a reason.
    """
    ev = cfg.evaluate
    levels = {split: aggregate_levels(df) for split, df in pred_by_split.items()}
    reasons: dict[str, Any] = {}
    chosen: dict[str, dict[str, float]] = {}
    if thresholds is not None:
        chosen = {
            level: {k: math.nan if t is None else float(t) for k, t in by_name.items()}
            for level, by_name in thresholds.items()
        }
    elif "val" in levels:
        for level, df in levels["val"].items():
            chosen[level] = choose_thresholds(df["y_true"].to_numpy(), df["y_prob"].to_numpy())
            why = one_class_reason(df["y_true"].to_numpy())
            if why:
                reasons.setdefault("thresholds", {})[level] = {
                    k: f"val split: {why}" for k in chosen[level]
                }
    out: dict[str, Any] = {}
    for split, by_level in levels.items():
        out[split] = {}
        for level, df in by_level.items():
            if progress:
                progress(f"metrics {split}/{level}: {len(df)} rows, {ev.bootstrap} resamples")
            applied = chosen.get(level) if split != "val" else None
            table, why = evaluate_frame(df, applied, ev.bootstrap, ev.ci, ev.bootstrap_seed,
                                        getattr(ev, "bootstrap_unit", "patient"))  # fmt: skip
            out[split][level] = table
            if why:
                reasons.setdefault(split, {})[level] = why
    out["thresholds"] = {
        level: {k: _clean(t) for k, t in by_name.items()} for level, by_name in chosen.items()
    }
    out["reasons"] = reasons
    return out


def metrics_to_frame(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Long table of a ``metrics.json`` dict: ``split, level, metric, value, ci_low, ci_high, n,
    ci_unit`` (what the CI resampled; empty for cells without a CI)."""
    rows = [
        {"split": split, "level": level, "metric": metric, **cell}
        for split, by_level in metrics.items()
        if split not in ("thresholds", "reasons")
        for level, table in by_level.items()
        for metric, cell in table.items()
    ]
    cols = ["split", "level", "metric", "value", "ci_low", "ci_high", "n", "ci_unit"]
    return pd.DataFrame(rows, columns=cols)
