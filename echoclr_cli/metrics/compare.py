"""Paired comparison of two models on the same items: DeLong's test and the paired stratified
bootstrap of the AUROC difference (``echoclr evaluate --compare``, the sweep's paired p-values).

Units (``evaluate.bootstrap_unit``): by default both the paired bootstrap and DeLong's test are
clustered by *patient* (``unit="patient"``, the frames' ``patient_id``), at study and at video
level: the bootstrap resamples whole patients (stratified by their labels, the same draws score
both runs) and DeLong's variance is Obuchowski's clustered one (``metrics.clustered``). Without
patient ids the study is the cluster (``study (no patient id)``). ``unit="study"`` clusters
video rows by study; ``unit="item"`` treats the rows as independent (the naive, too small
variance when rows repeat a patient). Every result names what it resampled / counted as one
unit (``unit`` in ``bootstrap`` and ``delong``) and DeLong's method (``delong.test``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri
from scipy.stats import rankdata

from echoclr_cli.errors import UserError
from echoclr_cli.metrics.aggregate import require_columns
from echoclr_cli.metrics.bootstrap import (
    _BOOT_CHUNK_ELEMENTS,
    cluster_labels,
    cluster_weights,
    percentile_interval,
    resample_indices,
    weighted_metrics,
)
from echoclr_cli.metrics.clustered import method_name, obuchowski_covariance, resolve_clusters
from echoclr_cli.metrics.core import auroc_rank, one_class_reason


# --------------------------------------------------------------------------- comparing two runs
def delong_covariance(y_true: Any, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs and their DeLong covariance for ``k`` score sets on the same samples.

    Fast algorithm of Sun & Xu (2014): structural components from midranks, O(k n log n).
    ``y_true: (n,)``, ``scores: (k, n)`` -> ``aucs: (k,)``, ``cov: (k, k)``.
    """
    y = np.asarray(y_true).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs >= 2 positives and >= 2 negatives, got {m} and {n}")
    pos, neg = scores[:, y], scores[:, ~y]  # (k, m), (k, n)
    tx = rankdata(pos, axis=1)  # midranks within positives
    ty = rankdata(neg, axis=1)  # midranks within negatives
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # (k, m+n)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n  # (k, m) structural components of the positives
    v01 = 1.0 - (tz[:, m:] - ty) / m  # (k, n) structural components of the negatives
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def delong_test(
    y_true: Any,
    prob_a: Any,
    prob_b: Any,
    ci: float = 0.95,
    unit: str = "item",
    clusters: Any = None,
) -> dict[str, Any]:
    """DeLong's test for two correlated AUROCs on the same samples (two-sided).

    Returns ``auroc_a, auroc_b, diff (a - b), se, z, p_value, ci_low, ci_high`` (normal CI of
    the difference), ``unit`` (what one independent unit is, as the caller names it:
    ``patient``, ``study``, ``video``; ``item`` when not said) and ``test`` (the method).
    Without ``clusters`` the variance treats the samples as independent (``delong``); with
    ``clusters: (n,)`` ids it is Obuchowski's clustered variance (``delong-obuchowski (<unit>
    clusters)``, ``metrics.clustered.obuchowski_covariance``), equal to DeLong's when every
    cluster holds one sample. Identical predictions give diff 0, se 0 and p 1.
    """
    scores = np.vstack([prob_a, prob_b])
    if clusters is None:
        aucs, cov = delong_covariance(y_true, scores)
    else:
        aucs, cov = obuchowski_covariance(y_true, scores, clusters)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    zcrit = float(ndtri(1 - (1 - ci) / 2))
    if se < 1e-12:  # identical (or perfectly dependent) predictions: no sampling variance
        same = abs(diff) < 1e-12
        z, p = (0.0, 1.0) if same else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / se
        p = float(2 * ndtr(-abs(z)))
    return {
        "auroc_a": float(aucs[0]),
        "auroc_b": float(aucs[1]),
        "diff": diff,
        "se": se,
        "z": z,
        "p_value": p,
        "ci_low": diff - zcrit * se,
        "ci_high": diff + zcrit * se,
        "unit": unit,
        "test": method_name(clusters, unit),
    }


def _paired_frame(df_a: pd.DataFrame, df_b: pd.DataFrame, on: str) -> pd.DataFrame:
    for name, df in (("run A", df_a), ("run B", df_b)):
        require_columns(df, [on, "y_true", "y_prob"], f"{name} predictions")
        dup = df[on][df[on].duplicated()].unique().tolist()
        if dup:
            raise UserError(
                f"{name} predictions have repeated {on}: {dup[:5]}",
                fix=f"pass one row per {on} (aggregate clip/video predictions first)",
            )
    a_ids, b_ids = set(df_a[on]), set(df_b[on])
    only_a, only_b = sorted(map(str, a_ids - b_ids)), sorted(map(str, b_ids - a_ids))
    if only_a or only_b:
        raise UserError(
            f"the two runs were evaluated on different {on}s: only in A {only_a[:10]}"
            f" ({len(only_a)}), only in B {only_b[:10]} ({len(only_b)})",
            fix="compare predictions on the same split of the same dataset",
        )
    keep = [on, "y_true", "y_prob"]
    extra = [c for c in ("study_id", "patient_id") if c != on and c in df_a.columns]
    merged = df_a[keep + extra].merge(
        df_b[keep], on=on, suffixes=("_a", "_b"), validate="one_to_one"
    )
    bad = merged.loc[merged["y_true_a"] != merged["y_true_b"], on].tolist()
    if bad:
        raise UserError(
            f"y_true differs between the runs for {len(bad)} {on}s: {bad[:10]}",
            fix="compare runs on the same task and labels",
        )
    return merged.sort_values(on, kind="stable").reset_index(drop=True)


