"""Point metrics over predictions: checks, confusion-count metrics, ranking metrics, thresholds.

Pure functions of ``y_true`` / ``y_prob`` arrays; no model code. Bootstrap CIs live in
``echoclr_cli.metrics.bootstrap``, the metrics.json table of every split and level in
``echoclr_cli.metrics.splits``, paired comparisons of two models (DeLong, paired bootstrap) in
``echoclr_cli.metrics.compare``.

Conventions (apply everywhere in ``echoclr_cli.metrics``):

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torchmetrics.functional.classification import (
    binary_average_precision,
    binary_precision_recall_curve,
)

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


def _clean(x: float) -> float | None:
    """NaN -> None so metrics.json is strict JSON."""
    return None if x is None or not math.isfinite(x) else float(x)
