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
from echoclr_cli.data.rules import build_rules, check_columns, evaluate
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
# Records that are summaries, not problems: counts of each label rule, how a table was read.
SUMMARY_KINDS = ("rule", "table")
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
    out = {"issues": kinds, "dropped_columns": dropped, "n_errors": n_err,
           "allowed": bool(allowed)}  # fmt: skip
    rules = [r["counts"] for r in issues if r["kind"] == "rule"]
    tables = [r["counts"] for r in issues if r["kind"] == "table"]
    if rules:
        out["rules"] = rules
    if tables:
        out["tables"] = tables
    return out


def issue_lines(issues: list[dict]) -> list[str]:
    """Summary lines (public: counts and where, no values or ids)."""
    out = [_summary_line(r) for r in issues if r["kind"] in SUMMARY_KINDS]
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
    rows = [{c: r.get(c) for c in cols} for r in issues if r["kind"] not in SUMMARY_KINDS]
    return pd.DataFrame(rows, columns=cols)


def _summary_line(rec: dict) -> str:
    c = rec["counts"]
    if rec["kind"] == "table":
        return f"labels: {rec['source']}: {rec['detail']}"
    fired = "; ".join(f"{x['clause']}: {x['fired']}" for x in c["clauses"])
    return (
        f"labels: rule {c['label']} ({rec['source']}, {c['rows']} ids): {c['positive']} "
        f"positive, {c['negative']} negative, {c['unknown']} unknown; fired: {fired}"
    )


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


