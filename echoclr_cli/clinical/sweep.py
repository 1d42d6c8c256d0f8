"""Sweep-level clinical tables: calibration rows for results.csv, paired DeLong between inits
(clustered by patient by default: ``evaluate.bootstrap_unit``).

Pure functions over a sweep dir's ``selection.csv`` rows and the selected runs' files
(``metrics.json``, ``predictions_{split}_{level}.csv``); nothing here trains or writes.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from echoclr_cli.clinical.core import CALIBRATION_METRICS, ClinicalOptions, calibration_cells
from echoclr_cli.metrics.clustered import resolve_clusters
from echoclr_cli.metrics.compare import paired_delong
from echoclr_cli.metrics.core import check_arrays, one_class_reason

PAIRED_COLUMNS = [
    "task", "ratio", "n_studies", "seed", "split", "level", "init_a", "init_b", "n", "n_pos",
    "auroc_a", "auroc_b", "diff", "ci_low", "ci_high", "p_value", "p_holm", "unit", "test",
    "reason",
]  # fmt: skip
RESULT_KEYS = ("task", "init", "ratio", "n_studies", "seed", "lr")


def _metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.json"
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        return None


def _predictions(run_dir: Path, split: str, level: str) -> pd.DataFrame | None:
    path = run_dir / f"predictions_{split}_{level}.csv"
    return pd.read_csv(path) if path.exists() else None


def calibration_rows(
    run_dir: Path, splits: Sequence[str], opts: ClinicalOptions, levels=("study", "video")
) -> list[dict[str, Any]]:
    """``split, level, metric, value, ci_low, ci_high, n, ci_unit`` of the raw calibration
    metrics of one run: from ``metrics.json["clinical"]`` when the evaluation wrote it, else
    computed from the run's prediction CSVs (CIs resampling ``opts.unit``)."""
    metrics = _metrics(run_dir) or {}
    clinical = metrics.get("clinical", {}).get("levels", {})
    rows = []
    for split in splits:
        for level in levels:
            entry = clinical.get(level, {}).get("splits", {}).get(split, {})
            cells, unit = entry.get("calibration", {}).get("raw"), entry.get("ci_unit")
            if cells is None:
                df = _predictions(run_dir, split, level)
                if df is None:
                    continue
                y, p = check_arrays(df["y_true"].to_numpy(), df["y_prob"].to_numpy())
                clusters, unit = resolve_clusters(df, opts.unit)
                cells = calibration_cells(y, p, opts, clusters)
            for metric in CALIBRATION_METRICS:
                c = cells[metric]
                rows.append({"split": split, "level": level, "metric": metric,
                             "value": c["value"], "ci_low": c["ci_low"],
                             "ci_high": c["ci_high"], "n": c["n"], "ci_unit": unit})  # fmt: skip
    return rows


def sweep_clinical_columns(
    results_df: pd.DataFrame,
    selection: pd.DataFrame,
    out_dir: Path | str,
    splits: Sequence[str],
    opts: ClinicalOptions | None = None,
) -> pd.DataFrame:
    """``results_df`` (the sweep's long results table) plus the calibration metrics (``brier,
    ece, calibration_slope, calibration_intercept``) of every selected run as extra rows in
    the same columns, so the tables and figures of any metric work for them too."""
    if results_df["metric"].isin(CALIBRATION_METRICS).any():  # already added (idempotent)
        return results_df
    opts = opts or ClinicalOptions()
    out_dir = Path(out_dir)
    rows = []
    for sel in selection[selection["run_dir"].fillna("") != ""].itertuples():
        keys = {k: getattr(sel, k) for k in RESULT_KEYS}
        for r in calibration_rows(out_dir / sel.run_dir, splits, opts):
            rows.append({**keys, **r})
    if not rows:
        return results_df
    extra = pd.DataFrame(rows)
    cols = list(results_df.columns)
    extra = extra.reindex(columns=cols)
    for col in ("value", "ci_low", "ci_high"):
        extra[col] = pd.to_numeric(extra[col], errors="coerce").astype(float)
    return pd.concat([results_df, extra], ignore_index=True)


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if not len(ok):
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adj = np.maximum.accumulate([(m - i) * p[j] for i, j in enumerate(order)])
    out[order] = np.minimum(adj, 1.0)
    return out


