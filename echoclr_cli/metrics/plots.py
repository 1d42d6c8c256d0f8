"""Figures for run dirs and sweeps (matplotlib, off-screen).

Every function writes one PNG atomically and returns its path. Figures are drawn on a bare
``matplotlib.figure.Figure`` (Agg canvas), so nothing here touches pyplot's global state or needs
a display. Data that cannot be drawn (one class for ROC/PR, no rows) gives a notice figure
that says why, never an exception.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from echoclr_cli.errors import UserError
from echoclr_cli.io import atomic_write
from echoclr_cli.metrics.bootstrap import (
    bootstrap_ci,
    cluster_resamples,
    percentile_interval,
    resample_indices,
)
from echoclr_cli.metrics.clustered import resolve_clusters
from echoclr_cli.metrics.core import (
    check_arrays,
    compute_metrics,
    one_class_reason,
    operating_points,
)
from echoclr_cli.schema import RESULT_KEY_COLUMNS

DPI = 120
GRID = np.linspace(0.0, 1.0, 101)  # FPR / recall grid for bootstrap bands
HISTORY_SKIP = ("epoch", "step", "lr", "seconds", "clips_per_s")


# --------------------------------------------------------------------------- helpers
def _figure(ncols: int = 1, width: float = 5.0, height: float = 4.5) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig: Figure, path: Path | str) -> Path:
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


def notice_figure(path: Path | str, title: str, reason: str) -> Path:
    """A figure that only states why the real one could not be drawn."""
    fig, (ax,) = _figure(height=3.0)
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, f"not plotted:\n{reason}", ha="center", va="center", wrap=True, fontsize=11)
    return _save(fig, path)


def _arrays(df: pd.DataFrame, what: str) -> tuple[np.ndarray, np.ndarray]:
    missing = [c for c in ("y_true", "y_prob") if c not in df.columns]
    if missing:
        raise UserError(
            f"{what}: predictions lack columns {missing}", fix="pass y_true and y_prob columns"
        )
    return check_arrays(df["y_true"].to_numpy(), df["y_prob"].to_numpy())


def _fmt_ci(value: float, ci: tuple[float, float] | None) -> str:
    if ci is None or not all(math.isfinite(c) for c in ci):
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


# --------------------------------------------------------------------------- ROC / PR
def _curves(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC ``(fpr, tpr)`` and PR precision on ``GRID`` for one sample. ``y, p: (n,)``.

    Returns ``tpr_at_fpr: (G,)`` (max TPR reached at each FPR, step interpolation),
    ``precision_at_recall: (G,)`` (interpolated precision: max precision at recall >= r).
    """
    _, tp, fp = operating_points(y, p)  # cumulative counts, highest threshold first
    fpr, tpr = np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]  # both non-decreasing
    tpr_at = tpr[np.searchsorted(fpr, GRID + 1e-12, side="right") - 1]
    recall, precision = tp / tp[-1], tp / (tp + fp)
    envelope = np.r_[np.maximum.accumulate(precision[::-1])[::-1], 0.0]  # max precision at i..end
    prec_at = envelope[np.searchsorted(recall, GRID - 1e-12, side="left")]
    return tpr_at, prec_at


