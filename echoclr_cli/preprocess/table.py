"""The manifest table from the workers' rows: layout and label-file meta joined, splits
assigned by patient (stratified by the labels), rows ordered by split and the hashed ids (keyed by the secret salt)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from echoclr_cli.data.layouts.base import Inventory
from echoclr_cli.data.manifest import MANIFEST_COLUMNS, OPTIONAL_COLUMNS, SPLITS, assign_splits

STRATA_MAX = 3  # label columns used for stratification (combinations explode beyond)


def assign_video_splits(df: pd.DataFrame, labels: list[str], cfg) -> pd.Series:
    """Split per video: layout/label-file splits kept; external rule -> ext_test (whole patient);
    the rest split by patient, stratified by the labels."""
    split = df["_split"].copy()
    free = split.eq("")
    ext_patients = set(df.loc[free & df["_external"], "patient_id"])
    split[free & df["patient_id"].isin(ext_patients)] = "ext_test"
    free = split.eq("")
    if free.any():
        strata = labels[:STRATA_MAX]
        pats = (
            df.loc[free].groupby("patient_id")[strata].max()
            if strata
            else (
                pd.DataFrame(
                    index=pd.Index(sorted(df.loc[free, "patient_id"].unique()), name="patient_id")
                )
            )
        )
        # Order by the run's key (the hashed id, keyed by the secret salt: issue 23): a list
        # of the cohort's original ids tells nothing about who lands in which split.
        order = df.drop_duplicates("patient_id").set_index("patient_id")["_pkey"]
        pats = pats.loc[sorted(pats.index, key=lambda p: order[p])]
        by_patient = assign_splits(pats, tuple(cfg.split), cfg.split_seed, strata)
        split[free] = df.loc[free, "patient_id"].map(by_patient)
    return split


def split_order(col: pd.Series) -> pd.Series:
    if col.name == "split":
        return col.map({s: i for i, s in enumerate(SPLITS)})
    return col


def join_meta(df: pd.DataFrame, inv: Inventory, pc) -> pd.DataFrame:
    """Attach layout/label-file meta (labels, split, year, external) to the worker rows."""
    if df.empty:
        return df
    metas = []
    for index, key in zip(df["_index"], df["_match"], strict=True):  # the label key
        meta = dict(inv.table.get(key, {})) if inv.table else {}
        meta.update(inv.items[index].meta)  # what the layout says wins (external dir -> ext_test)
        metas.append(meta)
    for col in inv.label_columns:
        df[col] = [m.get(col, np.nan) for m in metas]
    for col in inv.categorical_columns:  # strings (e.g. view), not binary
        df[col] = [m.get(col, "") for m in metas]
    years = [m.get("study_year") for m in metas]
    df["study_year"] = [
        y if y is not None else r for y, r in zip(years, df["study_year"], strict=True)
    ]
    df["study_year"] = pd.to_numeric(df["study_year"], errors="coerce").astype("Int64")
    df["_split"] = [m.get("split") or "" for m in metas]
    ext = pd.Series([bool(m.get("external", False)) for m in metas], index=df.index)
    if pc.external_after is not None:
        ext |= (df["study_year"] > pc.external_after).fillna(False).astype(bool)
    df["_external"] = ext
    return df


def manifest_frame(df: pd.DataFrame, labels: list[str], categorical=()) -> pd.DataFrame:
    optional = [c for c in OPTIONAL_COLUMNS if c not in labels]
    cols = list(MANIFEST_COLUMNS) + optional + labels + list(categorical)
    if df.empty:
        return pd.DataFrame(columns=cols)
    for c in optional:
        if c not in df.columns:
            df[c] = None
    out = df[cols].reset_index(drop=True)
    for col in labels:
        out[col] = pd.to_numeric(out[col], errors="coerce").round().astype("Int64")
    out["study_year"] = out["study_year"].astype("Int64")
    return out
