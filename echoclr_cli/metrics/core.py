"""Evaluation maths over predictions: aggregation, metrics, thresholds, bootstrap CIs.

Pure functions of ``y_true`` / ``y_prob`` arrays and prediction DataFrames; no model code.
Paired comparisons of two models (DeLong, paired bootstrap) live in ``echoclr_cli.metrics.compare``.

Conventions (apply everywhere in this module):

- A prediction is positive iff ``y_prob >= threshold`` (the same convention as the thresholds of
  ``sklearn.metrics.roc_curve``), so a threshold chosen on validation scores reproduces exactly
  the operating point it was chosen at.
- ``ap`` is average precision (step-wise sum ``sum_k (R_k - R_{k-1}) P_k``, no interpolation, as
  ``sklearn.metrics.average_precision_score``). ``aupr_trapz`` integrates the same PR curve with
  the trapezoid rule (``sklearn.metrics.auc(recall, precision)``, the curve starting at recall 0,
  precision 1), which is what the published EchoCLR code reported as "AUPR". The trapezoid
  linearly interpolates precision between operating points, which is optimistic; the two numbers
  differ, so they carry different names.
- Undefined metrics are NaN with a reason, never 0 or 0.5: a one-class ``y_true`` makes AUROC,
  AP, AUPR, balanced accuracy, MCC, F1 and precision (and the rate of the missing class)
  undefined; precision is undefined when no prediction is positive. MCC is 0 (scikit-learn's
  convention) when ``y_true`` has both classes but all predictions fall in one class.
- Bootstrap CIs are percentile intervals over stratified resamples: positives and negatives are
  resampled separately, so every resample keeps the original class counts. Video-level CIs
  resample whole studies by default (``evaluate.bootstrap_unit=study``: a study's videos are
  correlated, so resampling them as independent items gives too narrow an interval), stratified
  by the study's label; ``item`` resamples videos as before. Study-level CIs resample studies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from torchmetrics.functional.classification import (
    binary_average_precision,
    binary_precision_recall_curve,
)

from echoclr_cli.metrics.aggregate import aggregate_levels

RANKING_METRICS = ("auroc", "ap", "aupr_trapz")
THRESHOLD_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "mcc",
    "f1",
    "sensitivity",
    "specificity",
    "precision",
)
COUNT_METRICS = ("n", "n_pos", "prevalence")
THRESHOLD_NAMES = ("youden", "f1", "f2", "sens90")
DEFAULT_THRESHOLD = 0.5
_BOOT_CHUNK_ELEMENTS = 2_000_000  # resamples x items per vectorised block (bounds memory)

MetricFn = Callable[[np.ndarray, np.ndarray], float]


# --------------------------------------------------------------------------- input checks
def check_arrays(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to ``y: (n,) int64 in {0,1}``, ``p: (n,) float64 finite``."""
    y = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1 or len(y) != len(p):
        raise ValueError(
            f"y_true and y_prob must be 1-D of equal length, got {y.shape} and {p.shape}"
        )
    if len(y) and not np.isin(y, (0, 1)).all():
        bad = sorted({str(v) for v in y[~np.isin(y, (0, 1))]})[:5]
        raise ValueError(f"y_true must be 0/1, found {bad}")
    if not np.isfinite(p).all():
        raise ValueError(f"y_prob has {int((~np.isfinite(p)).sum())} non-finite values")
    return y.astype(np.int64), p


def one_class_reason(y_true: Any) -> str | None:
    """The reason ranking metrics are undefined for ``y_true: (n,)``, or None when both classes exist."""
    y = np.asarray(y_true)
    n, n_pos = len(y), int((y == 1).sum())
    if n == 0:
        return "no samples: n=0"
    if n_pos == 0 or n_pos == n:
        return f"only one class in y_true: n_pos={n_pos}, n={n}"
    return None


