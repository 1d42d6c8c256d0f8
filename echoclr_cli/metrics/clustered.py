"""The patient as the statistical unit: which clusters a CI resamples, and the clustered DeLong.

A patient's studies (and a study's videos) are correlated: a CI or a test that treats them as
independent is too narrow / too liberal. ``resolve_clusters`` turns ``evaluate.bootstrap_unit``
and a prediction frame into the cluster ids to resample and the unit name every table and JSON
carries (``ci_unit``). ``obuchowski_covariance`` is DeLong's covariance of correlated AUROCs with
cluster-level structural components (Obuchowski 1997, Biometrics 53:567-578); with one unit per
cluster it *is* DeLong's (tests/test_cluster_stats.py checks both to 1e-12).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

UNITS = ("patient", "study", "item")
NO_PATIENT = "study (no patient id)"  # the unit named when patients were asked for but unknown


def _present(col: pd.Series) -> np.ndarray:
    """Which values of an id column are given (not NaN, not empty)."""
    return (col.notna() & (col.astype(str).str.strip() != "")).to_numpy()


def resolve_clusters(df: pd.DataFrame, unit: str) -> tuple[np.ndarray | None, str]:
    """``(clusters, ci_unit)`` of one aggregated prediction frame (video or study rows).

    ``unit`` (``evaluate.bootstrap_unit``):

    - ``patient``: resample patients (``patient_id``), at video and study level. A row without a
      patient id is its own study's cluster (named in ``ci_unit``); a frame without any patient
      id falls back to the study (``ci_unit = "study (no patient id)"``).
    - ``study``: video rows resample whole studies; study rows are the studies themselves.
    - ``item``: the rows as they are (``ci_unit`` = ``video`` or ``study``).

    ``clusters`` is None when the rows themselves are resampled.
    """
    if unit not in UNITS:
        raise ValueError(f"bootstrap unit must be one of {UNITS}, got {unit!r}")
    video_rows = "video_id" in df.columns
    row_unit = "video" if video_rows else "study"
    has_study = "study_id" in df.columns
    if unit == "patient" and "patient_id" in df.columns:
        given = _present(df["patient_id"])
        if given.any():
            pid = df["patient_id"].astype(str).to_numpy(dtype=object)
            if given.all():
                return pid, "patient"
            own = df["study_id"] if has_study else pd.Series(np.arange(len(df)), index=df.index)
            own = ("study:" + own.astype(str)).to_numpy(dtype=object)
            missing = int(np.unique(own[~given]).size)
            what = "studies" if has_study else "rows"
            return np.where(given, pid, own), f"patient ({missing} {what} without one: own cluster)"
    if unit == "item" or not (video_rows and has_study):
        return None, f"{row_unit} (no patient id)" if unit == "patient" else row_unit
    return df["study_id"].astype(str).to_numpy(dtype=object), (
        NO_PATIENT if unit == "patient" else "study"
    )


def method_name(clusters: Any, unit: str) -> str:
    """How a paired DeLong result names its method: ``delong`` (rows independent) or
    ``delong-obuchowski (patient clusters)``."""
    return "delong" if clusters is None else f"delong-obuchowski ({unit} clusters)"


def obuchowski_covariance(
    y_true: Any, scores: np.ndarray, clusters: Any
) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs and their clustered DeLong covariance for ``k`` score sets on the same units.

    ``y_true: (n,)``, ``scores: (k, n)``, ``clusters: (n,)`` ids -> ``aucs: (k,)``, ``cov:
    (k, k)``. The structural components are DeLong's (midranks, Sun & Xu 2014); cluster i sums
    them over its m_i positive / n_i negative units (V10_i, V01_i) and, with M positives, N
    negatives, I clusters, I10 / I01 clusters holding positives / negatives
    (Obuchowski 1997)::

        S10 = I10 / ((I10 - 1) M) sum_i (V10_i - m_i A)(V10_i - m_i A)'
        S01 = I01 / ((I01 - 1) N) sum_i (V01_i - n_i A)(V01_i - n_i A)'
        S11 = I / (I - 1) sum_i (V10_i - m_i A)(V01_i - n_i A)'
        cov = S10 / M + S01 / N + (S11 + S11') / (M N)

    With one unit per cluster S11 = 0 and S10, S01 are DeLong's: the result is
    ``compare.delong_covariance``.
    """
    y = np.asarray(y_true).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    _, inv = np.unique(np.asarray(clusters), return_inverse=True)
    n_cl = int(inv.max()) + 1 if len(inv) else 0
    m, n = int(y.sum()), int((~y).sum())
    m_i = np.bincount(inv[y], minlength=n_cl)  # (I,) positives per cluster
    n_i = np.bincount(inv[~y], minlength=n_cl)  # (I,) negatives per cluster
    i10, i01 = int((m_i > 0).sum()), int((n_i > 0).sum())
    if i10 < 2 or i01 < 2:
        raise ValueError(
            f"clustered DeLong needs >= 2 clusters with positives and >= 2 with negatives, "
            f"got {i10} and {i01}"
        )
    pos, neg = scores[:, y], scores[:, ~y]  # (k, M), (k, N)
    tx, ty = rankdata(pos, axis=1), rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # (k, M+N)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n  # (k, M) structural components of the positives
    v01 = 1.0 - (tz[:, m:] - ty) / m  # (k, N) structural components of the negatives
    sum10 = np.stack([np.bincount(inv[y], weights=r, minlength=n_cl) for r in v10])  # (k, I)
    sum01 = np.stack([np.bincount(inv[~y], weights=r, minlength=n_cl) for r in v01])  # (k, I)
    d10 = sum10 - m_i[None] * aucs[:, None]  # (k, I)
    d01 = sum01 - n_i[None] * aucs[:, None]  # (k, I)
    s10 = i10 / ((i10 - 1) * m) * (d10 @ d10.T)
    s01 = i01 / ((i01 - 1) * n) * (d01 @ d01.T)
    s11 = n_cl / (n_cl - 1) * (d10 @ d01.T)
    return aucs, s10 / m + s01 / n + (s11 + s11.T) / (m * n)