def read_label_file(
    cfg, path: Path, salt: str, aliases: tuple[str, dict[str, list[str]]] | None = None
) -> LabelFile:
    """Read a label CSV keyed by study or patient id (any layout), wide (one row per id) or
    long (one row per id and measurement, pivoted: :func:`pivot_long`). Label columns: the
    ``label_rules`` / ``label_presets`` and ``label_map`` outputs, else every other column
    with a 0/1 value (see :func:`auto_binary`). Duplicated ids keep their first row
    (reported); values that are not 0/1 become unknown (reported).

    ``aliases``: (column, value -> study ids) for tables keyed by another id that the layout
    maps to studies (MIMIC-IV-ECHO's ``measurement_id``); rows whose id maps to no study are
    counted in the table summary."""
    path = Path(path)
    rules = build_rules(list(cfg.label_rules), list(cfg.label_presets))  # malformed: raise now
    lab = read_table(path)
    summary = {"source": path.name, "rows": len(lab), "long": False}
    lab, lines = _apply_aliases(lab, aliases, summary)
    key_col, key = label_key_column(lab, cfg.label_key, path)
    longc = long_columns(lab, cfg.labels_long, path)
    if longc is None and rules:
        check_columns(rules, lab.columns, path.name)
    keep_meta = META_COLUMNS | {c for c in (cfg.view_column, cfg.external_column) if c}
    if longc is not None:
        if not rules and not cfg.label_map:
            raise UserError(
                f"{path}: a long table (one row per measurement: '{longc[0]}', '{longc[1]}') "
                "needs label rules",
                fix="add --label-rule 'NAME=measurement >= x' or --label-preset, or "
                "--labels-long no to read it as one row per id",
            )
        needed = {c for r in rules for c in r.columns} | {
            _expr_column(e) for e in cfg.label_map.values()
        }
        lab, lines = pivot_long(lab, key_col, *longc, keep_meta, needed, path.name, summary,
                                lines)  # fmt: skip
        check_columns(rules, lab.columns, path.name)
    skip = {key_col} | META_COLUMNS | set(STUDY_KEYS) | set(PATIENT_KEYS)
    skip |= {c for c in (cfg.view_column, cfg.external_column) if c}
    if aliases:
        skip.add(aliases[0])
    used = {c for r in rules for c in r.columns} | {_expr_column(e) for e in cfg.label_map.values()}
    default, dropped = (
        auto_binary(lab, skip, path.name) if not (rules or cfg.label_map) else ({}, [])
    )
    lbl, issues = apply_label_map(lab, cfg.label_map, default, path.name, lines)
    if cfg.label_map or rules:
        lbl, rule_issues = add_rule_labels(lbl, lab, rules, path.name, lines)
        issues += rule_issues
        dropped += [
            label_issue("dropped_column", path.name, None, c, None,
                        detail=f"column '{c}' is not named by a label rule or label_map")
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
        line = int(lines.iloc[i])
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
    row_of_line = {int(v): lab[key_col].iloc[k] for k, v in enumerate(lines)}
    for rec in issues:
        if rec["kind"] in SUMMARY_KINDS:
            continue
        rec["original_id"] = row_of_line.get(rec["line"])
        rec["hashed_id"] = hash_id(salt, key, rec["original_id"])
    summary_rec = []
    if summary["long"] or summary.get("not_in_study_list"):
        summary_rec = [table_summary(summary)]
    out.issues = summary_rec + issues + out.issues + dropped
    return out


# --------------------------------------------------------------------------- rules, long tables
def add_rule_labels(
    lbl: pd.DataFrame, table: pd.DataFrame, rules: list, source: str, lines: pd.Series
) -> tuple[pd.DataFrame, list[dict]]:
    """Label columns from :mod:`rules` next to ``lbl`` (same index as ``table``): one ``rule``
    summary record per rule (counts, clauses fired) and one ``bad_value`` issue per row whose
    named measurement is not a number (the label is then unknown unless decided without it)."""
    issues = []
    check_columns(rules, table.columns, source)
    for r in rules:
        if r.label in lbl.columns:
            raise UserError(f"{source}: label '{r.label}' comes from a rule and from label_map",
                            fix="give each label its own name")  # fmt: skip
        res = evaluate(r, table)
        lbl[r.label] = res.values
        rec = label_issue("rule", source, None, r.label, None, detail=r.text())
        rec["counts"] = res.report
        issues.append(rec)
        for i, col in res.bad_columns.items():
            issues.append(label_issue("bad_value", source, int(lines.loc[i]), col,
                                      table.at[i, col],
                                      detail=f"{r.label}: '{col}' is not a number (unknown)"))  # fmt: skip
    return lbl, issues


LONG_NAMES = ("measurement", "measurement_name", "name", "calc", "parameter", "measure", "item")
LONG_VALUES = ("value", "calcvalue", "result", "measurement_value", "valuenum")


def long_columns(df: pd.DataFrame, setting: str, path: Path) -> tuple[str, str] | None:
    """(name column, value column) of a long table, else None. ``setting``: ``auto`` (a column
    named like a measurement name and one like a value: :data:`LONG_NAMES` / :data:`LONG_VALUES`,
    any case), ``no``, ``yes`` (auto, but required) or ``NAME_COLUMN,VALUE_COLUMN``."""
    setting = (setting or "auto").strip()
    if setting.lower() == "no":
        return None
    if setting.lower() not in ("auto", "yes"):
        parts = [p.strip() for p in setting.split(",")]
        bad = [p for p in parts if p not in df.columns]
        if len(parts) != 2 or bad:
            raise UserError(f"{path}: --labels-long '{setting}' must name 2 columns of the "
                            f"table (missing: {bad}); columns: {list(df.columns)}",
                            fix="write --labels-long NAME_COLUMN,VALUE_COLUMN")  # fmt: skip
        return parts[0], parts[1]
    lower = {c.lower(): c for c in df.columns}
    name = next((lower[n] for n in LONG_NAMES if n in lower), None)
    value = next((lower[n] for n in LONG_VALUES if n in lower), None)
    if name and value:
        return name, value
    if setting.lower() == "yes":
        raise UserError(f"{path}: no measurement name / value columns ({list(LONG_NAMES)} / "
                        f"{list(LONG_VALUES)}); columns: {list(df.columns)}",
                        fix="write --labels-long NAME_COLUMN,VALUE_COLUMN")  # fmt: skip
    return None


def pivot_long(
    df: pd.DataFrame, key_col: str, name_col: str, value_col: str, keep: set[str],
    needed: set[str], source: str, summary: dict, lines: pd.Series,
) -> tuple[pd.DataFrame, pd.Series]:  # fmt: skip
    """One row per id: a column per measurement named in ``needed`` and present in the table
    (other measurements are not read; counted), the ``keep`` columns from the id's first row. A measurement given more
    than once for an id: the mean of its numeric values (counted: ``duplicates``); only text:
    the first text (a rule reports it as not a number). Returns (table, line of each id's first
    row)."""
    ids = df[key_col]
    order = ids.drop_duplicates()
    first_line = lines.groupby(ids, sort=False).first().reindex(order)
    meta_cols = [c for c in df.columns if c in keep and c not in (key_col, name_col, value_col)]
    wide = (
        df.groupby(key_col, sort=False)[meta_cols].first().reindex(order)
        if meta_cols
        else (pd.DataFrame(index=order))
    )
    sub = df[df[name_col].isin(needed)]
    raw = sub[value_col]
    num = pd.to_numeric(raw, errors="coerce")
    present = ~raw.str.lower().isin(MISSING)
    parts = pd.DataFrame({"k": sub[key_col], "m": sub[name_col], "num": num,
                          "present": present, "txt": raw.where(present & num.isna())})  # fmt: skip
    g = parts.groupby(["k", "m"], sort=False).agg(
        mean=("num", "mean"), n=("present", "sum"), txt=("txt", "first")
    )
    text = g["mean"].map(repr).where(g["mean"].notna(), g["txt"]).fillna("")
    clash = [m for m in g.index.get_level_values("m").unique() if m in meta_cols or m == key_col]
    if clash:
        raise UserError(f"{source}: measurement name(s) {clash} are also column names",
                        fix="rename the measurement or the column")  # fmt: skip
    if len(text):  # a needed name found nowhere stays absent: the rule check names it
        piv = text.unstack("m").reindex(order).fillna("")
        for m in piv.columns:
            wide[m] = piv[m].to_numpy()
    wide = wide.reset_index().rename(columns={"index": key_col})
    wide.columns = [key_col] + list(wide.columns[1:])
    wide = wide.fillna("").astype(str)
    summary.update(long=True, name_column=name_col, value_column=value_col, ids=len(order),
                   measurements=sorted(needed), rows_used=int(len(sub)),
                   rows_other_measurements=int(len(df) - len(sub)),
                   duplicates=int((g["n"] > 1).sum()))  # fmt: skip
    return wide, pd.Series(first_line.to_numpy(), index=wide.index)


def _apply_aliases(lab, aliases, summary) -> tuple[pd.DataFrame, pd.Series]:
    lines = pd.Series(lab.index + 2, index=lab.index)
    if not aliases or aliases[0] not in lab.columns or any(k in lab.columns for k in STUDY_KEYS):
        return lab, lines
    col, mapping = aliases
    studies = lab[col].map(mapping)
    hit = studies.notna()
    summary["not_in_study_list"] = int((~hit).sum())
    summary["alias_column"] = col
    lab = lab.assign(study_id=studies, _line=lines)[hit].explode("study_id")
    lab = lab.reset_index(drop=True)
    return lab.drop(columns="_line"), lab["_line"].astype(int)


def table_summary(summary: dict) -> dict:
    """A ``table`` summary record: how a long (or aliased) label table was read."""
    s = summary
    parts = []
    if s.get("not_in_study_list"):
        parts.append(f"{s['not_in_study_list']} row(s) with a {s['alias_column']} of no study "
                     "in the study list (not used)")  # fmt: skip
    if s["long"]:
        parts.append(f"long table ({s['name_column']}, {s['value_column']}) pivoted to "
                     f"{s['ids']} ids; measurements {s['measurements']}; "
                     f"{s['rows_other_measurements']} row(s) of other measurements not read; "
                     f"{s['duplicates']} id/measurement pair(s) given more than once (mean "
                     "of the numeric values)")  # fmt: skip
    rec = label_issue("table", s["source"], None, None, None, detail="; ".join(parts))
    rec["counts"] = dict(s)
    return rec
