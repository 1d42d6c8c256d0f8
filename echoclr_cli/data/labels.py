"""Label tables: read a label CSV, map its columns to binary labels, view and external filters.

Every function returns values 0/1/NaN plus a ``bad`` mask of values that cannot be read (never a
silent drop: the caller reports each bad value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from echoclr_cli.data.manifest import normalise_split, parse_labels
from echoclr_cli.data.privacy import hash_id
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
    df: pd.DataFrame,
    label_map: dict[str, str],
    default: dict[str, tuple[pd.Series, pd.Series]],
    source: str,
    lines: pd.Series | None = None,
    source_col: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, list[dict]]:
    """Label columns (0/1/NaN) for each row of ``df`` plus ``bad_value`` issues.

    ``source``: the file name shown in reports; ``lines``: row index -> line in that file
    (default: index + 2, the header being line 1); ``source_col``: output label -> the column
    it was read from (for the private detail)."""
    out, issues = pd.DataFrame(index=df.index), []
    lines = lines if lines is not None else pd.Series(df.index + 2, index=df.index)
    items = (
        {name: (map_label(df, expr, source), expr) for name, expr in label_map.items()}
        if label_map
        else {name: (vb, None) for name, vb in default.items()}
    )
    for name, ((values, bad), expr) in items.items():
        out[name] = values
        col = _expr_column(expr) if expr else (source_col or {}).get(name, name)
        for i in df.index[bad]:
            raw = df.at[i, col] if col in df.columns else ""
            how = f"from '{expr}'" if expr else "not 0/1"
            issues.append(label_issue("bad_value", source, int(lines.loc[i]), name, raw,
                                      detail=f"{name} {how}: value cannot be read as 0/1"))  # fmt: skip
    return out, issues


def _expr_column(expr: str) -> str:
    m = _EXPR.match(expr)
    return m["col"] if m else expr.strip()


def auto_binary(
    df: pd.DataFrame, skip: set[str], source: str = "labels"
) -> tuple[dict[str, tuple[pd.Series, pd.Series]], list[dict]]:
    """Label columns when no label_map is given: every column (not in ``skip``) with at least one
    0/1 value; its other non-empty values are ``bad`` (reported, never a silent drop). Columns
    with no 0/1 value are not labels: one ``dropped_column`` note each, saying why."""
    out, dropped = {}, []
    for c in df.columns:
        if c in skip:
            continue
        values, bad = parse_labels(df[c])
        if values.notna().any():
            out[c] = (values, bad)
        else:
            why = "empty" if not bad.any() else f"no 0/1 value ({int(bad.sum())} other values)"
            dropped.append(label_issue("dropped_column", source, None, c, None,
                                       detail=f"column '{c}' is not a label: {why}; derive one "
                                       "with preprocess.label_map (e.g. 'column==value')"))  # fmt: skip
    return out, dropped


# --------------------------------------------------------------------------- label issues
# kind -> what it means. All but dropped_column stop preprocess unless --allow-label-issues.
ISSUE_KINDS = {
    "bad_value": "value cannot be read as 0/1 (kept as unknown)",
    "duplicate_id": "id occurs in an earlier row too (the first row is kept)",
    "unmatched_id": "id matches no input file (or only files that could not be read)",
    "no_videos": "id matches input files, but none of them gave a video",
    "dropped_column": "column not used as a label",
}
ERROR_KINDS = ("bad_value", "duplicate_id", "unmatched_id", "no_videos")
MAX_EXAMPLES = 5


def label_issue(
    kind: str,
    source: str,
    line: int | None,
    column: str | None,
    value,
    original_id: str | None = None,
    detail: str = "",
    hashed_id: str | None = None,
) -> dict:
    """One label problem. ``source``/``line``/``column`` are public; ``value`` and
    ``original_id`` go only to the private list (a value or id may identify a patient)."""
    return {"kind": kind, "source": source, "line": line, "column": column,
            "value": None if value is None else str(value), "original_id": original_id,
            "hashed_id": hashed_id, "detail": detail}  # fmt: skip


def _where(rec: dict) -> str:
    line = f" line {rec['line']}" if rec.get("line") is not None else ""
    col = (
        f" column '{rec['column']}'"
        if rec.get("column") and rec["kind"] != "dropped_column"
        else ""
    )
    return f"{rec['source']}{line}{col}"


def issues_report(issues: list[dict], allowed: bool) -> dict:
    """Public labels report: count per kind, up to 5 examples each (file, line, column, hashed
    id - never a value or an original id), the dropped columns with their reason."""
    kinds = {}
    for kind, meaning in ISSUE_KINDS.items():
        recs = [r for r in issues if r["kind"] == kind]
        if not recs:
            continue
        kinds[kind] = {
            "count": len(recs), "meaning": meaning, "error": kind in ERROR_KINDS and not allowed,
            "examples": [{"where": _where(r), "id": r.get("hashed_id")} for r in recs[:MAX_EXAMPLES]],
        }  # fmt: skip
    dropped = [{"column": r["column"], "why": r["detail"]} for r in issues
               if r["kind"] == "dropped_column"]  # fmt: skip
    n_err = sum(v["count"] for k, v in kinds.items() if k in ERROR_KINDS)
    return {"issues": kinds, "dropped_columns": dropped, "n_errors": n_err,
            "allowed": bool(allowed)}  # fmt: skip


def issue_lines(issues: list[dict]) -> list[str]:
    """Summary lines (public: counts and where, no values or ids)."""
    out = []
    for kind, meaning in ISSUE_KINDS.items():
        recs = [r for r in issues if r["kind"] == kind]
        if not recs:
            continue
        if kind == "dropped_column":
            out += [f"labels: {r['source']}: {r['detail']}" for r in recs]
            continue
        ex = ", ".join(_where(r) for r in recs[:MAX_EXAMPLES])
        more = f", ... and {len(recs) - MAX_EXAMPLES} more" if len(recs) > MAX_EXAMPLES else ""
        out.append(f"labels: {len(recs)} {kind} ({meaning}): {ex}{more}")
    return out


def private_issue_rows(issues: list[dict]) -> pd.DataFrame:
    cols = ["kind", "source", "line", "column", "value", "original_id", "hashed_id", "detail"]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in issues], columns=cols)


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


@dataclass
class LabelRow:
    """A label-file row, matched against the stored videos after decoding (unmatched_id /
    no_videos). ``original`` is private."""

    source: str
    line: int
    key: str  # study | patient
    hashed: str
    original: str


@dataclass
class LabelFile:
    """A ``--labels`` CSV: meta per hashed id (``key``), its label columns and its issues."""

    key: str
    label_columns: list[str]
    table: dict[str, dict] = field(default_factory=dict)
    view_excluded: set[str] = field(default_factory=set)
    issues: list[dict] = field(default_factory=list)
    rows: list[LabelRow] = field(default_factory=list)


META_COLUMNS = {"split", "site", "study_year", "year", "study_date", "StudyDate", "date"}


def read_label_file(cfg, path: Path, salt: str) -> LabelFile:
    """Read a label CSV keyed by study or patient id (any layout). Label columns: the
    ``label_map`` outputs, else every other column with a 0/1 value (see :func:`auto_binary`).
    Duplicated ids keep their first row (reported); values that are not 0/1 become unknown
    (reported)."""
    path = Path(path)
    lab = read_table(path)
    key_col, key = label_key_column(lab, cfg.label_key, path)
    skip = {key_col} | META_COLUMNS | set(STUDY_KEYS) | set(PATIENT_KEYS)
    skip |= {c for c in (cfg.view_column, cfg.external_column) if c}
    default, dropped = auto_binary(lab, skip, path.name)
    lbl, issues = apply_label_map(lab, cfg.label_map, default, path.name)
    if cfg.label_map:
        used = {_expr_column(e) for e in cfg.label_map.values()}
        dropped = [d for d in dropped if d["column"] not in used]
        dropped += [
            label_issue("dropped_column", path.name, None, c, None,
                        detail=f"column '{c}' is not named by preprocess.label_map")
            for c in lab.columns if c not in skip and c not in used
        ]  # fmt: skip
    year = years_column(lab)
    ext = external_flags(lab, cfg, year)
    if "site" in lab.columns:
        ext |= lab["site"].str.lower().eq("external")
    splits = normalise_split(lab["split"], str(path)) if "split" in lab.columns else None
    keep = view_keep(lab, cfg, str(path))
    out = LabelFile(key, list(lbl.columns))
    first: dict[str, int] = {}
    for i in range(len(lab)):
        original = lab[key_col].iloc[i]
        hid = hash_id(salt, key, original)
        line = i + 2
        if hid in out.table:
            out.issues.append(label_issue("duplicate_id", path.name, line, key_col, None, original,
                                          f"same id as line {first[hid]}", hid))  # fmt: skip
            continue
        first[hid] = line
        meta = {c: float(lbl[c].iloc[i]) for c in lbl.columns}
        meta["external"] = bool(ext.iloc[i])
        if year is not None and not pd.isna(year.iloc[i]):
            meta["study_year"] = int(year.iloc[i])
        if splits is not None:
            meta["split"] = splits[i]
        if not bool(keep.iloc[i]):
            out.view_excluded.add(hid)
        out.table[hid] = meta
        out.rows.append(LabelRow(path.name, line, key, hid, original))
    for rec in issues:
        rec["original_id"] = lab[key_col].iloc[rec["line"] - 2]
        rec["hashed_id"] = hash_id(salt, key, rec["original_id"])
    out.issues = issues + out.issues + dropped
    return out
