"""A ``--labels`` file (any layout): read it wide or long, key its rows, map its label columns,
and match its rows with the stored videos once decoded."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from echoclr_cli.data.bounds import DEFAULT_MAX_LABEL_BYTES, read_bounded
from echoclr_cli.data.label_issues import SUMMARY_KINDS, label_issue
from echoclr_cli.data.label_keys import (
    ID_NAMES,
    KEY_COLUMN,
    STUDY_KEYS,
    LabelKey,
    _norm_name,
    find_label_key,
    key_shapes,
    key_value,
    shape_summary,
)
from echoclr_cli.data.labels import (
    apply_label_map,
    auto_binary,
    expr_column,
    external_flags,
    read_table,
    view_keep,
    years_column,
)
from echoclr_cli.data.manifest import normalise_split
from echoclr_cli.data.presets import build_rules
from echoclr_cli.data.privacy import hash_id
from echoclr_cli.data.rules import MISSING, NA_TOKENS, check_columns, evaluate
from echoclr_cli.errors import UserError


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
    limit = getattr(cfg, "max_label_bytes", DEFAULT_MAX_LABEL_BYTES)
    lab = read_table(path, read_bounded(path, limit))  # decompressed within the limit
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
            expr_column(e) for e in cfg.label_map.values()
        }
        lab, lines = pivot_long(lab, key_col, *longc, keep_meta, needed, path.name, summary,
                                lines)  # fmt: skip
        check_columns(rules, lab.columns, path.name)
    skip = {key_col} | META_COLUMNS | {c for c in lab.columns if _norm_name(c) in ID_NAMES}
    skip |= {c for c in (cfg.view_column, cfg.external_column, lkey.date_column) if c}
    if aliases:
        skip.add(aliases[0])
    used = {c for r in rules for c in r.columns} | {expr_column(e) for e in cfg.label_map.values()}
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
