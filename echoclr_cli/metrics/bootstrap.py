"""Cluster bootstrap: resample whole clusters (the studies of video-level predictions).

A study's videos are correlated, so resampling them as independent items gives too narrow an
interval (``evaluate.bootstrap_unit``). A cluster resample is expressed as integer weights on
the items (how often each item's cluster was drawn), so every resample has the same shape and
the metrics stay vectorised: ``weighted_metrics`` equals the metrics of the sample that repeats
each item as often as its weight (tests/test_paper_eval.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from echoclr_cli.errors import UserError
from echoclr_cli.metrics.core import (
    _BOOT_CHUNK_ELEMENTS,
    COUNT_METRICS,
    DEFAULT_THRESHOLD,
    THRESHOLD_METRICS,
    _count_metrics,
    _nan_div,
    check_arrays,
    resample_indices,
)


def cluster_weights(
    y_cluster: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Stratified cluster resamples as draw counts ``(n_resamples, K)`` over ``K`` clusters.

    The clusters' labels ``y_cluster: (K,)`` are resampled exactly as ``resample_indices`` (same
    generator calls), so with the same seed and order the draws equal a bootstrap over the
    clusters themselves."""
    k = len(y_cluster)
    idx = resample_indices(y_cluster, n_resamples, True, rng)  # (B, K) cluster indices
    flat = idx + k * np.arange(n_resamples)[:, None]
    return np.bincount(flat.ravel(), minlength=n_resamples * k).reshape(n_resamples, k)


def weighted_metrics(
    y: np.ndarray,
    p: np.ndarray,
    w: np.ndarray,
    names: Sequence[str],
    thresholds: Mapping[str, float | None] | None = None,
) -> dict[str, np.ndarray]:
    """Metrics of each weighted row: ``y, p: (n,)`` sorted by ``p`` descending, ``w: (B, n)``
    integer draw counts. A row equals ``batch_metrics`` of the sample that repeats item i
    ``w[b, i]`` times (items of weight 0 contribute nothing)."""
    thresholds = {"": DEFAULT_THRESHOLD, **(thresholds or {})}
    yb = np.asarray(y, dtype=bool)
    w = np.asarray(w, dtype=np.float64)
    b, n = w.shape
    wp, wn = w * yb, w * ~yb  # (B, n)
    tp, fp = np.cumsum(wp, axis=1), np.cumsum(wn, axis=1)  # (B, n)
    n_pos, n_neg = tp[:, -1], fp[:, -1]  # (B,)
    col = np.arange(n)
    ends = np.r_[p[1:] != p[:-1], True]  # (n,) last index of each tie group
    next_end = np.minimum.accumulate(np.where(ends, col, n)[::-1])[::-1]  # (n,) group end
    prev_end = np.r_[-1, np.maximum.accumulate(np.where(ends, col, -1))[:-1]]  # (n,) prior end
    out: dict[str, np.ndarray] = {}
    if "auroc" in names:
        fp_end = fp[:, next_end]  # negatives at or above each item's score
        fp_before = np.where(prev_end >= 0, fp[:, np.maximum(prev_end, 0)], 0.0)
        u = (wp * ((n_neg[:, None] - fp_end) + 0.5 * (fp_end - fp_before))).sum(axis=1)
        out["auroc"] = _nan_div(u, n_pos * n_neg)
    if "ap" in names or "aupr_trapz" in names:
        seen = tp + fp
        prec = np.where(seen > 0, tp / np.where(seen > 0, seen, 1.0), 1.0)  # (B, n)
        rec = _nan_div(tp, n_pos[:, None])  # (B, n)
        ap = _nan_div((wp * prec[:, next_end]).sum(axis=1), n_pos)
        safe = np.maximum(prev_end, 0)
        rec_prev = np.where(prev_end >= 0, rec[:, safe], 0.0)
        prec_prev = np.where(prev_end >= 0, prec[:, safe], 1.0)
        area = np.where(ends, (rec - rec_prev) * (prec + prec_prev) / 2, 0.0).sum(axis=1)
        ranking = {"ap": ap, "aupr_trapz": np.where(n_pos > 0, area, np.nan)}
        out.update({k: v for k, v in ranking.items() if k in names})
    for name in names:
        if name in out:
            continue
        base, _, tname = name.partition("@")
        if base in COUNT_METRICS and not tname:
            total = n_pos + n_neg
            out[name] = {"n": total, "n_pos": n_pos, "prevalence": _nan_div(n_pos, total)}[base]
            continue
        if base not in THRESHOLD_METRICS or tname not in thresholds:
            raise ValueError(
                f"unknown metric {name!r} (thresholds: {sorted(k for k in thresholds if k)})"
            )
        t = thresholds[tname]
        if t is None or not math.isfinite(t):
            out[name] = np.full(b, np.nan)
            continue
        pred = p >= t  # (n,)
        tp_t, fp_t = wp @ pred, wn @ pred
        out[name] = _count_metrics(tp_t, fp_t, n_pos - tp_t, n_neg - fp_t)[base]
    return out