# --------------------------------------------------------------------------- confusion-count metrics
def _nan_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _count_metrics(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray
) -> dict[str, np.ndarray]:
    """Threshold metrics from confusion counts (any matching shapes, e.g. ``(B,)``)."""
    tp, fp, fn, tn = (np.asarray(a, np.float64) for a in (tp, fp, fn, tn))
    pos, neg = tp + fn, fp + tn
    two_class = (pos > 0) & (neg > 0)
    sens = _nan_div(tp, pos)
    spec = _nan_div(tn, neg)
    den = np.sqrt((tp + fp) * pos * neg * (tn + fn))
    mcc = np.where(den > 0, (tp * tn - fp * fn) / np.where(den > 0, den, 1.0), 0.0)
    return {
        "accuracy": _nan_div(tp + tn, pos + neg),
        "balanced_accuracy": np.where(two_class, (sens + spec) / 2, np.nan),
        "mcc": np.where(two_class, mcc, np.nan),
        "f1": np.where(two_class, _nan_div(2 * tp, 2 * tp + fp + fn), np.nan),
        "sensitivity": sens,
        "specificity": spec,
        "precision": np.where(two_class, _nan_div(tp, tp + fp), np.nan),
    }


def _count_reasons(tp: int, fp: int, fn: int, tn: int, threshold: float) -> dict[str, str]:
    """Why each threshold metric of ``_count_metrics`` is NaN (metric -> reason)."""
    pos, neg = tp + fn, fp + tn
    if pos == 0 or neg == 0:
        reason = f"only one class in y_true: n_pos={pos}, n={pos + neg}"
        reasons = {k: reason for k in ("balanced_accuracy", "mcc", "f1", "precision")}
        if pos == 0:
            reasons["sensitivity"] = reason
        if neg == 0:
            reasons["specificity"] = reason
        if pos + neg == 0:
            reasons["accuracy"] = "no samples: n=0"
        return reasons
    if tp + fp == 0:
        return {"precision": f"no prediction >= threshold {threshold:.6g}"}
    return {}


