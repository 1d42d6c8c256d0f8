"""Clinical evaluation over predictions: calibration, operating points, subgroups.

Pure functions of ``y_true`` / ``y_prob`` arrays and aggregated prediction frames (no model code),
used after every evaluation (``clinical.write.write_clinical`` adds a ``"clinical"`` key to
``metrics.json``) and by ``echoclr report``.

Conventions (in addition to those of ``echoclr_cli.metrics.core``):

- Everything is chosen or fitted on the ``val`` split only and applied unchanged to the other
  splits: operating thresholds and the recalibration maps (temperature, Platt). CIs of the other
  splits treat what was chosen on val as fixed: they are the same stratified percentile
  bootstrap of the evaluated split as ``metrics.bootstrap_ci`` (same resamples for the same seed;
  whole patients by default, ``evaluate.bootstrap_unit``, named in each split's ``ci_unit``), so
  they reflect test sampling only.
- ``brier`` = mean (p - y)^2 (``sklearn.metrics.brier_score_loss``). ``ece`` = sum over
  equal-mass bins of (bin share) x |observed rate - mean predicted| with the bins of
  ``sklearn.calibration.calibration_curve(strategy="quantile")`` (empty bins dropped).
- ``calibration_slope`` is ``b`` of the logistic model ``logit P(y) = a + b logit(p)``;
  ``calibration_intercept`` is ``a`` of ``logit P(y) = a + logit(p)`` (calibration-in-the-large,
  slope fixed at 1). Perfect calibration: slope 1, intercept 0. Separable data have no finite
  slope: NaN with a reason.
- Operating points: ``sens90`` / ``sens95`` = the highest val threshold whose val sensitivity is
  >= 0.90 / 0.95, ``youden`` = ``metrics.choose_thresholds``'s, ``sens{X}`` for a user
  ``at_sensitivity``, ``fixed`` for a user ``at_threshold``. Positive iff ``y_prob >= t``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import expit

from echoclr_cli.clinical.logistic import _logistic_fit, logistic_fit_batch
from echoclr_cli.errors import UserError
from echoclr_cli.metrics.bootstrap import (
    bootstrap_distribution,
    cluster_resamples,
    percentile_interval,
    resample_indices,
)
from echoclr_cli.metrics.clustered import resolve_clusters
from echoclr_cli.metrics.core import (
    check_arrays,
    choose_thresholds,
    compute_metrics,
    one_class_reason,
    operating_points,
)

EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before the logit
CALIBRATION_METRICS = ("brier", "ece", "calibration_slope", "calibration_intercept")
OPERATING_METRICS = ("sensitivity", "specificity", "ppv", "npv")
CALIBRATE_CHOICES = ("none", "temperature", "platt", "both")


# --------------------------------------------------------------------------- options
@dataclass
class ClinicalOptions:
    """What ``clinical_metrics`` computes. ``from_config`` reads ``cfg.evaluate``."""

    at_sensitivity: float | None = None
    at_threshold: float | None = None
    calibrate: str = "none"  # none | temperature | platt | both
    n_bins: int = 10
    subgroups: list[str] | None = None  # None = every suitable manifest column
    subgroup_min_n: int = 20
    n_boot: int = 1000
    ci: float = 0.95
    seed: int = 0
    levels: tuple[str, ...] = ("study", "video")
    unit: str = "patient"  # what CIs resample (evaluate.bootstrap_unit; resolve_clusters)

    def __post_init__(self) -> None:
        if self.calibrate not in CALIBRATE_CHOICES:
            raise UserError(
                f"calibrate must be one of {', '.join(CALIBRATE_CHOICES)}, got {self.calibrate!r}",
                fix="pass --calibrate none|temperature|platt|both",
            )
        if self.at_sensitivity is not None and not 0 < self.at_sensitivity <= 1:
            raise UserError(
                f"at_sensitivity must be in (0, 1], got {self.at_sensitivity}",
                fix="pass e.g. --at-sensitivity 0.85",
            )
        if self.at_threshold is not None and not 0 <= self.at_threshold <= 1:
            raise UserError(
                f"at_threshold must be a probability in [0, 1], got {self.at_threshold}",
                fix="pass e.g. --at-threshold 0.3",
            )
        if self.n_bins < 2:
            raise UserError(f"n_bins must be >= 2, got {self.n_bins}", fix="use e.g. 10 bins")

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> ClinicalOptions:
        """Options from ``cfg.evaluate`` (keys absent from an older config keep their defaults)."""
        ev = cfg.evaluate
        kw: dict[str, Any] = {"n_boot": ev.bootstrap, "ci": ev.ci, "seed": ev.bootstrap_seed}
        kw["unit"] = getattr(ev, "bootstrap_unit", "patient")
        for name in ("at_sensitivity", "at_threshold", "calibrate", "subgroups", "subgroup_min_n"):
            if hasattr(ev, name):
                kw[name] = getattr(ev, name)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)


# --------------------------------------------------------------------------- calibration
def logit(p: Any) -> np.ndarray:
    """log(p / (1 - p)) of ``p`` clipped to ``[EPS, 1 - EPS]``."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(q) - np.log1p(-q)