def cluster_bootstrap_distribution(
    y_true: Any,
    y_prob: Any,
    clusters: Any,
    metrics: Sequence[str],
    n: int = 1000,
    seed: int = 0,
    thresholds: Mapping[str, float | None] | None = None,
) -> dict[str, np.ndarray]:
    """Metric values on ``n`` stratified *cluster* resamples: ``name -> (n,)``.

    ``clusters: (n_items,)`` ids (e.g. the study of each video). Whole clusters are drawn with
    replacement, positives and negatives separately (a cluster's label must be the same for all
    its items: a study's label), and every item of a drawn cluster enters the resample. The
    clusters are ordered like the rows of a cluster-level frame (by id) and then by their mean
    score (descending, stable), as ``bootstrap_distribution`` orders its rows, so with one item
    per cluster, or identical items within each cluster, the resamples are exactly those of the
    cluster-level bootstrap with the same seed.
    """
    y, p = check_arrays(y_true, y_prob)
    ids = np.asarray(clusters)
    if ids.shape != y.shape:
        raise ValueError(f"clusters must be (n,) like y_true, got {ids.shape}")
    uniq, inv = np.unique(ids, return_inverse=True)  # sorted ids, item -> cluster
    k = len(uniq)
    y_c = np.zeros(k, np.int64)
    np.maximum.at(y_c, inv, y)
    lo = np.ones(k, np.int64)
    np.minimum.at(lo, inv, y)
    if (lo != y_c).any():
        bad = [str(v) for v in uniq[lo != y_c][:5]]
        raise UserError(
            f"y_true differs within clusters {bad}: a cluster bootstrap needs one label per cluster",
            fix="every video of one study must carry the study's label",
        )
    p_c = np.bincount(inv, weights=p, minlength=k) / np.bincount(inv, minlength=k)
    corder = np.argsort(-p_c, kind="stable")  # cluster order of a cluster-level frame
    rank_of = np.empty(k, np.int64)
    rank_of[corder] = np.arange(k)
    rng = np.random.default_rng(seed)
    counts = cluster_weights(y_c[corder], n, rng)  # (n, K) in the sorted cluster order
    order = np.argsort(-p, kind="stable")
    y, p, item_cluster = y[order], p[order], rank_of[inv[order]]
    names = list(metrics)
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // max(1, len(y)))
    parts: dict[str, list[np.ndarray]] = {k_: [] for k_ in names}
    for start in range(0, n, chunk):
        w = counts[start : start + chunk][:, item_cluster]  # (b, n_items) item weights
        values = weighted_metrics(y, p, w, names, thresholds)
        for k_ in names:
            parts[k_].append(values[k_])
    return {k_: np.concatenate(v) if v else np.empty(0) for k_, v in parts.items()}