def paired_pvalues(
    selection: pd.DataFrame,
    out_dir: Path | str,
    splits: Sequence[str],
    inits: Sequence[str] | None = None,
    level: str = "study",
    ci: float = 0.95,
    unit: str = "patient",
) -> pd.DataFrame:
    """DeLong's test between every pair of inits at each (task, ratio, seed, split).

    Both runs' ``predictions_{split}_{level}.csv`` are matched on ``study_id`` (``video_id`` at
    video level); ``diff = AUROC_a - AUROC_b`` with its normal CI. ``unit``
    (``evaluate.bootstrap_unit``, ``metrics.clustered.resolve_clusters``): ``patient`` =
    Obuchowski's clustered DeLong over the predictions' ``patient_id`` (the study without one);
    each row names its ``unit`` and ``test``. ``p_holm`` adjusts the
    p-values of one (task, split) for the number of comparisons in it (Holm). Pairs that cannot
    be tested get a ``reason`` (missing predictions, different items, < 2 of a class).
    """
    out_dir = Path(out_dir)
    on = "study_id" if level == "study" else "video_id"
    sel = selection[selection["run_dir"].fillna("") != ""]
    order = list(inits) if inits is not None else sorted(sel["init"].unique())
    rank = {n: i for i, n in enumerate(order)}
    rows = []
    for (task, ratio, seed), g in sel.groupby(["task", "ratio", "seed"], sort=True):
        runs = sorted(g.itertuples(), key=lambda r: (rank.get(r.init, len(rank)), r.init))
        for split in splits:
            for a, b in itertools.combinations(runs, 2):
                rows.append(_pair(out_dir, a, b, task, ratio, seed, split, (level, on, unit), ci))
    df = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    for (_, _), g in df.groupby(["task", "split"], sort=False):
        df.loc[g.index, "p_holm"] = holm(g["p_value"].to_numpy(dtype=np.float64))
    return df


def _pair(out_dir, a, b, task, ratio, seed, split, keys, ci) -> dict[str, Any]:
    level, on, unit = keys
    row: dict[str, Any] = {
        "task": task, "ratio": float(ratio), "n_studies": int(a.n_studies), "seed": int(seed),
        "split": split, "level": level, "init_a": a.init, "init_b": b.init, "n": 0, "n_pos": 0,
        "auroc_a": math.nan, "auroc_b": math.nan, "diff": math.nan, "ci_low": math.nan,
        "ci_high": math.nan, "p_value": math.nan, "p_holm": math.nan, "unit": "", "test": "",
        "reason": "",
    }  # fmt: skip
    da = _predictions(out_dir / a.run_dir, split, level)
    db = _predictions(out_dir / b.run_dir, split, level)
    if da is None or db is None:
        row["reason"] = f"no predictions_{split}_{level}.csv in one of the runs"
        return row
    ids = [c for c in ("study_id", "patient_id") if c != on and c in da.columns]
    merged = da[[on, *ids, "y_true", "y_prob"]].merge(
        db[[on, "y_true", "y_prob"]], on=on, suffixes=("_a", "_b"), how="inner"
    )
    if len(merged) != len(da) or len(merged) != len(db):
        row["reason"] = f"the runs were evaluated on different {on}s"
        return row
    if (merged["y_true_a"] != merged["y_true_b"]).any():
        row["reason"] = "labels differ between the runs"
        return row
    y = merged["y_true_a"].to_numpy().astype(np.int64)
    n_pos = int(y.sum())
    row.update(n=len(y), n_pos=n_pos)
    why = one_class_reason(y)
    if why or min(n_pos, len(y) - n_pos) < 2:
        row["reason"] = why or f"DeLong needs >= 2 of each class: n_pos={n_pos}, n={len(y)}"
        return row
    clusters, row["unit"] = resolve_clusters(merged, unit)
    pa, pb = merged["y_prob_a"].to_numpy(), merged["y_prob_b"].to_numpy()
    t = paired_delong(y, pa, pb, ci, clusters, row["unit"])
    row["test"] = t["test"]
    if "reason" in t:
        row["reason"] = t["reason"]
        return row
    row.update({k: t[k] for k in ("auroc_a", "auroc_b", "diff", "ci_low", "ci_high", "p_value")})
    return row
