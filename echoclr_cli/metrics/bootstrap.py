"""Bootstrap CIs: stratified item resamples and cluster (patient, study) resamples, vectorised.

Bootstrap CIs are percentile intervals over stratified resamples: positives and negatives are
resampled separately, so every resample keeps the original class counts. By default every CI
resamples *patients* (``evaluate.bootstrap_unit=patient``, the cluster = the manifest's
``patient_id``; ``metrics.clustered.resolve_clusters``): a patient's studies, and a study's
videos, are correlated, so resampling them as independent items gives too narrow an interval.
``study`` resamples studies (video level) and ``item`` the rows as they are.

A cluster resample is expressed as integer weights on the items (how often each item's cluster
was drawn), so every resample has the same shape and the metrics stay vectorised:
``weighted_metrics`` equals the metrics of the sample that repeats each item as often as its
weight (tests/test_paper_eval.py). Clusters are stratified by their labels: clusters with a
positive and all-negative clusters are drawn separately, each stratum keeping its count of
clusters. A patient whose studies differ in label joins the positive stratum (a stratum of its
own would be drawn identically in every resample when only one patient is mixed, as on the
demo's test split, and narrow the interval); with no such patient the draws are exactly those
of a stratified bootstrap over the clusters themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from echoclr_cli.metrics.core import (
    COUNT_METRICS,
    DEFAULT_THRESHOLD,
    THRESHOLD_METRICS,
    _count_metrics,
    _nan_div,
    auroc_rank,
    check_arrays,
)

_BOOT_CHUNK_ELEMENTS = 2_000_000  # resamples x items per vectorised block (bounds memory)

MetricFn = Callable[[np.ndarray, np.ndarray], float]


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
    clusters: Any = None,
) -> dict[str, np.ndarray]:
    """Metric values on ``n`` bootstrap resamples: ``name -> (n,)``.

    ``metrics`` is a list of metric keys (computed vectorised, see ``batch_metrics``) or a mapping
    ``name -> fn(y_true, y_prob) -> float`` (called once per resample). With ``stratified`` the
    positives and negatives are resampled separately (class counts kept); otherwise all items are
    resampled together and a resample may be one-class (its ranking metrics are NaN).
    ``clusters`` (n,) ids: resample whole clusters instead (``cluster_bootstrap_distribution``;
    always stratified).
    """
    if clusters is not None:
        if not stratified:
            raise ValueError("a cluster bootstrap is always stratified")
        return cluster_bootstrap_distribution(
            y_true, y_prob, clusters, metrics, n, seed, thresholds
        )
    y, p = check_arrays(y_true, y_prob)
    rng = np.random.default_rng(seed)
    # Pre-sort once by score (descending, stable): sorting a resample's index row then sorts it
    # by score, and equal scores stay contiguous for the tie-group logic.
    order = np.argsort(-p, kind="stable")
    y, p = y[order], p[order]
    idx = resample_indices(y, n, stratified, rng)  # (n, len(y))
    if isinstance(metrics, Mapping):
        return _per_resample(metrics, y, p, idx)
    names = list(metrics)

    def block_values(rows: slice) -> dict[str, np.ndarray]:
        block = np.sort(idx[rows], axis=1)  # (b, len(y)) sorted by score
        return batch_metrics(y[block], p[block], names, thresholds)

    return _in_chunks(names, n, len(y), block_values)


def _per_resample(
    metrics: Mapping[str, MetricFn], y: np.ndarray, p: np.ndarray, rows: Iterable[np.ndarray]
) -> dict[str, np.ndarray]:
    """``name -> (n,)``: each ``fn(y[r], p[r])`` called once per resample's index row ``r``."""
    rows = list(rows)
    return {
        name: np.array([fn(y[r], p[r]) for r in rows], dtype=np.float64)
        for name, fn in metrics.items()
    }