def brier_score(y_true: Any, y_prob: Any) -> float:
    """Mean squared error of the probabilities (NaN for no samples)."""
    y, p = check_arrays(y_true, y_prob)
    return float(np.mean((p - y) ** 2)) if len(y) else math.nan


def _bin_arrays(y: np.ndarray, p: np.ndarray, n_bins: int):
    """``(n, mean_pred, frac_pos)`` arrays of the non-empty equal-mass bins (see quantile_bins)."""
    edges = np.percentile(p, np.linspace(0, 1, n_bins + 1) * 100)  # (n_bins + 1,)
    ids = np.searchsorted(edges[1:-1], p)  # (n,) bin of each prediction
    total = np.bincount(ids, minlength=len(edges))
    sums = np.bincount(ids, weights=p, minlength=len(edges))
    trues = np.bincount(ids, weights=y, minlength=len(edges))
    used = total > 0
    return total[used], sums[used] / total[used], trues[used] / total[used]


def quantile_bins(y_true: Any, y_prob: Any, n_bins: int = 10) -> pd.DataFrame:
    """Equal-mass calibration bins, exactly those of scikit-learn's ``calibration_curve`` with
    ``strategy="quantile"``: one row per non-empty bin with ``n, mean_pred, frac_pos``."""
    y, p = check_arrays(y_true, y_prob)
    if len(y) == 0:
        return pd.DataFrame(columns=["n", "mean_pred", "frac_pos"])
    n, mean, frac = _bin_arrays(y, p, n_bins)
    return pd.DataFrame({"n": n, "mean_pred": mean, "frac_pos": frac})


