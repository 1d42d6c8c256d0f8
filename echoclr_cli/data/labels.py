"""Label tables: read a label CSV, map its columns to binary labels, view and external filters,
and the key that joins its rows to the stored videos.

Every value is read as text (``None``, ``NA``, ``null`` stay text; only an empty cell is
missing). Every function returns values 0/1/NaN plus a ``bad`` mask of non-empty values that map
to neither class (never a silent drop: the caller reports each one, and each empty cell).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from echoclr_cli.data.manifest import normalise_split
from echoclr_cli.data.privacy import hash_id
from echoclr_cli.data.readers import parse_year
from echoclr_cli.data.rules import (
    AS_NOT_SEVERE,
    AS_SEVERE,
    MISSING,
    NA_TOKENS,
    build_rules,
    check_columns,
    evaluate,
    grade_text,
    is_na_token,
)
from echoclr_cli.errors import UserError

_EXPR = re.compile(r"^\s*(?P<col>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<val>.*?)\s*$")


def _empty(raw: pd.Series) -> pd.Series:
    return (raw.isna() | raw.isin(MISSING)).fillna(False).astype(bool)


def read_binary(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """A 0/1 column -> (values 0/1/NaN, bad). Empty -> unknown; every other value that is not
    0 or 1 (``2``, ``yes``, ``None``, ``NA``) is bad (reported), never a silent NaN."""
    raw = series.astype("string").str.strip()
    empty = _empty(raw)
    num = pd.to_numeric(raw.where(~empty), errors="coerce").astype(float)
    ok = num.isin([0.0, 1.0])
    return num.where(ok), (~empty & ~ok).astype(bool)


def map_label(df: pd.DataFrame, expr: str, source: str) -> tuple[pd.Series, pd.Series]:
    """Evaluate a ``preprocess.label_map`` expression on a label table.

    ``'col'`` (values 0/1), ``'col==value'`` / ``'col!=value'`` (text, compared as
    :func:`~echoclr_cli.data.rules.grade_text`, or a number; other non-empty values -> the
    opposite class, ``None`` included; a not-available marker ``NA``/``N/A``/``null`` is bad),
    ``'col>=x'`` / ``<=, >, <`` (numeric). Empty -> unknown. Returns (values 0/1/NaN, bad) where
    bad marks non-empty values that map to neither class.
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
    missing = _empty(raw)
    if op is None:
        return read_binary(df[col])
    if op in ("==", "!="):
        try:
            target = float(val)
            num = pd.to_numeric(raw, errors="coerce")
            hit = num == target
            bad = ~missing & num.isna()
        except ValueError:
            hit = raw.map(grade_text, na_action="ignore") == grade_text(val.strip("'\""))
            bad = pd.Series(is_na_token(raw), index=df.index)
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
    """Label columns (0/1/NaN) for each row of ``df`` plus one issue per value that gives no
    label: ``bad_value`` / ``na_value`` (non-empty, mapped to neither class) and ``empty_value``
    (an empty cell: unknown, counted).

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
        how = f"'{expr}'" if expr else f"'{col}'"
        if col in df.columns:  # an empty text cell (a cell absent after a join is not counted)
            cell = df[col].astype("string").str.strip()
            for i in df.index[cell.eq("").fillna(False) & values.isna()]:
                issues.append(label_issue("empty_value", source, int(lines.loc[i]), name, "",
                                          detail=f"{name} from {how}: empty (unknown)"))  # fmt: skip
        for i in df.index[bad]:
            raw = df.at[i, col] if col in df.columns else ""
            kind = "na_value" if str(raw).strip().lower() in NA_TOKENS else "bad_value"
            issues.append(label_issue(kind, source, int(lines.loc[i]), name, raw,
                                      detail=f"{name} from {how}: maps to neither class"))  # fmt: skip
    return out, issues


def _expr_column(expr: str) -> str:
    m = _EXPR.match(expr)
    return m["col"] if m else expr.strip()


def auto_binary(
    df: pd.DataFrame, skip: set[str], source: str = "labels"
) -> tuple[dict[str, tuple[pd.Series, pd.Series]], list[dict]]:
    """Label columns when no label_map is given: every column (not in ``skip``) with at least one
    0/1 value; its other non-empty values are ``bad`` (reported, never a silent drop). Columns
    with no 0/1 value are not labels: one ``dropped_column`` note each, saying why (and, for a
    column of aortic stenosis grades, the preset that reads it)."""
    out, dropped = {}, []
    for c in df.columns:
        if c in skip:
            continue
        values, bad = read_binary(df[c])
        if values.notna().any():
            out[c] = (values, bad)
        else:
            why = "empty" if not bad.any() else f"no 0/1 value ({int(bad.sum())} other values)"
            grades = df[c].astype("string").map(grade_text, na_action="ignore")
            hint = (
                f"--label-preset 'as:grade={c}' (severe vs not) or preprocess.label_map"
                if grades.isin(AS_SEVERE + AS_NOT_SEVERE).any()
                else "preprocess.label_map (e.g. 'column==value')"
            )
            dropped.append(label_issue("dropped_column", source, None, c, None,
                                       detail=f"column '{c}' is not a label: {why}; derive one "
                                       f"with {hint}"))  # fmt: skip
    return out, dropped


# --------------------------------------------------------------------------- label issues
# kind -> what it means. All but dropped_column stop preprocess unless --allow-label-issues.
ISSUE_KINDS = {
    "bad_value": "value maps to neither class (kept as unknown)",
    "na_value": "a not-available marker (NA, N/A, null, nan, unknown) maps to neither class "
    "(kept as unknown)",
    "empty_value": "empty cell: the label is unknown",
    "missing_id": "row without a usable id (empty, or a date that cannot be read)",
    "duplicate_id": "id occurs in an earlier row too (the first row is kept)",
    "unmatched_id": "id matches no input file (or only files that could not be read)",
    "no_videos": "id matches input files, but none of them gave a video",
    "unlabelled_study": "stored study that no row of the label file matches (labels unknown)",
    "dropped_column": "column not used as a label",
}
ERROR_KINDS = ("bad_value", "na_value", "missing_id", "duplicate_id", "unmatched_id", "no_videos")
# Records that are summaries, not problems: counts of each label rule, how a table was read,
# which column was matched to which DICOM tag.
SUMMARY_KINDS = ("rule", "table", "key")
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
    if rec.get("line") is None and rec.get("hashed_id") and rec["kind"] != "dropped_column":
        return f"{rec['source']}: study {rec['hashed_id']}"
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
    keys = [r["counts"] for r in issues if r["kind"] == "key"]
    if rules:
        out["rules"] = rules
    if tables:
        out["tables"] = tables
    if keys:
        out["keys"] = keys
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
    if rec["kind"] in ("table", "key"):
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


def as_label(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Aortic stenosis grade text -> severe (1) vs not (0), the ``as`` preset's grade map.

    Case-, space- and separator-insensitive (``Mild to Moderate`` == ``mild-moderate``).
    1: ``severe``, ``critical``, ``very severe``. 0: ``none``, ``no``, ``normal``, ``absent``,
    ``trace``, ``trivial``, ``mild``, ``mild-moderate``, ``moderate``, ``non-severe``. Empty:
    unknown. Anything else is bad (counted, unknown), on purpose ``moderate-severe``: it is not
    severe by the guideline, and calling it either class is the user's decision (a label rule,
    or the preset's ``severe=`` / ``not_severe=``).
    """
    s = values.astype("string").map(grade_text, na_action="ignore")
    empty = _empty(s)
    grade = {**dict.fromkeys(AS_NOT_SEVERE, 0.0), **dict.fromkeys(AS_SEVERE, 1.0)}
    mapped = s.map(lambda v: grade.get(v, np.nan) if isinstance(v, str) else np.nan).astype(float)
    return mapped.where(~empty), (~empty & mapped.isna()).astype(bool)


