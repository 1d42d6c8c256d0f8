"""Label issues: one record per problem or summary of a label table, the public report and
summary lines (counts and where, never a value or an original id) and the private rows."""

from __future__ import annotations

import pandas as pd

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
# which column was matched to which DICOM tag, which label column is stored under another name.
SUMMARY_KINDS = ("rule", "table", "key", "renamed")
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
    renamed = [r["counts"] for r in issues if r["kind"] == "renamed"]
    if renamed:
        out["renamed_columns"] = renamed
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
    if rec["kind"] in ("table", "key", "renamed"):
        return f"labels: {rec['source']}: {rec['detail']}"
    fired = "; ".join(f"{x['clause']}: {x['fired']}" for x in c["clauses"])
    return (
        f"labels: rule {c['label']} ({rec['source']}, {c['rows']} ids): {c['positive']} "
        f"positive, {c['negative']} negative, {c['unknown']} unknown; fired: {fired}"
    )