def expected_calibration_error(y_true: Any, y_prob: Any, n_bins: int = 10) -> float:
    """ECE over equal-mass bins: sum of (bin share) x |observed rate - mean predicted|."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob, dtype=np.float64)
    if len(y) == 0:
        return math.nan
    n, mean, frac = _bin_arrays(y, p, n_bins)
    return float(np.sum(n / n.sum() * np.abs(frac - mean)))


def calibration_slope_intercept(y_true: Any, y_prob: Any) -> tuple[float, float]:
    """``(slope, intercept)`` by logistic recalibration on ``logit(p)`` (see module docstring)."""
    y, p = check_arrays(y_true, y_prob)
    if one_class_reason(y):
        return math.nan, math.nan
    x = logit(p)
    _, slope = _logistic_fit(x, y.astype(np.float64), offset=False)
    intercept, _ = _logistic_fit(x, y.astype(np.float64), offset=True)
    return slope, intercept


def fit_temperature(y_true: Any, y_prob: Any) -> float:
    """Temperature ``T`` minimising the log loss of ``sigmoid(logit(p) / T)`` (T in [e^-5, e^5])."""
    y, p = check_arrays(y_true, y_prob)
    x = logit(p)

    def nll(log_t: float) -> float:
        z = x / math.exp(log_t)
        return float(np.sum(np.logaddexp(0, z) - y * z))

    return float(math.exp(minimize_scalar(nll, bounds=(-5, 5), method="bounded").x))


def fit_platt(y_true: Any, y_prob: Any) -> tuple[float, float]:
    """Platt scaling ``sigmoid(a + b logit(p))`` with Platt's smoothed targets (finite on
    separable data): positives -> (N+ + 1) / (N+ + 2), negatives -> 1 / (N- + 2)."""
    y, p = check_arrays(y_true, y_prob)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    target = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = _logistic_fit(logit(p), target, offset=False, max_iter=100)
    return a, b


def fit_recalibration(y_val: Any, p_val: Any, method: str) -> dict[str, Any]:
    """Recalibration map fitted on val: ``{"method", "params", "reason"?}``."""
    y, p = check_arrays(y_val, p_val)
    why = one_class_reason(y)
    if why:
        return {"method": method, "params": None, "reason": f"val split: {why}"}
    if method == "temperature":
        return {"method": method, "params": {"temperature": fit_temperature(y, p)}}
    a, b = fit_platt(y, p)
    if not (math.isfinite(a) and math.isfinite(b)):
        return {"method": method, "params": None, "reason": "Platt fit did not converge on val"}
    return {"method": method, "params": {"a": a, "b": b}}


def apply_recalibration(y_prob: Any, fitted: Mapping[str, Any]) -> np.ndarray | None:
    """Recalibrated probabilities (None when the map could not be fitted)."""
    params = fitted.get("params")
    if not params:
        return None
    x = logit(y_prob)
    if fitted["method"] == "temperature":
        return expit(x / params["temperature"])
    return expit(params["a"] + params["b"] * x)


# --------------------------------------------------------------------------- operating points
def threshold_for_sensitivity(y_true: Any, y_prob: Any, target: float) -> float:
    """The highest threshold whose sensitivity is >= ``target`` (NaN for one class)."""
    y, p = check_arrays(y_true, y_prob)
    if one_class_reason(y):
        return math.nan
    thr, tp, _ = operating_points(y, p)
    return float(thr[np.argmax(tp >= target * int(y.sum()) - 1e-9)])


def choose_operating_points(y_val: Any, p_val: Any, opts: ClinicalOptions) -> dict[str, float]:
    """Thresholds chosen on val: ``sens90, sens95, youden`` (+ ``sens{X}``, ``fixed``)."""
    out = {
        "sens90": threshold_for_sensitivity(y_val, p_val, 0.90),
        "sens95": threshold_for_sensitivity(y_val, p_val, 0.95),
        "youden": choose_thresholds(y_val, p_val)["youden"],
    }
    if opts.at_sensitivity is not None:
        out[sens_name(opts.at_sensitivity)] = threshold_for_sensitivity(
            y_val, p_val, opts.at_sensitivity
        )
    if opts.at_threshold is not None:
        out["fixed"] = float(opts.at_threshold)
    return out


def sens_name(target: float) -> str:
    """``0.9 -> "sens90"``, ``0.875 -> "sens87.5"``."""
    return f"sens{100 * target:g}"


def confusion(y: np.ndarray, p: np.ndarray, t: float) -> tuple[int, int, int, int]:
    """``(tp, fp, fn, tn)`` at ``p >= t``."""
    pred = p >= t
    return (
        int((pred & (y == 1)).sum()),
        int((pred & (y == 0)).sum()),
        int((~pred & (y == 1)).sum()),
        int((~pred & (y == 0)).sum()),
    )


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def operating_values(y_true: Any, y_prob: Any, t: float) -> dict[str, float]:
    """``sensitivity, specificity, ppv, npv`` at ``y_prob >= t`` (NaN when undefined)."""
    y, p = check_arrays(y_true, y_prob)
    if not math.isfinite(t):
        return {k: math.nan for k in OPERATING_METRICS}
    tp, fp, fn, tn = confusion(y, p, t)
    return {
        "sensitivity": _div(tp, tp + fn),
        "specificity": _div(tn, tn + fp),
        "ppv": _div(tp, tp + fp),
        "npv": _div(tn, tn + fn),
    }


# --------------------------------------------------------------------------- cells with CIs
def _clean(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def can_bootstrap(y: np.ndarray, opts: ClinicalOptions) -> bool:
    """Whether a stratified bootstrap CI is informative: resamples asked for, and every class
    present has >= 2 members (a class of one is the same in every resample: a degenerate CI)."""
    n_pos = int(np.sum(y == 1))
    n_neg = len(y) - n_pos
    return opts.n_boot > 0 and len(y) > 0 and n_pos != 1 and n_neg != 1


def effective_bins(n: int, n_bins: int) -> int:
    """Equal-mass bins used for ECE and the reliability diagram: ``n_bins``, reduced so that a
    bin holds >= 10 predictions on average (>= 2 bins). Few, tiny bins bias ECE upwards."""
    return max(2, min(n_bins, n // 10))


def _cells(
    y: np.ndarray,
    p: np.ndarray,
    fns: Mapping[str, Callable[[np.ndarray, np.ndarray], float]],
    opts: ClinicalOptions,
    clusters: Any = None,
) -> dict[str, dict[str, Any]]:
    """``{name: {"value", "ci_low", "ci_high", "n"}}`` of point values and bootstrap CIs.

    The resamples are those of ``metrics.bootstrap_distribution`` (stratified, ``opts.seed``;
    whole ``clusters`` when given, e.g. patients: ``metrics.clustered.resolve_clusters``).
    """
    values = {k: fn(y, p) for k, fn in fns.items()}
    boot = {k: fn for k, fn in fns.items() if math.isfinite(values[k])}
    dist = (
        bootstrap_distribution(y, p, boot, n=opts.n_boot, seed=opts.seed, clusters=clusters)
        if boot and can_bootstrap(y, opts)
        else {}
    )
    out = {}
    for k, v in values.items():
        low, high = percentile_interval(dist[k], opts.ci) if k in dist else (math.nan, math.nan)
        out[k] = {"value": _clean(v), "ci_low": _clean(low), "ci_high": _clean(high), "n": len(y)}
    return out


def calibration_cells(
    y: np.ndarray, p: np.ndarray, opts: ClinicalOptions, clusters: Any = None
) -> dict[str, Any]:
    """Calibration metrics with CIs. Brier, ECE: per resample through
    ``metrics.bootstrap_distribution``; slope and intercept: one batched Newton fit over the
    same resamples (``resample_indices`` after the same score sort and seed; with ``clusters``
    the draw counts of ``metrics.cluster_resamples`` as weights)."""
    fns: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
        "brier": brier_score,
        "ece": lambda a, b: expected_calibration_error(a, b, bins),
    }
    bins = effective_bins(len(y), opts.n_bins)
    cells = _cells(y, p, fns, opts, clusters)
    cells["ece"]["bins"] = bins
    slope, intercept = calibration_slope_intercept(y, p)
    dist: dict[str, np.ndarray] = {}
    if can_bootstrap(y, opts) and not one_class_reason(y):
        if clusters is None:
            order = np.argsort(-p, kind="stable")  # as bootstrap_distribution does
            ys, xs = y[order].astype(np.float64), logit(p[order])
            idx = resample_indices(y[order], opts.n_boot, True, np.random.default_rng(opts.seed))
        else:
            ys, ps, counts, item_cluster = cluster_resamples(y, p, clusters, opts.n_boot, opts.seed)
            ys, xs = ys.astype(np.float64), logit(ps)
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        chunk = max(1, 1_000_000 // max(1, len(y)))
        for start in range(0, opts.n_boot, chunk):
            if clusters is None:
                rows = idx[start : start + chunk]
                bx, by, bw = xs[rows], ys[rows], None
            else:
                bw = counts[start : start + chunk][:, item_cluster]  # (b, n) item weights
                bx, by = np.broadcast_to(xs, bw.shape), np.broadcast_to(ys, bw.shape)
            _, b_ = logistic_fit_batch(bx, by, offset=False, weights=bw)
            a_, _ = logistic_fit_batch(bx, by, offset=True, weights=bw)
            parts.append((b_, a_))
        dist = {
            "calibration_slope": np.concatenate([q[0] for q in parts]),
            "calibration_intercept": np.concatenate([q[1] for q in parts]),
        }
    for k, v in (("calibration_slope", slope), ("calibration_intercept", intercept)):
        low, high = (
            percentile_interval(dist[k], opts.ci)
            if k in dist and math.isfinite(v)
            else (math.nan, math.nan)
        )
        cells[k] = {"value": _clean(v), "ci_low": _clean(low), "ci_high": _clean(high),
                    "n": len(y)}  # fmt: skip
    return cells


def operating_cells(
    y: np.ndarray, p: np.ndarray, t: float, opts: ClinicalOptions, clusters: Any = None
) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV at a fixed threshold, with CIs and counts.

    Sensitivity, specificity and PPV (= precision) are bootstrapped vectorised by
    ``metrics.batch_metrics``; NPV per resample. Both calls draw the same resamples (same seed).
    """
    values = operating_values(y, p, t)
    dist: dict[str, np.ndarray] = {}
    if can_bootstrap(y, opts) and math.isfinite(t):
        names = {"sensitivity": "sensitivity@op", "specificity": "specificity@op",
                 "ppv": "precision@op"}  # fmt: skip
        kw = {"n": opts.n_boot, "seed": opts.seed, "clusters": clusters}
        boot = bootstrap_distribution(y, p, list(names.values()), thresholds={"op": t}, **kw)
        dist = {k: boot[v] for k, v in names.items()}
        if math.isfinite(values["npv"]):
            npv = {"npv": lambda a, b: operating_values(a, b, t)["npv"]}
            dist.update(bootstrap_distribution(y, p, npv, **kw))
    cells = {}
    for k, v in values.items():
        ok = k in dist and math.isfinite(v)
        low, high = percentile_interval(dist[k], opts.ci) if ok else (math.nan, math.nan)
        cells[k] = {"value": _clean(v), "ci_low": _clean(low), "ci_high": _clean(high),
                    "n": len(y)}  # fmt: skip
    tp, fp, fn, tn = confusion(y, p, t) if math.isfinite(t) else (0, 0, 0, 0)
    return {"threshold": _clean(t), "tp": tp, "fp": fp, "fn": fn, "tn": tn, **cells}


