"""Label tables: read a label CSV, map its columns to binary labels, view and external filters.

Every function returns values 0/1/NaN plus a ``bad`` mask of values that cannot be read (never a
silent drop: the caller reports each bad value).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from echoclr_cli.data.manifest import parse_labels
from echoclr_cli.data.readers import parse_year
from echoclr_cli.errors import UserError

_EXPR = re.compile(r"^\s*(?P<col>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<val>.*?)\s*$")
MISSING = {"", "nan", "none", "na", "n/a", "null"}


def map_label(df: pd.DataFrame, expr: str, source: str) -> tuple[pd.Series, pd.Series]:
    """Evaluate a ``preprocess.label_map`` expression on a label table.

    ``'col'`` (values 0/1), ``'col==value'`` / ``'col!=value'`` (text or number; other non-empty
    values -> the opposite class), ``'col>=x'`` / ``<=, >, <`` (numeric). Empty -> unknown.
    Returns (values 0/1/NaN, bad) where bad marks values that cannot be mapped.
    """
    m = _EXPR.match(expr)
    col, op, val = (m["col"], m["op"], m["val"]) if m else (expr.strip(), None, None)
    if col not in df.columns:
        raise UserError(
            f"{source}: label_map expression '{expr}' names column '{col}', which is not in "
            f"{list(df.columns)}",
            fix="fix preprocess.label_map (output: 'column', 'column==value' or 'column>=x')",
        )
    raw = df[col].astype("string").str.strip()
    missing = raw.isna() | raw.str.lower().isin(MISSING)
    if op is None:
        return parse_labels(df[col])
    if op in ("==", "!="):
        try:
            target = float(val)
            num = pd.to_numeric(raw, errors="coerce")
            hit = num == target
            bad = ~missing & num.isna()
        except ValueError:
            hit = raw.str.lower() == val.strip("'\"").lower()
            bad = pd.Series(False, index=df.index)
        hit = hit if op == "==" else ~hit
    else:
        try:
            target = float(val)
        except ValueError:
            raise UserError(
                f"{source}: label_map expression '{expr}' compares with a non-number",
                fix="write e.g. 'EF<50'",
            ) from None
        num = pd.to_numeric(raw, errors="coerce")
        hit = {">=": num >= target, "<=": num <= target, ">": num > target, "<": num < target}[op]
        bad = ~missing & num.isna()
    values = hit.astype(float).where(~missing & ~bad)
    return values.astype(float), (bad & ~missing).fillna(False).astype(bool)


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV as strings (ids keep leading zeros; empty cells stay empty strings)."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"{path}: not a readable CSV ({e})", fix="check the file") from None
    df.columns = [str(c).strip() for c in df.columns]
    for c in df.columns:
        df[c] = df[c].str.strip()
    return df


def apply_label_map(
    df: pd.DataFrame, label_map: dict[str, str], default: dict[str, pd.Series], source: str
) -> tuple[pd.DataFrame, list[dict]]:
    """Label columns (0/1/NaN) for each row of ``df`` plus bad_label records (row index, detail)."""
    out, issues = pd.DataFrame(index=df.index), []
    if label_map:
        for name, expr in label_map.items():
            values, bad = map_label(df, expr, source)
            out[name] = values
            for i in df.index[bad]:
                issues.append({"row": i, "detail": f"{name} from '{expr}': value not mappable"})
    else:
        for name, (values, bad) in default.items():
            out[name] = values
            for i in df.index[bad]:
                issues.append({"row": i, "detail": f"{name}: value not 0/1"})
    return out, issues


def auto_binary(df: pd.DataFrame, skip: set[str]) -> dict[str, tuple[pd.Series, pd.Series]]:
    """Columns whose non-empty values are all 0/1 (used when no label_map is given)."""
    out = {}
    for c in df.columns:
        if c in skip:
            continue
        values, bad = parse_labels(df[c])
        if not bad.any() and values.notna().any():
            out[c] = (values, bad)
    return out


def view_keep(df: pd.DataFrame, cfg, source: str) -> pd.Series:
    col = cfg.view_column
    if col is None:
        return pd.Series(True, index=df.index)
    if col not in df.columns:
        raise UserError(
            f"{source}: view filter column '{col}' not found; columns: {list(df.columns)}",
            fix="set preprocess.view_column to one of them (or unset it)",
        )
    if cfg.view_value is not None:
        return df[col].str.lower() == str(cfg.view_value).lower()
    return pd.to_numeric(df[col], errors="coerce") >= cfg.view_min


def _truthy(series: pd.Series) -> pd.Series:
    s = series.astype("string").str.strip().str.lower()
    return s.isin({"1", "1.0", "true", "yes", "y", "external", "ext", "ext_test"}).fillna(False)


def external_flags(df: pd.DataFrame, cfg, year: pd.Series | None) -> pd.Series:
    ext = pd.Series(False, index=df.index)
    if cfg.external_column is not None:
        if cfg.external_column not in df.columns:
            raise UserError(
                f"external column '{cfg.external_column}' not in the label file; columns: "
                f"{list(df.columns)}",
                fix="set preprocess.external_column to an existing column",
            )
        ext |= _truthy(df[cfg.external_column])
    if cfg.external_after is not None and year is not None:
        ext |= (year > cfg.external_after).fillna(False)
    return ext.astype(bool)


def years_column(df: pd.DataFrame) -> pd.Series | None:
    for c in ("study_year", "year", "study_date", "StudyDate", "date"):
        if c in df.columns:
            return df[c].map(parse_year).astype("Int64")
    return None


AS_VALUES = {"severe": 1.0, "non-severe": 0.0, "nonsevere": 0.0, "non severe": 0.0}


def as_label(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    s = values.astype("string").str.strip().str.lower()
    missing = s.isna() | s.isin(MISSING)
    mapped = s.map(lambda v: AS_VALUES.get(v, np.nan) if isinstance(v, str) else np.nan).astype(
        float
    )
    bad = ~missing & mapped.isna()
    return mapped.where(~missing), bad.astype(bool)


def lvh_label(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    s = values.astype("string").str.strip().str.lower()
    missing = s.isna() | s.isin(MISSING)
    numeric = pd.to_numeric(s, errors="coerce").notna()
    out = (s == "hypertrophy").astype(float).where(~missing & ~numeric)
    return out, (~missing & numeric).astype(bool)


STUDY_KEYS = (
    "study_id",
    "StudyInstanceUID",
    "study",
    "acc_num",
    "Accession Number",
    "AccessionNumber",
    "accession",
)
PATIENT_KEYS = ("patient_id", "PatientID", "patient", "mrn", "MRN")


def label_key_column(lab: pd.DataFrame, label_key: str, path: Path) -> tuple[str, str]:
    """(column, 'study'|'patient') the label file is keyed by."""
    wanted = {"study_id": "study", "patient_id": "patient"}.get(label_key)
    for key, names in (("study", STUDY_KEYS), ("patient", PATIENT_KEYS)):
        if wanted not in (None, key):
            continue
        for n in names:
            if n in lab.columns:
                return n, key
    raise UserError(
        f"{path}: no id column to join labels on (study: {list(STUDY_KEYS)}; patient: "
        f"{list(PATIENT_KEYS)}); columns: {list(lab.columns)}",
        fix="add a study_id or patient_id column (set preprocess.label_key to choose)",
    )
