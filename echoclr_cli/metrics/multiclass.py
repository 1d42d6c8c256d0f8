"""Metrics of a multi-class (categorical label) classifier: pure functions over predictions.

Inputs are class indices ``y: int (n,)`` into a class list and probabilities ``p: (n, K)``
(rows sum to 1, softmax averaged over clips). Metrics:

- ``accuracy``: share of items whose top class is the true class;
- ``balanced_accuracy``: mean recall over the classes present in ``y`` (scikit-learn's
  ``balanced_accuracy_score``);
- ``auroc``: macro one-vs-rest AUROC = mean over classes of AUROC(class k vs the rest, p[:, k])
  over the classes that have both positives and negatives in ``y`` (scikit-learn's
  ``roc_auc_score(multi_class="ovr", average="macro")`` when every class is present);
- ``auroc_<class>``: the per-class one-vs-rest AUROC;
- the confusion matrix (rows = true class, columns = predicted class), written as CSV and PNG.

CIs: percentile intervals of ``n`` bootstrap resamples stratified by true class (each class
resampled within itself, class counts kept), as ``metrics.bootstrap_ci`` does for two classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from echoclr_cli.io import atomic_write_csv
from echoclr_cli.metrics.bootstrap import percentile_interval
from echoclr_cli.metrics.core import _clean, auroc_rank

SUMMARY = ("accuracy", "balanced_accuracy", "auroc")


def prob_columns(classes: Sequence[str]) -> list[str]:
    """Column names of the per-class probabilities in prediction CSVs: ``prob_<class>``."""
    return [f"prob_{c}" for c in classes]


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Confusion matrix ``(K, K)`` int64: rows = true class, columns = predicted class."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return m


def _batch(y: np.ndarray, p: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Metrics of ``B`` resamples at once: ``y (B, n)`` int, ``p (B, n, K)`` -> name -> ``(B,)``."""
    pred = p.argmax(axis=2)  # (B, n)
    out: dict[str, np.ndarray] = {"accuracy": (pred == y).mean(axis=1)}
    recalls, aurocs = [], []
    for c in range(k):
        pos = y == c  # (B, n)
        n_pos = pos.sum(axis=1)
        hit = (pos & (pred == c)).sum(axis=1)
        recalls.append(np.where(n_pos > 0, hit / np.maximum(n_pos, 1), np.nan))
        both = (n_pos > 0) & (n_pos < y.shape[1])
        a = np.full(y.shape[0], np.nan)
        if both.any():
            a[both] = auroc_rank(pos[both].astype(np.int64), p[both, :, c])
        aurocs.append(a)
        out[f"auroc_{c}"] = a
    with np.errstate(all="ignore"):
        rec = np.stack(recalls, axis=1)  # (B, K)
        au = np.stack(aurocs, axis=1)
        present = np.isfinite(rec).any(axis=1)
        out["balanced_accuracy"] = np.where(
            present, np.nansum(rec, axis=1) / np.maximum(np.isfinite(rec).sum(axis=1), 1), np.nan
        )
        n_au = np.isfinite(au).sum(axis=1)
        out["auroc"] = np.where(n_au > 0, np.nansum(au, axis=1) / np.maximum(n_au, 1), np.nan)
    return out


def check_inputs(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(y int64 (n,), p float64 (n, K))``; raises ValueError on shapes or label range."""
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probabilities must be (n, K) with n = {len(y)}, got {p.shape}")
    if len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"class indices must be in [0, {p.shape[1]})")
    return y, p


def multiclass_metrics(y: Any, p: Any, classes: Sequence[str]) -> dict[str, float]:
    """``accuracy, balanced_accuracy, auroc`` (macro OvR) and ``auroc_<class>`` (NaN if undefined)."""
    y, p = check_inputs(y, p)
    if not len(y):
        return {name: math.nan for name in (*SUMMARY, *(f"auroc_{c}" for c in classes))}
    raw = _batch(y[None], p[None], len(classes))
    return _named({k: float(v[0]) for k, v in raw.items()}, classes)


def _named(values: Mapping[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    out = {k: values[k] for k in SUMMARY}
    out.update({f"auroc_{c}": values[f"auroc_{i}"] for i, c in enumerate(classes)})
    return out


def stratified_indices(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap index matrix ``(n, len(y))``, each class resampled within itself."""
    parts = [
        rng.choice(idx, size=(n, len(idx)))
        for c in np.unique(y)
        for idx in [np.flatnonzero(y == c)]
    ]
    return np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), dtype=np.int64)