LVH_POSITIVE = ("hypertrophy", "lvh", "present", "yes", "mild hypertrophy",
                "moderate hypertrophy", "severe hypertrophy", "concentric hypertrophy",
                "eccentric hypertrophy")  # fmt: skip
LVH_NEGATIVE = ("normal", "none", "no", "absent", "no hypertrophy", "no lvh",
                "concentric remodeling", "concentric remodelling")  # fmt: skip


def lvh_label(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """LV hypertrophy category text -> 1/0 (the EchoCLR layout's ``LVH_LVMi``), explicitly:
    1: ``hypertrophy``, ``LVH``, ``present``, ``yes``, mild/moderate/severe/concentric/eccentric
    hypertrophy; 0: ``normal``, ``none``, ``no``, ``absent``, ``no hypertrophy``, ``no LVH``,
    concentric remodeling (normal mass index). Empty: unknown. Anything else, a number (an
    LV mass index, not a category) included, is bad (counted, unknown)."""
    s = values.astype("string").map(grade_text, na_action="ignore")
    empty = _empty(s)
    cat = {**dict.fromkeys(LVH_NEGATIVE, 0.0), **dict.fromkeys(LVH_POSITIVE, 1.0)}
    mapped = s.map(lambda v: cat.get(v, np.nan) if isinstance(v, str) else np.nan).astype(float)
    return mapped.where(~empty), (~empty & mapped.isna()).astype(bool)


# --------------------------------------------------------------------------- label keys
# Which id a label file is keyed by (``kind``: the hash kind of privacy.hash_id), and the DICOM
# tag its column is matched to. study and patient are the manifest's own study_id/patient_id.
KEY_TAGS = {
    "study": "StudyInstanceUID (0020,000D)",
    "accession": "AccessionNumber (0008,0050)",
    "patient": "PatientID (0010,0020)",
    "date_patient": "StudyDate (0008,0020) + PatientID (0010,0020)",
}
LABEL_KEYS = {"study_id": "study", "study_uid": "study", "patient_id": "patient",
              "accession": "accession", "study_date": "date_patient"}  # fmt: skip
# Header spellings, compared without case, spaces, underscores and punctuation (_norm_name).
UID_NAMES = ("studyinstanceuid", "studyuid", "studyinstance")
STUDY_NAMES = ("studyid", "study")
ACCESSION_NAMES = ("accessionnumber", "accession", "acc", "accnum", "accno", "accnumber",
                   "accessionno", "accessionnum", "accessionnr")  # fmt: skip
PATIENT_NAMES = ("patientid", "patient", "mrn", "patientmrn", "medicalrecordnumber", "mrnumber")
DATE_NAMES = ("studydate", "examdate", "examinationdate", "studydatetime")
ID_NAMES = set(UID_NAMES + STUDY_NAMES + ACCESSION_NAMES + PATIENT_NAMES)
# Exact names of a study column (the layouts' alias tables look for one).
STUDY_KEYS = ("study_id", "StudyInstanceUID", "study", "acc_num", "Accession Number",
              "AccessionNumber", "accession")  # fmt: skip
KEY_COLUMN = "__key__"  # the normalised key value of each row (private, never written)


def _norm_name(name) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


@dataclass
class LabelKey:
    """The column(s) a label file is keyed by and the hash kind they are matched as."""

    kind: str  # study | patient | accession | date_patient
    column: str
    date_column: str | None = None
    date_order: str = "dmy"  # day-first unless a value says month-first
    others: list[str] = field(default_factory=list)  # other id columns present, not used

    @property
    def tag(self) -> str:
        return KEY_TAGS[self.kind]

    def describe(self) -> str:
        if self.date_column:
            return f"columns '{self.date_column}' + '{self.column}'"
        return f"column '{self.column}'"


def find_label_key(lab: pd.DataFrame, label_key: str, path: Path) -> LabelKey:
    """The key of a label table. ``label_key``: ``auto`` takes the first present of a study UID
    column, an accession number, a study id, a study date together with a patient column, a
    patient id/MRN; ``study_id`` / ``study_uid`` / ``accession`` / ``patient_id`` /
    ``study_date`` require that key. Header spellings are matched without case, spaces,
    underscores and punctuation (``Accession Number``, ``ACC``, ``acc_num``; ``MRN``,
    ``Patient ID``; ``Study UID``, ``study_id``; ``Study Date``)."""
    norm = {c: _norm_name(c) for c in lab.columns}

    def cols(names) -> list[str]:
        return [c for c in lab.columns if norm[c] in names]

    dates = cols(DATE_NAMES) or (cols(("date",)) if label_key == "study_date" else [])
    found = {"uid": cols(UID_NAMES), "accession": cols(ACCESSION_NAMES),
             "study": cols(STUDY_NAMES), "patient": cols(PATIENT_NAMES)}  # fmt: skip
    order = {
        "auto": ["uid", "accession", "study", "date_patient", "patient"],
        "study_id": ["study", "uid"], "study_uid": ["uid", "study"], "patient_id": ["patient"],
        "accession": ["accession"], "study_date": ["date_patient"],
    }[label_key]  # fmt: skip
    for what in order:
        if what == "date_patient":
            if not (dates and found["patient"]):
                continue
            key = LabelKey("date_patient", found["patient"][0], dates[0])
            key.date_order = date_order(lab[dates[0]], dates[0], path)
        elif found[what]:
            key = LabelKey({"uid": "study"}.get(what, what), found[what][0])
        else:
            continue
        used = {key.column, key.date_column}
        key.others = [c for c in lab.columns if norm[c] in ID_NAMES and c not in used]
        return key
    want = "" if label_key == "auto" else f" for preprocess.label_key={label_key}"
    raise UserError(
        f"{path}: no id column to join labels on{want}; columns: {list(lab.columns)}",
        fix="name the key column like 'Accession Number', 'MRN' / 'PatientID', "
        "'StudyInstanceUID', or 'Study Date' next to a patient column (preprocess.label_key: "
        "auto | accession | patient_id | study_uid | study_id | study_date)",
    )


_DMY = re.compile(r"(\d{1,2})([-/.])(\d{1,2})\2(\d{4})(?:[ T].*)?")
_YMD = re.compile(r"(\d{4})(?:(\d{2})(\d{2})|([-/.])(\d{1,2})\4(\d{1,2})(?:[ T].*)?)")


def date_order(values: pd.Series, column: str, path: Path) -> str:
    """``dmy`` or ``mdy`` for the ``NN/NN/YYYY`` dates of a column: month-first only when a
    value's second number is above 12 (and no first one is); day-first by default."""
    firsts, seconds = [], []
    for v in values.astype("string").fillna(""):
        if m := _DMY.fullmatch(v.strip()):
            firsts.append(int(m[1]))
            seconds.append(int(m[3]))
    day_first, month_first = any(x > 12 for x in firsts), any(x > 12 for x in seconds)
    if day_first and month_first:
        raise UserError(f"{path}: column '{column}' holds dates in both DD/MM/YYYY and "
                        "MM/DD/YYYY order", fix="export the dates as YYYY-MM-DD")  # fmt: skip
    return "mdy" if month_first else "dmy"


def normalise_date(value, order: str = "dmy") -> str | None:
    """A date as ``YYYYMMDD`` (DICOM DA), from YYYYMMDD, YYYY-MM-DD, YYYY/MM/DD, DD/MM/YYYY
    (``order`` mdy: MM/DD/YYYY), DD.MM.YYYY, with or without a time; None when not a date."""
    s = str(value if value is not None else "").strip()
    if m := _YMD.fullmatch(s):
        y, mo, d = m[1], m[2] or m[5], m[3] or m[6]
    elif m := _DMY.fullmatch(s):
        y, (d, mo) = m[4], ((m[1], m[3]) if order == "dmy" else (m[3], m[1]))
    else:
        return None
    try:
        return dt.date(int(y), int(mo), int(d)).strftime("%Y%m%d")
    except ValueError:
        return None


def key_value(kind: str, value, date=None, order: str = "dmy") -> str:
    """The normalised text a key is hashed from ("" when unusable): whitespace stripped;
    accession numbers as upper-case text (``00123`` stays ``00123``, never a float); a study
    date + patient as ``PATIENT|YYYYMMDD``."""
    v = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
    v = v.strip()
    if kind == "accession":
        return v.upper()
    if kind == "date_patient":
        d = normalise_date(date, order)
        return f"{v}|{d}" if v and d else ""
    return v


def video_key(kind: str, study: str | None, patient: str | None, header: dict | None,
              layout_study: str | None = None) -> str | None:  # fmt: skip
    """The key value a stored video is matched on (private), None when it has none: the
    manifest's study / patient id, the header's AccessionNumber (else the layout's own study
    id, e.g. the EchoCLR CSVs' acc_num), or its StudyDate + patient id."""
    header = header or {}
    if kind == "study":
        return study
    if kind == "patient":
        return patient
    if kind == "accession":
        return key_value(kind, header.get("accession") or layout_study) or None
    return key_value(kind, patient, header.get("study_date")) or None


def video_key_shape(kind: str, study: str | None, patient: str | None, header: dict | None,
                    layout_study: str | None = None) -> str:  # fmt: skip
    """The shape (:func:`value_shape`) of what a video is matched on; never the value."""
    header = header or {}
    if kind == "study":
        return value_shape(study)
    if kind == "patient":
        return value_shape(patient)
    if kind == "accession":
        return value_shape(header.get("accession") or layout_study)
    return f"{value_shape(header.get('study_date'), date=True)} + {value_shape(patient)}"


_RUNS = re.compile(r"[^\W\d_]+|\d+|\s+|[\W_]")  # letters (any script) | digits | spaces | one other
_SEPARATORS = set("-/._:#,")


def value_shape(value, date: bool = False, order: str = "dmy") -> str:
    """What a value looks like, never the value: ``10 digits``, ``A + 7 digits``,
    ``dotted UID, 40-64 chars``, ``YYYY-MM-DD``, ``missing`` / ``empty``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "missing"
    s = str(value).strip()
    if not s:
        return "empty"
    if date and (form := _date_shape(s, order)):
        return form
    if re.fullmatch(r"\d+(\.\d+){2,}", s):
        n = len(s)
        band = "<20" if n < 20 else "20-39" if n < 40 else "40-64" if n <= 64 else ">64"
        return f"dotted UID, {band} chars"
    runs = _RUNS.findall(s)
    if len(runs) > 5:
        return f"text, {len(s)} chars"
    parts = []
    for r in runs:
        if r.isdigit():
            parts.append(f"{len(r)} digit{'s' if len(r) > 1 else ''}")
        elif r.isalpha():
            parts.append("A" if len(r) == 1 else f"{len(r)} letters")
        elif r.isspace():
            parts.append("space")
        else:
            parts.append(f"'{r}'" if r in _SEPARATORS else "symbol")
    return " + ".join(parts)


def _date_shape(s: str, order: str) -> str | None:
    time = " + time" if re.search(r"\d[ T]\d{1,2}:", s) else ""
    if re.fullmatch(r"\d{8}", s):
        return "YYYYMMDD"
    if m := _YMD.fullmatch(s):
        return f"YYYY{m[4]}MM{m[4]}DD{time}"
    if m := _DMY.fullmatch(s):
        sep = m[2]
        return (f"DD{sep}MM{sep}YYYY" if order == "dmy" else f"MM{sep}DD{sep}YYYY") + time
    return None


def shape_summary(shapes: Counter) -> str:
    """``10 digits (58), empty (2), 1 other shape`` (the three most common shapes)."""
    top = shapes.most_common(3)
    text = ", ".join(f"{s} ({n})" for s, n in top) or "nothing"
    rest = len(shapes) - len(top)
    return text + (f", {rest} other shape{'s' if rest > 1 else ''}" if rest else "")


def key_shapes(lab: pd.DataFrame, key: LabelKey) -> Counter:
    """Shapes of a label table's key values (the key column; with a date, date + patient)."""
    if key.date_column is None:
        return Counter(value_shape(v) for v in lab[key.column])
    return Counter(
        f"{value_shape(d, date=True, order=key.date_order)} + {value_shape(p)}"
        for d, p in zip(lab[key.date_column], lab[key.column], strict=True)
    )


@dataclass
class LabelRow:
    """A label-file row, matched against the stored videos after decoding (unmatched_id /
    no_videos). ``original`` is private."""

    source: str
    line: int
    key: str  # study | patient | accession | date_patient (the hash kind)
    hashed: str
    original: str


@dataclass
class LabelFile:
    """A ``--labels`` CSV: meta per hashed id (``key``: the hash kind), its label columns, its
    issues and ``key_info`` (the column, the DICOM tag, counts and value shapes; public)."""

    key: str
    label_columns: list[str]
    table: dict[str, dict] = field(default_factory=dict)
    view_excluded: set[str] = field(default_factory=set)
    issues: list[dict] = field(default_factory=list)
    rows: list[LabelRow] = field(default_factory=list)
    key_info: dict = field(default_factory=dict)


META_COLUMNS = {"split", "site", "study_year", "year", "study_date", "StudyDate", "date"}


def read_label_file(
    cfg, path: Path, salt: str, aliases: tuple[str, dict[str, list[str]]] | None = None
) -> LabelFile:
    """Read a label CSV (any layout), wide (one row per id) or long (one row per id and
    measurement, pivoted: :func:`pivot_long`), keyed by an accession number, a study UID or
    study id, a study date + patient, or a patient id/MRN (:func:`find_label_key`; the values
    are normalised, :func:`key_value`, and hashed like the stored videos' keys). Label columns:
    the ``label_rules`` / ``label_presets`` and ``label_map`` outputs, else every other column
    with a 0/1 value (see :func:`auto_binary`). Every value is text; duplicated ids keep their
    first row (reported); values that map to neither class become unknown (reported), and so
    do empty cells (counted).

    ``aliases``: (column, value -> study ids) for tables keyed by another id that the layout
    maps to studies (MIMIC-IV-ECHO's ``measurement_id``); rows whose id maps to no study are
    counted in the table summary."""
    path = Path(path)
    rules = build_rules(list(cfg.label_rules), list(cfg.label_presets))  # malformed: raise now
    lab = read_table(path)
    summary = {"source": path.name, "rows": len(lab), "long": False}
    lab, lines = _apply_aliases(lab, aliases, summary)
    lkey = find_label_key(lab, cfg.label_key, path)
    key, key_col = lkey.kind, KEY_COLUMN
    key_info = _key_info(lab, lkey, path.name)
    dates = lab[lkey.date_column] if lkey.date_column else pd.Series(None, index=lab.index)
    lab[key_col] = [key_value(key, v, d, lkey.date_order)
                    for v, d in zip(lab[lkey.column], dates, strict=True)]  # fmt: skip
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
    skip = {key_col} | META_COLUMNS | {c for c in lab.columns if _norm_name(c) in ID_NAMES}
    skip |= {c for c in (cfg.view_column, cfg.external_column, lkey.date_column) if c}
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
    out = LabelFile(key, list(lbl.columns), key_info=key_info)
    first: dict[str, int] = {}
    for i in range(len(lab)):
        original = lab[key_col].iloc[i]
        hid = hash_id(salt, key, original)
        line = int(lines.iloc[i])
        if not original:
            out.issues.append(label_issue("missing_id", path.name, line, lkey.column, None, None,
                                          f"no usable {lkey.describe()} value"))  # fmt: skip
            continue
        if hid in out.table:
            out.issues.append(label_issue("duplicate_id", path.name, line, lkey.column, None,
                                          original, f"same id as line {first[hid]}", hid))  # fmt: skip
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
    summary_rec = [key_record(key_info)]
    if summary["long"] or summary.get("not_in_study_list"):
        summary_rec.append(table_summary(summary))
    out.issues = summary_rec + issues + out.issues + dropped
    return out


def _key_info(lab: pd.DataFrame, key: LabelKey, source: str) -> dict:
    """Public facts of a label file's key: columns, tag, counts, value shapes (no value)."""
    cols = [key.column] + ([key.date_column] if key.date_column else [])
    return {"source": source, "kind": key.kind, "column": key.column,
            "date_column": key.date_column, "describe": key.describe(), "tag": key.tag,
            "rows": len(lab), "distinct": int(lab[cols].drop_duplicates().shape[0]),
            "shapes": dict(key_shapes(lab, key).most_common()), "other_id_columns": key.others,
            "date_order": key.date_order if key.date_column else None}  # fmt: skip


def key_record(info: dict) -> dict:
    """The ``key`` summary record: which column was matched to which DICOM tag."""
    other = (
        f"; also present, not used: {info['other_id_columns']} (preprocess.label_key chooses)"
        if info["other_id_columns"]
        else ""
    )
    order = " (dates read day-first)" if info["date_order"] == "dmy" else ""
    order = " (dates read month-first)" if info["date_order"] == "mdy" else order
    rec = label_issue("key", info["source"], None, info["column"], None,
                      detail=f"rows keyed by {info['describe']}{order}, matched to the DICOM "
                      f"tag {info['tag']}{other}")  # fmt: skip
    rec["counts"] = dict(info)
    return rec


def match_labels(
    info: dict, rows: list[LabelRow], videos: pd.DataFrame, elsewhere: set[str]
) -> tuple[list[dict], UserError | None]:
    """Match a label file's rows with the stored videos (``videos``: study_id, ``_match`` = the
    hashed key, ``_match_shape``). Returns one ``unlabelled_study`` issue per stored study no
    row matches, and, when no row matches any stored video (nor any input in ``elsewhere``:
    files that gave no video, view-filtered ids), the error that names the column, the tag, the
    count on each side and the shape of each side's values - never a value."""
    mine = [r for r in rows if r.source == info["source"]]
    if not mine or videos.empty:
        return [], None
    source = info["source"]
    labelled = {r.hashed for r in mine}
    hit = videos["_match"].isin(labelled)
    per_study = hit.groupby(videos["study_id"]).any()
    issues = [label_issue("unlabelled_study", source, None, None, None, None,
                          f"no row matches this study's {info['tag']}", hashed_id=str(sid))
              for sid, ok in per_study.items() if not ok]  # fmt: skip
    stored = set(videos["_match"].dropna())
    if any(r.hashed in stored or r.hashed in elsewhere for r in mine):
        return issues, None
    studies = videos.drop_duplicates("study_id")
    dicom = Counter(studies["_match_shape"].fillna("missing"))
    label = Counter(info["shapes"])
    msg = (
        f"{source}: none of its {len(mine)} rows matches a stored video: {info['describe']} "
        f"({info['rows']} rows, {info['distinct']} distinct; values look like "
        f"{shape_summary(label)}) was compared with the DICOM tag {info['tag']} of the stored "
        f"videos ({len(studies)} studies, {len(stored)} distinct values; they look like "
        f"{shape_summary(dicom)})"
    )
    fix = (
        "key the file by a column that holds the same ids as that tag (unmatched rows with "
        "their values: private/label_issues.csv), or choose the key with --set "
        "preprocess.label_key=accession|patient_id|study_uid|study_date"
    )
    return issues, UserError(msg, fix=fix)


# --------------------------------------------------------------------------- rules, long tables
def add_rule_labels(
    lbl: pd.DataFrame, table: pd.DataFrame, rules: list, source: str, lines: pd.Series
) -> tuple[pd.DataFrame, list[dict]]:
    """Label columns from :mod:`rules` next to ``lbl`` (same index as ``table``): one ``rule``
    summary record per rule (counts, clauses fired), one ``bad_value`` / ``na_value`` issue
    per row whose named measurement gives no answer (not a number, a not-available marker, a
    value outside the preset's accepted ones; the label is then unknown unless decided
    without it) and one ``empty_value`` issue per other row left unknown by an empty cell."""
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
        cols = [c for c in r.columns if c in table.columns]
        empty = pd.DataFrame({c: table[c].astype("string").str.strip().eq("") for c in cols})
        for i in table.index[res.values.isna() & ~res.bad & empty.any(axis=1).fillna(False)]:
            col = next(c for c in cols if bool(empty.at[i, c]))
            issues.append(label_issue("empty_value", source, int(lines.loc[i]), col, "",
                                      detail=f"{r.label}: '{col}' empty (unknown)"))  # fmt: skip
        for i, col in res.bad_columns.items():
            raw = table.at[i, col]
            kind = "na_value" if str(raw).strip().lower() in NA_TOKENS else "bad_value"
            issues.append(label_issue(kind, source, int(lines.loc[i]), col, raw,
                                      detail=f"{r.label}: '{col}' gives no answer (unknown)"))  # fmt: skip
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