def plot_roc_pr(
    df: pd.DataFrame,
    path_prefix: Path | str,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    title: str = "",
    unit: str = "patient",
) -> Path:
    """ROC and PR curves side by side, with bootstrap bands; writes ``{path_prefix}_roc_pr.png``.

    ``df`` has ``y_true`` and ``y_prob`` (one row per video or study). Bands are the ``ci``
    percentile envelopes of ``n_boot`` stratified resamples (TPR at fixed FPR; interpolated
    precision at fixed recall) of ``unit`` (``evaluate.bootstrap_unit``: whole patients by
    default, as metrics.json's CIs; the band's label names it); legends give AUROC, AP and the
    trapezoid AUPR with their CIs. ``n_boot=0`` draws the curves without bands.
    """
    path = Path(f"{path_prefix}_roc_pr.png")
    y, p = _arrays(df, "plot_roc_pr")
    why = one_class_reason(y)
    if why:
        return notice_figure(path, title or "ROC / PR", why)
    point = compute_metrics(y, p)
    cis: dict[str, tuple[float, float]] = {}
    bands = None
    if n_boot > 0:
        clusters, ci_unit = resolve_clusters(df, unit)
        names = ["auroc", "ap", "aupr_trapz"]
        cis = bootstrap_ci(y, p, names, n=n_boot, ci=ci, seed=seed, clusters=clusters)
        if clusters is None:
            yb, pb = y, p
            idx = resample_indices(y, n_boot, True, np.random.default_rng(seed))  # (B, n)
        else:  # each resample repeats every item as often as its patient was drawn
            yb, pb, counts, item_cluster = cluster_resamples(y, p, clusters, n_boot, seed)
            idx = [np.repeat(np.arange(len(yb)), c[item_cluster]) for c in counts]
        boot = [_curves(yb[row], pb[row]) for row in idx]
        tprs = np.stack([b[0] for b in boot])  # (B, G)
        precs = np.stack([b[1] for b in boot])  # (B, G)
        bands = [
            np.array([percentile_interval(col, ci) for col in arr.T]).T for arr in (tprs, precs)
        ]  # each (2, G)
    tpr_at, prec_at = _curves(y, p)
    fig, (ax_roc, ax_pr) = _figure(2)
    ax_roc.plot(
        GRID, tpr_at, color="C0", label=f"AUROC {_fmt_ci(point['auroc'], cis.get('auroc'))}"
    )
    ax_roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax_roc.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title="ROC")
    prevalence = point["prevalence"]
    ax_pr.plot(
        GRID,
        prec_at,
        color="C1",
        label=f"AP {_fmt_ci(point['ap'], cis.get('ap'))}\n"
        f"AUPR (trapezoid) {_fmt_ci(point['aupr_trapz'], cis.get('aupr_trapz'))}",
    )
    ax_pr.axhline(prevalence, ls="--", color="grey", lw=0.8, label=f"prevalence {prevalence:.3f}")
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall")
    if bands is not None:
        pct = f"{100 * ci:g}% bootstrap band (n={n_boot}, {ci_unit})"
        ax_roc.fill_between(GRID, bands[0][0], bands[0][1], color="C0", alpha=0.2, label=pct)
        ax_pr.fill_between(GRID, bands[1][0], bands[1][1], color="C1", alpha=0.2, label=pct)
    for ax in (ax_roc, ax_pr):
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8)
    n_pos = int(y.sum())
    fig.suptitle(f"{title + ': ' if title else ''}n={len(y)}, positives={n_pos}")
    return _save(fig, path)