def _in_chunks(
    names: list[str],
    n: int,
    n_items: int,
    block_values: Callable[[slice], Mapping[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """``name -> (n,)`` from vectorised blocks of resamples (``block_values(rows)`` for the
    resamples ``rows``), each block bounded to about ``_BOOT_CHUNK_ELEMENTS`` items."""
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // max(1, n_items))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for start in range(0, n, chunk):
        values = block_values(slice(start, start + chunk))
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


def cluster_weights(
    y_cluster: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Stratified cluster resamples as draw counts ``(n_resamples, K)`` over ``K`` clusters.

    ``y_cluster: (K,)`` is each cluster's stratum (``cluster_labels``: 1 = holds a positive,
    0 = all negative), resampled exactly as ``resample_indices`` (same generator calls), so
    with the same seed and order the draws equal a bootstrap over the clusters themselves."""
    k = len(y_cluster)
    idx = resample_indices(np.asarray(y_cluster), n_resamples, True, rng)  # (B, K) cluster indices
    flat = idx + k * np.arange(n_resamples)[:, None]
    return np.bincount(flat.ravel(), minlength=n_resamples * k).reshape(n_resamples, k)


def cluster_labels(y: np.ndarray, clusters: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(inv, y_cluster)``: each item's cluster index (clusters sorted by id) and each
    cluster's stratum for ``cluster_weights``: 1 when it holds a positive, else 0."""
    ids = np.asarray(clusters)
    if ids.shape != np.shape(y):
        raise ValueError(f"clusters must be (n,) like y_true, got {ids.shape}")
    _, inv = np.unique(ids, return_inverse=True)  # sorted ids, item -> cluster
    k = int(inv.max()) + 1 if len(inv) else 0
    y = np.asarray(y, np.int64)
    hi = np.zeros(k, np.int64)
    np.maximum.at(hi, inv, y)
    return inv, hi


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


def cluster_resamples(
    y_true: Any, y_prob: Any, clusters: Any, n: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified cluster resamples: ``(y, p, counts, item_cluster)``.

    ``y, p: (n_items,)`` sorted by score (descending, stable); ``counts: (n, K)`` how often
    each cluster was drawn; ``item_cluster: (n_items,)`` the cluster of each sorted item, so
    ``counts[b][item_cluster]`` are the item weights of resample ``b``. The clusters are
    ordered like the rows of a cluster-level frame (by id) and then by their mean score
    (descending, stable), as ``bootstrap_distribution`` orders its rows, so with one item per
    cluster, or identical items within each cluster, the resamples are exactly those of the
    cluster-level bootstrap with the same seed.
    """
    y, p = check_arrays(y_true, y_prob)
    inv, y_c = cluster_labels(y, clusters)
    k = len(y_c)
    p_c = np.bincount(inv, weights=p, minlength=k) / np.bincount(inv, minlength=k)
    corder = np.argsort(-p_c, kind="stable")  # cluster order of a cluster-level frame
    rank_of = np.empty(k, np.int64)
    rank_of[corder] = np.arange(k)
    counts = cluster_weights(y_c[corder], n, np.random.default_rng(seed))  # (n, K)
    order = np.argsort(-p, kind="stable")
    return y[order], p[order], counts, rank_of[inv[order]]


def cluster_bootstrap_distribution(
    y_true: Any,
    y_prob: Any,
    clusters: Any,
    metrics: Sequence[str] | Mapping[str, MetricFn],
    n: int = 1000,
    seed: int = 0,
    thresholds: Mapping[str, float | None] | None = None,
) -> dict[str, np.ndarray]:
    """Metric values on ``n`` stratified *cluster* resamples: ``name -> (n,)``.

    ``clusters: (n_items,)`` ids (the patient, or the study of each video). Whole clusters
    are drawn with replacement, stratified by their labels (``cluster_weights``), and every
    item of a drawn cluster enters the resample (``cluster_resamples``). ``metrics``: metric
    keys (vectorised, ``weighted_metrics``) or ``name -> fn(y_true, y_prob)`` called once per
    resample on the expanded sample.
    """
    y, p, counts, item_cluster = cluster_resamples(y_true, y_prob, clusters, n, seed)
    if isinstance(metrics, Mapping):
        rows = (np.repeat(np.arange(len(y)), c[item_cluster]) for c in counts)
        return _per_resample(metrics, y, p, rows)
    names = list(metrics)

    def block_values(rows: slice) -> dict[str, np.ndarray]:
        w = counts[rows][:, item_cluster]  # (b, n_items) item weights
        return weighted_metrics(y, p, w, names, thresholds)

    return _in_chunks(names, n, len(y), block_values)


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

    ``clusters`` (n,) ids: resample whole clusters (``cluster_bootstrap_distribution``: the
    patients, or the studies of video-level predictions) instead of items.

    ``ci=0.95`` takes the 2.5th and 97.5th percentiles of ``n`` resamples (seeded by ``seed``).
    DIFFERS: the EchoCLR group's related code labelled the 5th-95th percentiles a 95% CI; that is
    a 90% interval (``ci=0.90`` here). Resampling is stratified by class by default (see
    ``bootstrap_distribution``). A one-class ``y_true`` gives NaN intervals for metrics that need
    both classes; NaN resamples are ignored when taking percentiles.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    dist = bootstrap_distribution(
        y_true, y_prob, metrics, n, seed, stratified, thresholds, clusters=clusters
    )
    return {k: percentile_interval(v, ci) for k, v in dist.items()}