# --------------------------------------------------------------------------- point estimates
def pr_curve(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """PR curve ``(recall, precision)``, recall decreasing to 0 where precision is 1 (torchmetrics)."""
    y, p = check_arrays(y_true, y_prob)
    precision, recall, _ = binary_precision_recall_curve(
        torch.tensor(p), torch.tensor(y), thresholds=None
    )
    return recall.double().numpy(), precision.double().numpy()


def _ranking_point(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    preds, target = torch.tensor(p), torch.tensor(y)  # copies: inputs may be read-only views
    recall, precision = pr_curve(y, p)
    # recall is decreasing; trapezoid over the curve, same as sklearn.metrics.auc(recall, precision)
    trapz = float(np.sum((recall[:-1] - recall[1:]) * (precision[:-1] + precision[1:]) / 2))
    return {
        # Rank statistic in float64: torchmetrics returns float32 (1 - 6e-8 for a perfect AUROC);
        # tests check both against scikit-learn.
        "auroc": float(auroc_rank(y[None, :], p[None, :])[0]),
        "ap": float(binary_average_precision(preds, target, thresholds=None)),
        "aupr_trapz": trapz,
    }


def _threshold_metrics(
    y: np.ndarray, p: np.ndarray, t: float
) -> tuple[dict[str, float], dict[str, str]]:
    if not math.isfinite(t):
        reason = "threshold is undefined (it could not be chosen on validation)"
        return {k: math.nan for k in THRESHOLD_METRICS}, {k: reason for k in THRESHOLD_METRICS}
    pred = p >= t
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    tn = int((~pred & (y == 0)).sum())
    values = {k: float(v) for k, v in _count_metrics(tp, fp, fn, tn).items()}
    return values, _count_reasons(tp, fp, fn, tn, t)


def compute_metrics_with_reasons(
    y_true: Any, y_prob: Any, thresholds: Mapping[str, float | None] | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """``compute_metrics`` plus ``reasons``: metric key -> why its value is NaN."""
    y, p = check_arrays(y_true, y_prob)
    n, n_pos = len(y), int(y.sum())
    out: dict[str, float] = {}
    reasons: dict[str, str] = {}
    one = one_class_reason(y)
    if one:
        out.update({k: math.nan for k in RANKING_METRICS})
        reasons.update({k: one for k in RANKING_METRICS})
    else:
        out.update(_ranking_point(y, p))
    values, why = _threshold_metrics(y, p, DEFAULT_THRESHOLD)
    out.update(values)
    reasons.update(why)
    out.update({"n": float(n), "n_pos": float(n_pos), "prevalence": n_pos / n if n else math.nan})
    if n == 0:
        reasons["prevalence"] = one or "no samples"
    for name, t in (thresholds or {}).items():
        values, why = _threshold_metrics(y, p, math.nan if t is None else float(t))
        out.update({f"{k}@{name}": v for k, v in values.items()})
        reasons.update({f"{k}@{name}": v for k, v in why.items()})
    return out, reasons


def compute_metrics(
    y_true: Any, y_prob: Any, thresholds: Mapping[str, float | None] | None = None
) -> dict[str, float]:
    """All metrics for ``y_true: (n,) 0/1`` and ``y_prob: (n,)``.

    Keys: ``auroc, ap, aupr_trapz`` (torchmetrics, exact: no threshold binning), ``accuracy,
    balanced_accuracy, mcc, f1, sensitivity, specificity, precision`` at 0.5, ``n, n_pos,
    prevalence``, and for each ``name -> t`` in ``thresholds`` the threshold metrics again as
    ``f1@name`` etc. Undefined values are NaN; ``compute_metrics_with_reasons`` says why.
    """
    return compute_metrics_with_reasons(y_true, y_prob, thresholds)[0]


# --------------------------------------------------------------------------- thresholds
def operating_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Operating points at each distinct score, highest first: ``(thresholds, tp, fp)``, each ``(k,)``.

    At ``thresholds[i]`` the predicted positives are ``p >= thresholds[i]``.
    """
    order = np.argsort(-p, kind="stable")
    ys, ps = y[order], p[order]
    tp, fp = np.cumsum(ys), np.cumsum(1 - ys)
    ends = np.r_[ps[1:] != ps[:-1], True]  # last index of each tie group
    return ps[ends], tp[ends], fp[ends]


def choose_thresholds(y_true: Any, y_prob: Any) -> dict[str, float]:
    """Operating thresholds chosen on (validation) predictions, to be applied to other splits.

    Candidates are the distinct values of ``y_prob`` (positive iff ``y_prob >= t``); ties in the
    criterion go to the highest threshold.

    - ``youden``: maximises sensitivity + specificity - 1.
    - ``f1``: maximises F1. ``f2``: maximises F2 (recall weighted 2x, the published code's second
      operating point).
    - ``sens90``: the highest threshold whose sensitivity is >= 0.90.

    A one-class ``y_true`` gives NaN for every threshold (see ``one_class_reason``).
    """
    y, p = check_arrays(y_true, y_prob)
    if one_class_reason(y):
        return {k: math.nan for k in THRESHOLD_NAMES}
    thr, tp, fp = operating_points(y, p)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    youden = tp / n_pos - fp / n_neg
    f1 = 2 * tp / (tp + fp + n_pos)
    f2 = 5 * tp / (4 * n_pos + tp + fp)
    # argmax returns the first maximum = the highest threshold among ties
    sens90 = thr[np.argmax(tp >= 0.9 * n_pos - 1e-9)]
    return {
        "youden": float(thr[np.argmax(youden)]),
        "f1": float(thr[np.argmax(f1)]),
        "f2": float(thr[np.argmax(f2)]),
        "sens90": float(sens90),
    }


# --------------------------------------------------------------------------- vectorised (bootstrap)
def auroc_rank(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUROC of each row by the Mann-Whitney U statistic with average ranks for ties.

    ``y: (B, n) 0/1``, ``p: (B, n)`` -> ``(B,)``; NaN for a one-class row.
    """
    y = np.asarray(y, dtype=bool)
    ranks = rankdata(p, method="average", axis=1)  # (B, n)
    n_pos = y.sum(axis=1).astype(np.float64)
    n_neg = y.shape[1] - n_pos
    u = np.where(y, ranks, 0.0).sum(axis=1) - n_pos * (n_pos + 1) / 2
    return _nan_div(u, n_pos * n_neg)


def _ranking_sorted(y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """AP and trapezoid AUPR of each row. ``y, p: (B, n)``, each row sorted by ``p`` descending."""
    b, n = y.shape
    yf = y.astype(np.float64)
    tp = np.cumsum(yf, axis=1)  # (B, n)
    fp = np.cumsum(1.0 - yf, axis=1)  # (B, n)
    n_pos = tp[:, -1:]  # (B, 1)
    ends = np.ones((b, n), dtype=bool)
    ends[:, :-1] = p[:, 1:] != p[:, :-1]  # last index of each tie group
    prec = tp / (tp + fp)  # (B, n), denominators >= 1
    rec = _nan_div(tp, n_pos)  # (B, n)
    col = np.arange(n)
    # AP: every positive contributes the precision at the end of its tie group, / n_pos
    next_end = np.minimum.accumulate(np.where(ends, col, n)[:, ::-1], axis=1)[:, ::-1]  # (B, n)
    ap = _nan_div((yf * np.take_along_axis(prec, next_end, axis=1)).sum(axis=1), n_pos[:, 0])
    # trapezoid between consecutive group ends, starting at (recall 0, precision 1)
    prev_end = np.maximum.accumulate(np.where(ends, col, -1), axis=1)  # (B, n) last end <= i
    prev_end = np.concatenate([np.full((b, 1), -1), prev_end[:, :-1]], axis=1)  # last end < i
    safe = np.maximum(prev_end, 0)
    rec_prev = np.where(prev_end >= 0, np.take_along_axis(rec, safe, axis=1), 0.0)
    prec_prev = np.where(prev_end >= 0, np.take_along_axis(prec, safe, axis=1), 1.0)
    area = np.where(ends, (rec - rec_prev) * (prec + prec_prev) / 2, 0.0).sum(axis=1)
    trapz = np.where(n_pos[:, 0] > 0, area, np.nan)
    return {"ap": ap, "aupr_trapz": trapz}


def batch_metrics(
    y: np.ndarray,
    p: np.ndarray,
    names: Sequence[str],
    thresholds: Mapping[str, float | None] | None = None,
) -> dict[str, np.ndarray]:
    """Metrics of each row of ``y: (B, n)``, ``p: (B, n)`` (rows sorted by ``p`` descending).

    ``names`` are metric keys of ``compute_metrics`` (``auroc``, ``f1@youden``, ...). Returns
    ``name -> (B,)``. Agrees with ``compute_metrics`` row by row.
    """
    thresholds = {"": DEFAULT_THRESHOLD, **(thresholds or {})}
    y = np.asarray(y, dtype=bool)
    out: dict[str, np.ndarray] = {}
    if "auroc" in names:
        out["auroc"] = auroc_rank(y, p)
    if "ap" in names or "aupr_trapz" in names:
        ranking = _ranking_sorted(y, p)
        out.update({k: v for k, v in ranking.items() if k in names})
    wanted: dict[str, list[str]] = {}
    for name in names:
        if name in out:
            continue
        base, _, tname = name.partition("@")
        if base in COUNT_METRICS and not tname:
            n_pos = y.sum(axis=1).astype(np.float64)
            out[name] = {
                "n": np.full(len(y), float(y.shape[1])),
                "n_pos": n_pos,
                "prevalence": n_pos / y.shape[1],
            }[base]
            continue
        if base not in THRESHOLD_METRICS or tname not in thresholds:
            raise ValueError(
                f"unknown metric {name!r} (thresholds: {sorted(k for k in thresholds if k)})"
            )
        wanted.setdefault(tname, []).append(name)
    for tname, keys in wanted.items():
        t = thresholds[tname]
        if t is None or not math.isfinite(t):
            out.update({key: np.full(len(y), np.nan) for key in keys})
            continue
        pred = p >= t  # (B, n)
        tp = (pred & y).sum(axis=1)
        fp = (pred & ~y).sum(axis=1)
        fn = (~pred & y).sum(axis=1)
        tn = (~pred & ~y).sum(axis=1)
        values = _count_metrics(tp, fp, fn, tn)
        out.update({key: values[key.partition("@")[0]] for key in keys})
    return out


def resample_indices(
    y: np.ndarray, n_resamples: int, stratified: bool, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap index matrix ``(n_resamples, n)`` into ``y``."""
    n = len(y)
    if not stratified:
        return rng.integers(0, n, size=(n_resamples, n))
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    parts = [rng.choice(idx, size=(n_resamples, len(idx))) for idx in (pos, neg) if len(idx)]
    return np.concatenate(parts, axis=1)


def bootstrap_distribution(
    y_true: Any,
    y_prob: Any,
    metrics: Sequence[str] | Mapping[str, MetricFn],
    n: int = 1000,
    seed: int = 0,
    stratified: bool = True,
    thresholds: Mapping[str, float | None] | None = None,
) -> dict[str, np.ndarray]:
    """Metric values on ``n`` bootstrap resamples: ``name -> (n,)``.

    ``metrics`` is a list of metric keys (computed vectorised, see ``batch_metrics``) or a mapping
    ``name -> fn(y_true, y_prob) -> float`` (called once per resample). With ``stratified`` the
    positives and negatives are resampled separately (class counts kept); otherwise all items are
    resampled together and a resample may be one-class (its ranking metrics are NaN).
    """
    y, p = check_arrays(y_true, y_prob)
    rng = np.random.default_rng(seed)
    # Pre-sort once by score (descending, stable): sorting a resample's index row then sorts it
    # by score, and equal scores stay contiguous for the tie-group logic.
    order = np.argsort(-p, kind="stable")
    y, p = y[order], p[order]
    idx = resample_indices(y, n, stratified, rng)  # (n, len(y))
    if isinstance(metrics, Mapping):
        return {
            name: np.array([fn(y[row], p[row]) for row in idx], dtype=np.float64)
            for name, fn in metrics.items()
        }
    names = list(metrics)
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // max(1, len(y)))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for start in range(0, n, chunk):
        block = np.sort(idx[start : start + chunk], axis=1)  # (b, len(y)) sorted by score
        values = batch_metrics(y[block], p[block], names, thresholds)
        for k in names:
            parts[k].append(values[k])
    return {k: np.concatenate(v) if v else np.empty(0) for k, v in parts.items()}


def percentile_interval(values: np.ndarray, ci: float = 0.95) -> tuple[float, float]:
    """Percentile interval ``(ci)`` of ``values: (B,)``, ignoring NaN resamples; NaN if all are NaN."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    alpha = (1 - ci) / 2
    low, high = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def bootstrap_ci(
    y_true: Any,
    y_prob: Any,
    metrics: Sequence[str] | Mapping[str, MetricFn] = ("auroc", "ap"),
    n: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
    thresholds: Mapping[str, float | None] | None = None,
    clusters: Any = None,
) -> dict[str, tuple[float, float]]:
    """Bootstrap percentile confidence intervals: ``metric -> (low, high)``.

    ``clusters`` (n,) ids: resample whole clusters (``cluster_bootstrap_distribution``, e.g. the
    studies of video-level predictions) instead of items; metric keys only.

    ``ci=0.95`` takes the 2.5th and 97.5th percentiles of ``n`` resamples (seeded by ``seed``).
    DIFFERS: the EchoCLR group's related code labelled the 5th-95th percentiles a 95% CI; that is
    a 90% interval (``ci=0.90`` here). Resampling is stratified by class by default (see
    ``bootstrap_distribution``). A one-class ``y_true`` gives NaN intervals for metrics that need
    both classes; NaN resamples are ignored when taking percentiles.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if clusters is not None:
        from echoclr_cli.metrics.bootstrap import cluster_bootstrap_distribution

        if isinstance(metrics, Mapping) or not stratified:
            raise ValueError("a cluster bootstrap takes metric keys and is always stratified")
        dist = cluster_bootstrap_distribution(
            y_true, y_prob, clusters, metrics, n, seed, thresholds
        )
    else:
        dist = bootstrap_distribution(y_true, y_prob, metrics, n, seed, stratified, thresholds)
    return {k: percentile_interval(v, ci) for k, v in dist.items()}


# --------------------------------------------------------------------------- split-level evaluation
def _clean(x: float) -> float | None:
    """NaN -> None so metrics.json is strict JSON."""
    return None if x is None or not math.isfinite(x) else float(x)


def evaluate_frame(
    df: pd.DataFrame,
    thresholds: Mapping[str, float | None] | None,
    n_boot: int,
    ci: float,
    seed: int,
    unit: str = "item",
) -> tuple[dict[str, dict[str, float | None]], dict[str, str]]:
    """Metrics with CIs for one aggregated prediction frame (``y_true``, ``y_prob`` columns).

    ``unit``: ``"item"`` resamples the frame's rows, ``"study"`` resamples whole studies (the
    frame's ``study_id`` column; for video-level frames). Returns ``({metric: {"value",
    "ci_low", "ci_high", "n"[, "ci_unit"]}}, {metric: reason})``; ``ci_unit`` (cells with a
    bootstrap) names what was resampled: ``study`` or ``video`` (rows of a video frame) /
    ``study`` (rows of a study frame). NaN is written as None; ``n`` and ``n_pos`` are ints.
    Counts (``n, n_pos, prevalence``) carry no CI.
    """
    if unit not in ("item", "study"):
        raise ValueError(f"bootstrap unit must be 'item' or 'study', got {unit!r}")
    y, p = df["y_true"].to_numpy(), df["y_prob"].to_numpy()
    video_rows = "video_id" in df.columns
    clusters = df["study_id"].to_numpy() if unit == "study" and video_rows else None
    ci_unit = "study" if clusters is not None or not video_rows else "video"
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
    (0 = no CI), level ``cfg.evaluate.ci``, seed ``cfg.evaluate.bootstrap_seed``; video-level
    CIs resample by ``cfg.evaluate.bootstrap_unit`` (study clusters or videos). ``progress``
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
                                        getattr(ev, "bootstrap_unit", "study"))  # fmt: skip
            out[split][level] = table
            if why:
                reasons.setdefault(split, {})[level] = why
    out["thresholds"] = {
        level: {k: _clean(t) for k, t in by_name.items()} for level, by_name in chosen.items()
    }
    out["reasons"] = reasons
    return out


def metrics_to_frame(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Long table of a ``metrics.json`` dict: ``split, level, metric, value, ci_low, ci_high, n``."""
    rows = [
        {"split": split, "level": level, "metric": metric, **cell}
        for split, by_level in metrics.items()
        if split not in ("thresholds", "reasons")
        for level, table in by_level.items()
        for metric, cell in table.items()
    ]
    cols = ["split", "level", "metric", "value", "ci_low", "ci_high", "n"]
    return pd.DataFrame(rows, columns=cols)
