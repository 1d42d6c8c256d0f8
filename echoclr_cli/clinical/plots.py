"""Clinical figures: reliability diagram (equal-mass bins) and decision curve (net benefit).

Same rules as ``echoclr_cli.metrics.plots``: off-screen matplotlib figures, one PNG written atomically
per function, a notice figure (never an exception) when the data cannot be drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import beta

from echoclr_cli.clinical.core import (
    apply_recalibration,
    brier_score,
    effective_bins,
    quantile_bins,
)
from echoclr_cli.metrics.plots import _arrays, _figure, _save, notice_figure

PT_GRID = np.linspace(0.01, 0.99, 99)  # threshold probabilities of the decision curve


def clopper_pearson(
    k: np.ndarray, n: np.ndarray, ci: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Exact binomial interval of ``k`` successes in ``n`` (arrays of equal shape)."""
    a = (1 - ci) / 2
    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    low = np.where(k > 0, beta.ppf(a, k, n - k + 1), 0.0)
    high = np.where(k < n, beta.ppf(1 - a, k + 1, n - k), 1.0)
    return low, high


def plot_reliability(
    df: pd.DataFrame,
    path: Path | str,
    n_bins: int = 10,
    recalibrated: Mapping[str, np.ndarray] | None = None,
    title: str = "",
) -> Path:
    """Reliability diagram over equal-mass bins (``clinical.quantile_bins``): observed rate
    (with exact 95% binomial bars) vs mean predicted probability, for the raw probabilities and
    each ``recalibrated`` variant (``name -> (n,) probabilities``), plus a histogram. The bin
    count is ``clinical.effective_bins`` (>= 10 predictions per bin on average)."""
    y, p = _arrays(df, "plot_reliability")
    if len(y) == 0:
        return notice_figure(path, title or "reliability", "no samples: n=0")
    variants = {"raw": p, **dict(recalibrated or {})}
    n_bins = effective_bins(len(y), n_bins)
    fig, (ax,) = _figure(width=5.2, height=5.6)
    ax.remove()
    ax, ax_hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    for i, (name, q) in enumerate(variants.items()):
        bins = quantile_bins(y, q, n_bins)
        k = np.round(bins["frac_pos"] * bins["n"]).to_numpy()
        low, high = clopper_pearson(k, bins["n"].to_numpy())
        frac = bins["frac_pos"].to_numpy()
        ax.errorbar(
            bins["mean_pred"],
            frac,
            yerr=np.vstack([frac - low, high - frac]),
            fmt="o-",
            color=f"C{i}",
            ms=4,
            capsize=2,
            lw=1.2,
            label=f"{name} (Brier {brier_score(y, q):.3f})",
        )
        ax_hist.hist(q, bins=np.linspace(0, 1, 21), color=f"C{i}", alpha=0.45, label=name)
    ax.set(ylabel="observed positive rate", xlim=(0, 1), ylim=(-0.02, 1.02))
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(
        f"{title + ': ' if title else ''}reliability ({n_bins} equal-mass bins, n={len(y)})",
        fontsize=10,
    )
    ax_hist.set(xlabel="predicted probability", ylabel="count")
    return _save(fig, path)


def net_benefit(y_true: Any, y_prob: Any, pt: np.ndarray = PT_GRID) -> np.ndarray:
    """Net benefit of treating ``y_prob >= pt``: TP/n - FP/n * pt / (1 - pt), for each ``pt``."""
    y = np.asarray(y_true, np.float64)
    p = np.asarray(y_prob, np.float64)
    n = len(y)
    pred = p[None, :] >= pt[:, None]  # (G, n)
    tp = (pred * y[None, :]).sum(axis=1)
    fp = (pred * (1 - y[None, :])).sum(axis=1)
    return tp / n - fp / n * pt / (1 - pt)


def plot_decision_curve(
    df: pd.DataFrame,
    path: Path | str,
    thresholds: Mapping[str, float | None] | None = None,
    title: str = "",
) -> Path:
    """Decision curve: net benefit of the model vs treat-all and treat-none over threshold
    probabilities 0.01-0.99, with the val-chosen operating thresholds marked."""
    y, p = _arrays(df, "plot_decision_curve")
    if len(y) == 0:
        return notice_figure(path, title or "decision curve", "no samples: n=0")
    prev = float(y.mean())
    model = net_benefit(y, p)
    treat_all = prev - (1 - prev) * PT_GRID / (1 - PT_GRID)
    fig, (ax,) = _figure(width=6.0, height=4.5)
    ax.plot(PT_GRID, model, color="C0", lw=1.6, label="model")
    ax.plot(PT_GRID, treat_all, color="C1", lw=1.0, label="treat all")
    ax.axhline(0, color="black", lw=0.8, label="treat none")
    for i, (name, t) in enumerate((thresholds or {}).items()):
        if t is not None and math.isfinite(t) and 0 < t < 1:
            ax.axvline(t, ls=":", color=f"C{i + 2}", lw=1, label=f"{name} (val) {t:.3g}")
    top = max(prev, float(np.nanmax(model)), 0.01)
    ax.set(
        xlim=(0, 1),
        ylim=(-0.1 * top, 1.15 * top),
        xlabel="threshold probability",
        ylabel="net benefit",
        title=f"{title + ': ' if title else ''}decision curve (n={len(y)}, prevalence {prev:.2f})",
    )
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_clinical(
    levels_by_split: Mapping[str, Mapping[str, pd.DataFrame]],
    clinical: Mapping[str, Any],
    out_dir: Path | str,
) -> list[Path]:
    """``{split}_{level}_reliability.png`` and ``{split}_{level}_decision_curve.png`` for each
    split and level of ``clinical["levels"]`` (recalibrated variants and val thresholds drawn)."""
    out_dir = Path(out_dir)
    paths = []
    n_bins = int(clinical.get("options", {}).get("n_bins", 10))
    for level, body in clinical.get("levels", {}).items():
        for split, by_level in levels_by_split.items():
            if level not in by_level:
                continue
            df = by_level[level]
            name = f"{split}/{level}"
            recal = {}
            for m, fitted in body.get("recalibration", {}).items():
                q = apply_recalibration(df["y_prob"].to_numpy(), fitted)
                if q is not None:
                    recal[m] = q
            stem = out_dir / f"{split}_{level}"
            paths.append(plot_reliability(df, f"{stem}_reliability.png", n_bins, recal, name))
            thr = body.get("thresholds", {}) if split != "val" else {}
            paths.append(plot_decision_curve(df, f"{stem}_decision_curve.png", thr, name))
    return paths