def bootstrap_multiclass(
    y: Any, p: Any, classes: Sequence[str], n: int = 1000, ci: float = 0.95, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile CIs of every metric of :func:`multiclass_metrics` (class-stratified resamples)."""
    y, p = check_inputs(y, p)
    if n <= 0 or not len(y):
        return {}
    idx = stratified_indices(y, n, np.random.default_rng(seed))
    chunk = max(1, 2_000_000 // max(1, idx.shape[1] * p.shape[1]))
    parts: dict[str, list[np.ndarray]] = {}
    for s in range(0, n, chunk):
        block = idx[s : s + chunk]
        for k, v in _batch(y[block], p[block], len(classes)).items():
            parts.setdefault(k, []).append(v)
    dist = _named({k: np.concatenate(v) for k, v in parts.items()}, classes)
    return {k: percentile_interval(v, ci) for k, v in dist.items()}


def evaluate_multiclass_frame(
    df: pd.DataFrame, classes: Sequence[str], n_boot: int, ci: float, seed: int
) -> dict[str, dict[str, Any]]:
    """``{metric: {value, ci_low, ci_high, n}}`` of one prediction frame (``y_true`` class index,
    ``prob_<class>`` columns), plus ``n`` and ``n_<class>`` counts (no CI)."""
    y = df["y_true"].to_numpy(dtype=np.int64)
    p = df[prob_columns(classes)].to_numpy(dtype=np.float64)
    values = multiclass_metrics(y, p, classes)
    intervals = bootstrap_multiclass(y, p, classes, n_boot, ci, seed)
    nan_ci = (math.nan, math.nan)
    table: dict[str, dict[str, Any]] = {
        k: {
            "value": _clean(v),
            "ci_low": _clean(intervals.get(k, nan_ci)[0]),
            "ci_high": _clean(intervals.get(k, nan_ci)[1]),
            "n": len(y),
        }
        for k, v in values.items()
    }
    table["n"] = {"value": len(y), "ci_low": None, "ci_high": None, "n": len(y)}
    for i, c in enumerate(classes):
        table[f"n_{c}"] = {
            "value": int((y == i).sum()),
            "ci_low": None,
            "ci_high": None,
            "n": len(y),
        }
    return table


def study_level(df: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame | None:
    """Per-study rows (mean probabilities of its videos) when the label is the same for every
    video of each study; None otherwise (a per-video label such as the echo view)."""
    if df.empty or (df.groupby("study_id")["y_true"].nunique() > 1).any():
        return None
    cols = prob_columns(classes)
    agg = df.groupby("study_id", sort=True).agg(
        patient_id=("patient_id", "first"),
        y_true=("y_true", "first"),
        n_videos=("video_id", "size"),
    )
    probs = df.groupby("study_id", sort=True)[cols].mean()
    out = agg.join(probs).reset_index()
    out["y_pred"] = np.asarray(classes, dtype=object)[out[cols].to_numpy().argmax(axis=1)]
    return out


def levels_of(video: pd.DataFrame, classes: Sequence[str]) -> dict[str, pd.DataFrame]:
    """``{"video": ..., "study": ...}`` (study only for a study-constant label)."""
    out = {"video": video}
    study = study_level(video, classes)
    if study is not None:
        out["study"] = study
    return out


def write_confusion(
    df: pd.DataFrame, classes: Sequence[str], csv_path: Path, png_path: Path | None
) -> list[Path]:
    """Confusion matrix of a prediction frame as CSV (``true \\ predicted`` counts) and PNG."""
    y = df["y_true"].to_numpy(dtype=np.int64)
    pred = df[prob_columns(classes)].to_numpy().argmax(axis=1) if len(df) else np.zeros(0, int)
    m = confusion(y, pred, len(classes))
    table = pd.DataFrame(m, index=pd.Index(list(classes), name="true"), columns=list(classes))
    atomic_write_csv(csv_path, table.reset_index())
    paths = [Path(csv_path)]
    if png_path is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        Path(png_path).parent.mkdir(parents=True, exist_ok=True)
        k = len(classes)
        fig, ax = plt.subplots(figsize=(1.2 + 0.7 * k, 1.0 + 0.7 * k))
        ax.imshow(m, cmap="Blues")
        for i in range(k):
            for j in range(k):
                color = "white" if m[i, j] > m.max() / 2 else "black"
                ax.text(j, i, str(m[i, j]), ha="center", va="center", color=color, fontsize=9)
        ax.set_xticks(range(k), classes, rotation=45)
        ax.set_yticks(range(k), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.tight_layout()
        fig.savefig(png_path, dpi=100)
        plt.close(fig)
        paths.append(Path(png_path))
    return paths
