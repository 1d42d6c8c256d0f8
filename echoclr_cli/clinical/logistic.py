"""Batched logistic regression by Newton-Raphson: the calibration slope and intercept of
``clinical.core`` on many bootstrap resamples at once (optionally weighted by draw counts)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit


def logistic_fit_batch(
    x: np.ndarray, y: np.ndarray, offset: bool, max_iter: int = 50, weights: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Newton-Raphson for ``logit P(y) = a + b x`` on each row of ``x, y: (B, n)`` at once
    (``offset``: b fixed at 1). ``weights: (B, n)`` (e.g. cluster-resample draw counts) weight
    each term: the fit of the sample repeating each item as often. Returns ``a, b: (B,)``; NaN
    for a row whose fit diverges (separable data) or does not converge."""
    x, y = np.atleast_2d(x), np.atleast_2d(y).astype(np.float64)
    wt = np.ones(x.shape) if weights is None else np.asarray(weights, np.float64)
    rows = x.shape[0]
    a, b = np.zeros(rows), np.ones(rows)
    active = np.ones(rows, dtype=bool)
    done = np.zeros(rows, dtype=bool)
    for _ in range(max_iter):
        if not active.any():
            break
        xa, ya, wa = x[active], y[active], wt[active]
        mu = expit(a[active, None] + b[active, None] * xa)
        w = np.maximum(mu * (1 - mu), 1e-12) * wa
        r = (ya - mu) * wa
        h00, g0 = w.sum(axis=1), r.sum(axis=1)
        if offset:
            da, db = g0 / h00, np.zeros_like(g0)
        else:
            h01, h11, g1 = (w * xa).sum(axis=1), (w * xa * xa).sum(axis=1), (r * xa).sum(axis=1)
            det = h00 * h11 - h01 * h01
            safe = np.where(np.abs(det) > 1e-300, det, np.nan)
            da, db = (h11 * g0 - h01 * g1) / safe, (h00 * g1 - h01 * g0) / safe
        a[active] += da
        b[active] += db
        idx = np.flatnonzero(active)
        bad = ~(np.abs(a[idx]) < 1e4) | ~(np.abs(b[idx]) < 1e4)
        conv = ~bad & (np.maximum(np.abs(da), np.abs(db)) < 1e-10)
        a[idx[bad]], b[idx[bad]] = np.nan, np.nan
        done[idx[conv]] = True
        active[idx[bad | conv]] = False
    a[~done], b[~done] = np.nan, np.nan
    return a, b


def _logistic_fit(x: np.ndarray, y: np.ndarray, offset: bool, max_iter: int = 50):
    """``logistic_fit_batch`` of one sample: ``(a, b)`` floats."""
    a, b = logistic_fit_batch(x[None], y[None], offset, max_iter)
    return float(a[0]), float(b[0])
