"""Subgroup metrics: per value of any manifest column, with CIs and a minimum-count warning.

Part of the clinical evaluation (``echoclr_cli.clinical.core``): a column constant within each
study is evaluated at study level, any other at video level; ``frame_rate_band`` is derived
from ``fps``. Missing values form their own subgroup ``"(missing)"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from echoclr_cli.clinical.core import (
    ClinicalOptions,
    _cells,
    _clean,
    _div,
    brier_score,
    discrimination_cells,
    operating_cells,
)
from echoclr_cli.data.dicom_fields import public_vendor_columns
from echoclr_cli.data.manifest import MANIFEST_COLUMNS
from echoclr_cli.errors import UserError
from echoclr_cli.metrics.clustered import resolve_clusters
from echoclr_cli.metrics.core import check_arrays, one_class_reason

# manifest columns that are never subgroups (ids, paths, sizes, hashes)
NON_SUBGROUP_COLUMNS = frozenset(
    {"video_id", "study_id", "patient_id", "path", "source_hash", "split", "n_frames", "height",
     "width", "channels", "fps_source", "y_true", "y_prob", "n_clips", "n_videos"}
)  # fmt: skip
MAX_SUBGROUP_LEVELS = 20  # auto mode: columns with more distinct values are skipped (named)
FPS_BANDS = ((0, 30, "<30"), (30, 50, "30-49"), (50, 80, "50-79"), (80, math.inf, ">=80"))


def frame_rate_band(fps: Any) -> str | None:
    """``fps`` -> ``"<30" | "30-49" | "50-79" | ">=80"`` (None when unknown)."""
    try:
        f = float(fps)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f) or f <= 0:
        return None
    return next(name for low, high, name in FPS_BANDS if low <= f < high)


def subgroup_columns(
    manifest: pd.DataFrame, requested: Sequence[str] | None, label_columns: Sequence[str] = ()
) -> tuple[list[str], dict[str, str]]:
    """Columns to split by and ``{column: why it was skipped}`` (auto mode only).

    ``requested`` None = every manifest column that is not an id/path/size/label and has 2 to
    ``MAX_SUBGROUP_LEVELS`` distinct values; ``frame_rate_band`` is derived from ``fps``. A
    requested column that is absent raises UserError naming the present ones.
    """
    present = [c for c in manifest.columns if not c.startswith("_")]
    if requested is not None:
        missing = [c for c in requested if c not in present]
        if missing:
            raise UserError(
                f"subgroup column(s) {missing} not in the manifest (columns: {present})",
                fix="pick evaluate.subgroups among the manifest columns",
            )
        return list(requested), {}
    cols, skipped = [], {}
    for c in present:
        if c in NON_SUBGROUP_COLUMNS or c in label_columns or c == "fps":
            continue
        k = manifest[c].nunique(dropna=True)
        if k < 2:
            skipped[c] = f"{k} distinct value(s)"
        elif k > MAX_SUBGROUP_LEVELS:
            skipped[c] = f"{k} distinct values (> {MAX_SUBGROUP_LEVELS}; name it to force)"
        else:
            cols.append(c)
    return cols, skipped


def with_derived_columns(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest plus ``frame_rate_band`` (from ``fps``) when it lacks one; vendor and model
    reduced to the allow-list (``data.dicom_fields``) whatever wrote the manifest."""
    out = public_vendor_columns(manifest).copy()
    if "fps" in out.columns and "frame_rate_band" not in out.columns:
        out["frame_rate_band"] = out["fps"].map(frame_rate_band)
    return out


def _label_columns(manifest: pd.DataFrame) -> list[str]:
    """Label columns: ``dataset.json``'s list when the manifest was loaded with it, else the
    non-schema columns holding only 0/1."""
    cols = manifest.attrs.get("label_columns")
    if cols is not None:
        return list(cols)
    return [
        c
        for c in manifest.columns
        if c not in MANIFEST_COLUMNS
        and set(pd.to_numeric(manifest[c], errors="coerce").dropna().unique()) <= {0, 1}
        and manifest[c].notna().any()
        and pd.api.types.is_numeric_dtype(manifest[c])
    ]


def _study_values(video_meta: pd.DataFrame, col: str) -> pd.Series | None:
    """``study_id -> value`` when ``col`` is constant within every study, else None."""
    g = video_meta.groupby("study_id")[col].nunique(dropna=False)
    if (g > 1).any():
        return None
    return video_meta.groupby("study_id")[col].first()


def subgroup_metrics(
    levels: Mapping[str, pd.DataFrame],
    manifest: pd.DataFrame,
    columns: Sequence[str],
    thresholds: Mapping[str, float | None],
    opts: ClinicalOptions,
) -> dict[str, Any]:
    """Metrics per value of each column for one split.

    ``levels``: ``{"video": df, "study": df}`` of the split (``aggregate_levels``). A column
    constant within each study is evaluated at study level, otherwise at video level. Each
    subgroup gets ``n, n_pos, prevalence``, AUROC/AP, Brier and the ``youden`` operating point
    (chosen on the whole val split) with CIs; ``warning`` when ``n < opts.subgroup_min_n`` or
    the subgroup has one class. Missing values form the subgroup ``"(missing)"``.
    """
    video = levels["video"]
    meta = manifest.drop_duplicates("video_id").set_index("video_id")
    out: dict[str, Any] = {}
    for col in columns:
        vmeta = video[["video_id", "study_id"]].assign(
            **{col: video["video_id"].map(meta[col]) if col in meta.columns else None}
        )
        per_study = _study_values(vmeta, col)
        if per_study is not None:
            level, df = "study", levels["study"]
            values = df["study_id"].map(per_study)
        else:
            level, df = "video", video
            values = vmeta[col]
        values = values.astype(object).where(values.notna(), "(missing)").map(_label)
        groups = []
        for value in sorted(values.unique(), key=_sort_key):
            sub = df[(values == value).to_numpy()]
            groups.append(_subgroup_entry(str(value), sub, thresholds, opts))
        out[col] = {"level": level, "groups": groups}
    return out


def _label(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _sort_key(v: str) -> tuple[int, float, str]:
    try:
        return (0, float(v), v)
    except ValueError:
        return (1 if v != "(missing)" else 2, 0.0, v)


def _subgroup_entry(
    value: str, df: pd.DataFrame, thresholds: Mapping[str, float | None], opts: ClinicalOptions
) -> dict[str, Any]:
    y, p = check_arrays(df["y_true"].to_numpy(), df["y_prob"].to_numpy())
    n, n_pos = len(y), int(y.sum())
    cl, unit = resolve_clusters(df, opts.unit)  # CIs resample patients (evaluate.bootstrap_unit)
    entry: dict[str, Any] = {
        "value": value,
        "n": n,
        "n_pos": n_pos,
        "prevalence": _clean(_div(n_pos, n)),
        **discrimination_cells(y, p, opts, cl),
        "brier": _cells(y, p, {"brier": brier_score}, opts, cl)["brier"],
        "ci_unit": unit,
    }
    t = thresholds.get("youden")
    if t is not None and math.isfinite(t):
        entry["youden"] = operating_cells(y, p, t, opts, cl)
    warnings = []
    if n < opts.subgroup_min_n:
        warnings.append(f"n={n} < {opts.subgroup_min_n}: estimates unreliable")
    why = one_class_reason(y)
    if why:
        warnings.append(why)
    if warnings:
        entry["warning"] = "; ".join(warnings)
    return entry