def discrimination_cells(
    y: np.ndarray, p: np.ndarray, opts: ClinicalOptions, clusters: Any = None
) -> dict[str, Any]:
    """AUROC and AP with CIs (used for subgroups; vectorised ``bootstrap_distribution``)."""
    point = compute_metrics(y, p)
    names = [k for k in ("auroc", "ap") if math.isfinite(point[k])]
    dist = (
        bootstrap_distribution(y, p, names, n=opts.n_boot, seed=opts.seed, clusters=clusters)
        if names and can_bootstrap(y, opts)
        else {}
    )
    out = {}
    for k in ("auroc", "ap"):
        low, high = percentile_interval(dist[k], opts.ci) if k in dist else (math.nan, math.nan)
        out[k] = {"value": _clean(point[k]), "ci_low": _clean(low), "ci_high": _clean(high),
                  "n": len(y)}  # fmt: skip
    return out


# --------------------------------------------------------------------------- one level
def evaluate_level(
    val: pd.DataFrame | None,
    by_split: Mapping[str, pd.DataFrame],
    opts: ClinicalOptions,
) -> dict[str, Any]:
    """Calibration (raw and recalibrated) and operating points of aggregated frames of one level.

    ``val`` (``y_true, y_prob``) is where thresholds and recalibration maps are fitted; each
    frame of ``by_split`` (val itself included, reported in-sample for calibration only) is
    evaluated. Returns ``{"thresholds", "recalibration", "splits": {split: {"calibration":
    {variant: cells}, "operating_points": {name: cells}, "ci_unit"}}, "reasons"}``; ``ci_unit``
    names what the split's CIs resampled (``opts.unit``: ``resolve_clusters``).
    """
    reasons: dict[str, str] = {}
    thresholds: dict[str, float] = {}
    recal: dict[str, dict[str, Any]] = {}
    if val is not None and len(val):
        yv, pv = val["y_true"].to_numpy(), val["y_prob"].to_numpy()
        why = one_class_reason(yv)
        if why:
            reasons["thresholds"] = f"val split: {why}"
        thresholds = choose_operating_points(yv, pv, opts)
        methods = {"both": ["temperature", "platt"], "none": []}.get(
            opts.calibrate, [opts.calibrate]
        )
        for m in methods:
            recal[m] = fit_recalibration(yv, pv, m)
    else:
        reasons["thresholds"] = "no val split: operating points and recalibration need one"
    if opts.at_threshold is not None:
        thresholds.setdefault("fixed", float(opts.at_threshold))
    splits: dict[str, Any] = {}
    for split, df in by_split.items():
        y, p = check_arrays(df["y_true"].to_numpy(), df["y_prob"].to_numpy())
        cl, unit = resolve_clusters(df, opts.unit)
        entry: dict[str, Any] = {"calibration": {"raw": calibration_cells(y, p, opts, cl)}}
        for m, fitted in recal.items():
            q = apply_recalibration(p, fitted)
            if q is not None:
                entry["calibration"][m] = calibration_cells(y, q, opts, cl)
        if split != "val":
            entry["operating_points"] = {
                name: operating_cells(y, p, t, opts, cl) for name, t in thresholds.items()
            }
        entry["ci_unit"] = unit
        splits[split] = entry
    return {
        "thresholds": {k: _clean(v) for k, v in thresholds.items()},
        "recalibration": recal,
        "splits": splits,
        "reasons": reasons,
    }
