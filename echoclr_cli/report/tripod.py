"""TRIPOD+AI checklist (Collins et al., BMJ 2024;385:e078378) and the model-card dict.

The checklist has 27 items (52 with sub-items), one row each in ``tripod_ai.csv`` (package
data). Each row carries a short paraphrase of what it asks (read the statement itself for the wording) and what an echoclr report can do
for it: ``report`` (the report gives it, in the named section), ``partly`` (the report gives the
numbers; the author must still describe or justify) or ``author`` (only the author can write it).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from importlib import resources
from typing import Any

CHECKLIST_FILE = "tripod_ai.csv"  # shipped in the package, beside this module
COLUMNS = ("item", "section", "topic", "asks", "status", "where")


def load_checklist() -> tuple[tuple[str, str, str, str, str, str], ...]:
    """The 52 rows of ``tripod_ai.csv``: (item, section, topic, paraphrase, status, where in the
    report / what the author must add)."""
    text = (
        resources.files("echoclr_cli.report").joinpath(CHECKLIST_FILE).read_text(encoding="utf-8")
    )
    rows = list(csv.reader(io.StringIO(text)))
    if tuple(rows[0]) != COLUMNS:
        raise ValueError(f"{CHECKLIST_FILE}: columns {rows[0]}, expected {list(COLUMNS)}")
    return tuple((a, b, c, d, e, f) for a, b, c, d, e, f in rows[1:])


TRIPOD_AI = load_checklist()


def checklist(facts: Mapping[str, bool]) -> list[dict[str, str]]:
    """Checklist rows with statuses adjusted to what this report holds.

    ``facts``: ``recalibrated`` (12f/24 are only covered when a recalibration was fitted),
    ``subgroups`` (12d/23a/23b need subgroup tables), ``external`` (23b side by side).
    """
    rows = []
    for item, section, topic, what, status, where in TRIPOD_AI:
        if item in ("12f", "24") and not facts.get("recalibrated"):
            status, where = "partly", "calibration reported; no recalibration was fitted"
        if item in ("23b", "12d") and not facts.get("subgroups"):
            status, where = "author", "no subgroup columns were available"
        rows.append({"item": item, "section": section, "topic": topic, "asks": what,
                     "status": status, "where": where})  # fmt: skip
    return rows


def model_card(facts: Mapping[str, Any]) -> dict[str, Any]:
    """Model-card dict (intended use, data, metrics, limitations) from the report's facts."""
    return {
        "schema": "echoclr-model-card/1",
        "model_details": facts.get("model", {}),
        "intended_use": {
            "primary_use": (
                f"research estimate of the probability of '{facts.get('task', '?')}' from "
                "transthoracic echocardiography videos (study level); not a medical device"
            ),
            "primary_users": "researchers; clinical use needs local validation and approval",
            "out_of_scope": [
                "use as a sole basis for diagnosis or treatment",
                "populations, vendors or views not represented in the data below",
            ],
            "to_edit": "intended use is a draft: the model's owner must write it (TRIPOD+AI 3b)",
        },
        "data": facts.get("data", {}),
        "metrics": facts.get("metrics", {}),
        "operating_points": facts.get("operating_points", {}),
        "subgroups": facts.get("subgroups", {}),
        "limitations": facts.get("limitations", []),
        "ethical_considerations": (
            "ids are salted hashes; no original ids, paths or dates finer than the year are in "
            "this card"
        ),
        "reproduce": facts.get("commands", []),
    }
