"""Label values: a label column or ``preprocess.label_map`` expression -> 0/1/NaN with a ``bad``
mask; aortic stenosis grades and LV hypertrophy categories; the view, external and year columns.

Every value is read as text (``None``, ``NA``, ``null`` stay text; only an empty cell is
missing). Every function returns values 0/1/NaN plus a ``bad`` mask of non-empty values that map
to neither class (never a silent drop: the caller reports each one, and each empty cell). A
``--labels`` file is read by ``echoclr_cli.data.label_file``.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from echoclr_cli.config.names import NAME_RULE, check_name, task_name
from echoclr_cli.data.label_issues import label_issue
from echoclr_cli.data.readers import parse_year
from echoclr_cli.data.rules import (
    AS_NOT_SEVERE,
    AS_SEVERE,
    MISSING,
    NA_TOKENS,
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


def read_table(path: Path, data: bytes | None = None) -> pd.DataFrame:
    """Read a CSV as strings (ids keep leading zeros; empty cells stay empty strings).
    ``data``: the file's bytes, already read (and decompressed) within a size limit."""
    try:
        src = io.BytesIO(data) if data is not None else path
        df = pd.read_csv(src, dtype=str, keep_default_na=False)
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
    stored, renamed = label_names(list(items), source, from_map=bool(label_map))
    issues += renamed
    for name, ((values, bad), expr) in items.items():
        out[stored[name]] = values
        col = expr_column(expr) if expr else (source_col or {}).get(name, name)
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


def label_names(names: list[str], source: str, from_map: bool) -> tuple[dict[str, str], list]:
    """Each label's stored name (a task name, :mod:`echoclr_cli.config.names`) and one
    ``renamed`` record per label column whose text is not one. ``from_map``: the names are
    label_map keys, refused when invalid; a column's free text becomes a valid name, and two
    columns that would share one are refused naming both."""
    stored, renamed, seen = {}, [], {}
    for name in names:
        if from_map:
            stored[name] = check_name(name, f"{source}: label_map label")
            continue
        new = task_name(name)
        if new is None:
            raise UserError(f"{source}: label column {name!r} has no letter or digit to name a "
                            f"task after ({NAME_RULE})", fix="rename the column")  # fmt: skip
        if new in seen:
            raise UserError(
                f"{source}: label columns {seen[new]!r} and {name!r} would both be task {new!r} "
                f"(task names match {NAME_RULE})",
                fix="rename one of the columns",
            )
        seen[new], stored[name] = name, new
        if new != name:
            rec = label_issue("renamed", source, None, name, None,
                              detail=f"column '{name}' is label '{new}' (task names match "
                              f"{NAME_RULE})")  # fmt: skip
            rec["counts"] = {"column": name, "label": new}
            renamed.append(rec)
    return stored, renamed


def expr_column(expr: str) -> str:
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