# --------------------------------------------------------------------------- confusion / calibration
def plot_confusion(
    df: pd.DataFrame, path: Path | str, threshold: float = 0.5, title: str = ""
) -> Path:
    """2x2 confusion matrix at ``y_prob >= threshold``: counts and row percentages."""
    y, p = _arrays(df, "plot_confusion")
    if len(y) == 0:
        return notice_figure(path, title or "confusion matrix", "no samples: n=0")
    pred = (p >= threshold).astype(int)
    counts = np.array([[np.sum((y == t) & (pred == q)) for q in (0, 1)] for t in (0, 1)])  # (2, 2)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros((2, 2)), where=rows > 0)
    fig, (ax,) = _figure(width=4.2, height=4.0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for t in (0, 1):
        for q in (0, 1):
            text = f"{counts[t, q]}\n({100 * share[t, q]:.0f}%)" if rows[t, 0] else "0"
            ax.text(
                q,
                t,
                text,
                ha="center",
                va="center",
                color="white" if share[t, q] > 0.6 else "black",
                fontsize=12,
            )
    ax.set_xticks([0, 1], ["pred 0", "pred 1"])
    ax.set_yticks([0, 1], ["true 0", "true 1"])
    ax.set_title(f"{title + ': ' if title else ''}threshold {threshold:.3g}", fontsize=10)
    return _save(fig, path)


def plot_calibration(df: pd.DataFrame, path: Path | str, n_bins: int = 10, title: str = "") -> Path:
    """Reliability diagram: observed positive rate vs mean predicted probability in ``n_bins``
    equal-width bins over [0, 1] (empty bins omitted), with the Brier score and a histogram."""
    y, p = _arrays(df, "plot_calibration")
    if len(y) == 0:
        return notice_figure(path, title or "calibration", "no samples: n=0")
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)  # (n,) bin index, 1.0 in last bin
    count = np.bincount(bins, minlength=n_bins)
    mean_p = np.bincount(bins, weights=p, minlength=n_bins)
    frac = np.bincount(bins, weights=y, minlength=n_bins)
    used = count > 0
    mean_p, frac = mean_p[used] / count[used], frac[used] / count[used]
    brier = float(np.mean((p - y) ** 2))
    fig = Figure(figsize=(5.0, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax_hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    ax.plot(mean_p, frac, "o-", color="C0", label=f"model (Brier {brier:.3f})")
    ax.set(ylabel="observed positive rate", xlim=(0, 1), ylim=(-0.02, 1.02))
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(
        f"{title + ': ' if title else ''}calibration ({n_bins} bins, n={len(y)})", fontsize=10
    )
    ax_hist.hist(p, bins=np.linspace(0, 1, n_bins + 1), color="C0", alpha=0.6)
    ax_hist.set(xlabel="predicted probability", ylabel="count")
    return _save(fig, path)


# --------------------------------------------------------------------------- training history
def plot_history(history_csv: Path | str, path: Path | str) -> Path:
    """Learning curves from a run's ``history.csv``: loss columns (left) and other per-epoch
    metrics such as ``val_auroc`` (right) against ``epoch``. Timing/lr/step columns are left out."""
    history_csv = Path(history_csv)
    if not history_csv.exists():
        raise UserError(
            f"history file not found: {history_csv}", fix="pass a run dir's history.csv"
        )
    df = pd.read_csv(history_csv)
    if df.empty or "epoch" not in df.columns:
        why = "no epochs recorded" if df.empty else f"no 'epoch' column (has {list(df.columns)})"
        return notice_figure(path, "training history", why)
    numeric = [
        c for c in df.columns if c not in HISTORY_SKIP and pd.api.types.is_numeric_dtype(df[c])
    ]
    losses = [c for c in numeric if "loss" in c]
    others = [c for c in numeric if "loss" not in c]
    fig, (ax_loss, ax_metric) = _figure(2, height=4.0)
    for ax, cols, label in ((ax_loss, losses, "loss"), (ax_metric, others, "metric")):
        for col in cols:
            ax.plot(df["epoch"], df[col], marker="o" if len(df) < 30 else None, ms=3, label=col)
        if cols:
            ax.legend(fontsize=8)
        else:
            ax.text(
                0.5, 0.5, f"no {label} columns", ha="center", va="center", transform=ax.transAxes
            )
        ax.set(xlabel="epoch", ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_title("loss")
    ax_metric.set_title("per-epoch metrics")
    return _save(fig, path)


# --------------------------------------------------------------------------- label efficiency
def band_label(n_seeds: pd.Series) -> str:
    """What a label-efficiency line's band shows, from its points' seed counts (a sweep may run
    more seeds at low ratios: ``sweep.low_ratio_seeds``)."""
    many = n_seeds > 1
    if many.all():
        return "mean +/- sd over seeds"
    if not many.any():
        return "bootstrap CI"
    return "mean +/- sd where several seeds, else bootstrap CI"


def label_efficiency_table(
    results_df: pd.DataFrame, task: str, split: str, level: str = "study", metric: str = "auroc"
) -> pd.DataFrame:
    """One row per (init, ratio): ``init, ratio, n_studies, value, low, high, n_seeds``.

    With one seed the band is that run's bootstrap CI; with several seeds ``value`` is the mean
    over seeds and the band mean +/- sd. Rows whose value is missing (a one-class split) are
    dropped.
    """
    missing = [c for c in RESULT_KEY_COLUMNS if c not in results_df.columns]
    if missing:
        raise UserError(
            f"results table lacks columns {missing}", fix="pass the sweep's results.csv"
        )
    sel = results_df[
        (results_df["task"] == task)
        & (results_df["split"] == split)
        & (results_df["level"] == level)
        & (results_df["metric"] == metric)
    ].dropna(subset=["value"])
    rows = []
    for (init, ratio), g in sel.groupby(["init", "ratio"], sort=True):
        n_studies = float(g["n_studies"].mean())
        if len(g) == 1:
            low, high = g["ci_low"].iloc[0], g["ci_high"].iloc[0]
            value = float(g["value"].iloc[0])
        else:
            value, sd = float(g["value"].mean()), float(g["value"].std(ddof=1))
            low, high = value - sd, value + sd
        rows.append(
            {
                "init": init,
                "ratio": float(ratio),
                "n_studies": n_studies,
                "value": value,
                "low": low,
                "high": high,
                "n_seeds": len(g),
            }
        )
    return pd.DataFrame(
        rows, columns=["init", "ratio", "n_studies", "value", "low", "high", "n_seeds"]
    )


def plot_label_efficiency(
    results_df: pd.DataFrame,
    path: Path | str,
    task: str,
    split: str,
    level: str = "study",
    metric: str = "auroc",
    inits: Sequence[str] | None = None,
) -> Path:
    """``metric`` vs number of labeled training studies (log x), one line per init with bands.

    ``results_df`` is the sweep's results table (``schema.RESULT_COLUMNS``); ``inits`` fixes the order of
    the lines (default: sorted). Bands: see ``label_efficiency_table``. Top axis: label ratio.
    """
    title = f"{task} - {split} - {level} {metric}"
    table = label_efficiency_table(results_df, task, split, level, metric)
    if table.empty:
        return notice_figure(
            path,
            title,
            f"no results with a value for task={task}, split={split}, "
            f"level={level}, metric={metric}",
        )
    order = list(inits) if inits is not None else sorted(table["init"].unique())
    fig, (ax,) = _figure(width=6.5, height=4.5)
    for i, init in enumerate(o for o in order if o in set(table["init"])):
        g = table[table["init"] == init].sort_values("n_studies")
        band = band_label(g["n_seeds"])
        ax.plot(g["n_studies"], g["value"], "o-", color=f"C{i}", label=f"{init} ({band})")
        ok = g["low"].notna() & g["high"].notna()
        if ok.any():
            ax.fill_between(
                g["n_studies"][ok], g["low"][ok], g["high"][ok], color=f"C{i}", alpha=0.15
            )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="labeled training studies", ylabel=metric, title=title)
    if metric == "auroc":
        ax.axhline(0.5, ls=":", color="grey", lw=0.8)
    ratios = table.groupby("ratio")["n_studies"].mean().sort_index()
    top = ax.secondary_xaxis("top")
    top.set_xticks(ratios.to_numpy(), [f"{100 * r:g}%" for r in ratios.index], fontsize=8)
    top.minorticks_off()
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


# --------------------------------------------------------------------------- run-dir bundle
def plot_evaluation(
    levels_by_split: dict[str, dict[str, pd.DataFrame]],
    out_dir: Path | str,
    thresholds: dict[str, dict[str, float | None]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    unit: str = "patient",
) -> list[Path]:
    """All evaluation figures of a run: for each split and level (``{split: {level: df}}``, as
    from ``aggregate_levels``) write ``{split}_{level}_roc_pr.png`` (bands resampling ``unit``), ``_confusion.png`` (at 0.5),
    ``_calibration.png`` and, when ``thresholds[level]["youden"]`` was chosen on validation,
    ``_confusion_youden.png`` (not for the val split itself). Returns the paths written."""
    out_dir = Path(out_dir)
    paths: list[Path] = []
    for split, by_level in levels_by_split.items():
        for level, df in by_level.items():
            stem = out_dir / f"{split}_{level}"
            name = f"{split}/{level}"
            paths.append(plot_roc_pr(df, stem, n_boot, seed, ci, title=name, unit=unit))
            paths.append(plot_confusion(df, f"{stem}_confusion.png", 0.5, title=name))
            paths.append(plot_calibration(df, f"{stem}_calibration.png", title=name))
            youden = (thresholds or {}).get(level, {}).get("youden")
            if split != "val" and youden is not None and math.isfinite(youden):
                paths.append(
                    plot_confusion(
                        df, f"{stem}_confusion_youden.png", youden, title=f"{name} (Youden on val)"
                    )
                )
    return paths