def _cluster_diffs(
    y: np.ndarray, pa: np.ndarray, pb: np.ndarray, clusters: np.ndarray, n: int,
    rng: np.random.Generator,
) -> np.ndarray:  # fmt: skip
    """Paired stratified cluster bootstrap of AUROC_a - AUROC_b: ``(n,)``."""
    inv, y_c = cluster_labels(y, clusters)
    counts = cluster_weights(y_c, n, rng)  # (n, K)
    oa, ob = np.argsort(-pa, kind="stable"), np.argsort(-pb, kind="stable")
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // max(1, len(y)))
    parts = []
    for start in range(0, n, chunk):
        w = counts[start : start + chunk][:, inv]  # (b, N) item weights
        auc_a = weighted_metrics(y[oa], pa[oa], w[:, oa], ["auroc"])["auroc"]
        auc_b = weighted_metrics(y[ob], pb[ob], w[:, ob], ["auroc"])["auroc"]
        parts.append(auc_a - auc_b)
    return np.concatenate(parts) if parts else np.empty(0)


def paired_delong(
    y: np.ndarray, pa: np.ndarray, pb: np.ndarray, ci: float, clusters: Any, unit: str
) -> dict[str, Any]:
    """``delong_test`` (clustered when ``clusters`` is given), or ``{"reason", "unit",
    "test"}`` when there are fewer than 2 positive and 2 negative units (clusters)."""
    yb = np.asarray(y).astype(bool)
    ids = np.arange(len(yb)) if clusters is None else np.asarray(clusters)
    n_pos, n_neg = len(np.unique(ids[yb])), len(np.unique(ids[~yb]))
    if min(n_pos, n_neg) < 2:
        what = "positives and negatives" if clusters is None else f"{unit}s with each class"
        return {
            "reason": f"DeLong needs >= 2 {what}: {n_pos} and {n_neg}",
            "unit": unit,
            "test": method_name(clusters, unit),
        }
    return delong_test(y, pa, pb, ci, unit=unit, clusters=clusters)


def compare_runs(
    df_a: pd.DataFrame,
    df_b: pd.DataFrame,
    n: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    on: str = "study_id",
    unit: str = "patient",
) -> dict[str, Any]:
    """Paired comparison of two runs' AUROC on the same items (rows matched on ``on``).

    - Paired stratified bootstrap: the same resampled units score both runs; ``diff = AUROC_a -
      AUROC_b``; percentile CI; two-sided p-value ``min(1, 2 * min(P(d <= 0), P(d >= 0)))`` over
      resamples (identical predictions: every d is 0 and p = 1). ``unit``
      (``evaluate.bootstrap_unit``, ``metrics.clustered.resolve_clusters``): ``patient``
      resamples whole patients (the frames' ``patient_id``; the study without one), ``study``
      whole studies of video rows, ``item`` the rows.
    - DeLong's test on the same units: Obuchowski's clustered variance when clusters are
      resampled, the classic one when rows are (``delong_test``).

    ``bootstrap.unit`` / ``delong.unit`` say what was resampled / counted as one unit;
    ``delong.test`` names the method. Raises UserError naming the ids when the two id sets
    differ or labels disagree.
    """
    merged = _paired_frame(df_a, df_b, on)
    clusters, boot_unit = resolve_clusters(merged, unit)
    y = merged["y_true_a"].to_numpy()
    pa, pb = merged["y_prob_a"].to_numpy(np.float64), merged["y_prob_b"].to_numpy(np.float64)
    why = one_class_reason(y)
    out: dict[str, Any] = {"n": len(y), "n_pos": int(np.sum(y == 1)), "on": on}
    if why:
        nan = {k: None for k in ("diff", "ci_low", "ci_high", "p_value")}
        return {
            **out,
            "auroc_a": None,
            "auroc_b": None,
            "diff": None,
            "reason": why,
            "bootstrap": {**nan, "n_resamples": n, "unit": boot_unit},
            "delong": {
                **nan,
                "se": None,
                "z": None,
                "unit": boot_unit,
                "test": method_name(clusters, boot_unit),
            },
        }
    rng = np.random.default_rng(seed)
    if clusters is not None:
        diffs = _cluster_diffs(y.astype(np.int64), pa, pb, clusters, n, rng)  # (n,)
    else:
        idx = resample_indices(y, n, True, rng)  # (n, N)
        diffs = auroc_rank(y[idx], pa[idx]) - auroc_rank(y[idx], pb[idx])  # (n,)
    low, high = percentile_interval(diffs, ci)
    tol = 1e-12
    p_boot = min(1.0, 2 * min(float(np.mean(diffs <= tol)), float(np.mean(diffs >= -tol))))
    auc_a, auc_b = float(auroc_rank(y[None], pa[None])[0]), float(auroc_rank(y[None], pb[None])[0])
    return {
        **out,
        "auroc_a": auc_a,
        "auroc_b": auc_b,
        "diff": auc_a - auc_b,
        "bootstrap": {
            "diff": auc_a - auc_b,
            "ci_low": low,
            "ci_high": high,
            "p_value": p_boot,
            "n_resamples": n,
            "unit": boot_unit,
        },
        "delong": paired_delong(y, pa, pb, ci, clusters, boot_unit),
    }
