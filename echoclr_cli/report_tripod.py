"""TRIPOD+AI checklist (Collins et al., BMJ 2024;385:e078378) and the model-card dict.

The checklist has 27 items (52 with sub-items). Each item here carries a short paraphrase of
what it asks (read the statement itself for the wording) and what an echoclr report can do
for it: ``report`` (the report gives it, in the named section), ``partly`` (the report gives the
numbers; the author must still describe or justify) or ``author`` (only the author can write it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# (item, section, topic, paraphrase, status, where in the report / what the author must add)
TRIPOD_AI: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("1", "Title", "Title", "study type (development/evaluation), population, outcome",
     "author", ""),
    ("2", "Abstract", "Abstract", "structured abstract (TRIPOD+AI for Abstracts)", "author", ""),
    ("3a", "Introduction", "Background", "healthcare context and rationale", "author", ""),
    ("3b", "Introduction", "Background", "target population, intended purpose and users",
     "partly", "model card: intended use (draft, to be edited)"),
    ("3c", "Introduction", "Background", "known health inequalities between groups",
     "author", ""),
    ("4", "Introduction", "Objectives", "objectives, development and/or evaluation", "author",
     ""),
    ("5a", "Methods", "Data", "data sources and their representativeness", "partly",
     "Data: splits and sources; representativeness is the author's"),
    ("5b", "Methods", "Data", "dates of data collection", "partly",
     "Data / Subgroups: study years per split"),
    ("6a", "Methods", "Participants", "setting, number and location of centres", "partly",
     "Data: internal vs external split; centre description is the author's"),
    ("6b", "Methods", "Participants", "eligibility criteria", "partly",
     "Data: files included/skipped with reasons"),
    ("6c", "Methods", "Participants", "treatments received", "author", ""),
    ("7", "Methods", "Data preparation", "pre-processing and quality checks", "report",
     "Data (skipped reasons), Recipe (preprocess settings)"),
    ("8a", "Methods", "Outcome", "outcome definition and how/when assessed", "author",
     "the report names the label column only"),
    ("8b", "Methods", "Outcome", "qualifications of outcome assessors", "author", ""),
    ("8c", "Methods", "Outcome", "blinding of outcome assessment", "author", ""),
    ("9a", "Methods", "Predictors", "choice of initial predictors", "partly",
     "Recipe: input is the echo video clips"),
    ("9b", "Methods", "Predictors", "definition and measurement of predictors", "report",
     "Recipe: frame size, clip length, stride, clips per video"),
    ("9c", "Methods", "Predictors", "qualifications of predictor assessors", "author",
     "automated input; state so"),
    ("10", "Methods", "Sample size", "how study size was arrived at", "partly",
     "Data: counts; the justification is the author's"),
    ("11", "Methods", "Missing data", "handling of missing data", "report",
     "Data: skipped files and unlabelled rows with reasons"),
    ("12a", "Methods", "Analytical methods", "how data were used and partitioned", "report",
     "Data / Recipe: patient-level splits, val for selection and thresholds"),
    ("12b", "Methods", "Analytical methods", "handling of predictors (scaling, transforms)",
     "report", "Recipe: normalisation and augmentation settings"),
    ("12c", "Methods", "Analytical methods", "model type, internal validation, tuning",
     "partly", "Recipe: architecture, init, LR selection; rationale is the author's"),
    ("12d", "Methods", "Analytical methods", "heterogeneity across clusters", "partly",
     "Subgroups: per site/split and manifest column"),
    ("12e", "Methods", "Analytical methods", "performance measures and model comparisons",
     "report", "Methods note: AUROC, AP, calibration, operating points, CIs, DeLong"),
    ("12f", "Methods", "Analytical methods", "model updating / recalibration", "report",
     "Calibration: recalibration fitted on val (when enabled)"),
    ("12g", "Methods", "Analytical methods", "how predictions were calculated", "report",
     "Methods note: clip -> video -> study mean"),
    ("13", "Methods", "Class imbalance", "methods for class imbalance", "report",
     "Recipe: pos_weight"),
    ("14", "Methods", "Fairness", "approaches to address fairness", "author",
     "subgroup metrics are in the report"),
    ("15", "Methods", "Model output", "output and how thresholds were chosen", "report",
     "Operating points: thresholds chosen on val"),
    ("16", "Methods", "Training vs evaluation", "differences between development and "
     "evaluation data", "partly", "Data: per-split counts and prevalence"),
    ("17", "Methods", "Ethical approval", "ethics committee and consent", "author", ""),
    ("18a", "Open science", "Funding", "sources of funding", "author", ""),
    ("18b", "Open science", "Conflicts of interest", "declarations", "author", ""),
    ("18c", "Open science", "Protocol", "where the protocol can be accessed", "author", ""),
    ("18d", "Open science", "Registration", "study registration", "author", ""),
    ("18e", "Open science", "Data sharing", "availability of data", "author", ""),
    ("18f", "Open science", "Code sharing", "availability of code", "partly",
     "Recipe: echoclr version and code hash; add the repository link"),
    ("19", "Open science", "Patient and public involvement", "PPI details", "author", ""),
    ("20a", "Results", "Participants", "flow of participants and outcomes", "report",
     "Data: files -> included -> splits, positives per split"),
    ("20b", "Results", "Participants", "characteristics per data source", "partly",
     "Data / Subgroups: counts per split and manifest column"),
    ("20c", "Results", "Participants", "development vs evaluation distributions", "partly",
     "Data / Subgroups"),
    ("21", "Results", "Model development", "participants and events in each analysis",
     "report", "Data, Discrimination (n, n_pos per split)"),
    ("22", "Results", "Model specification", "full model (code, object) for reuse", "report",
     "Recipe (config, hashes), Reproduce (commands)"),
    ("23a", "Results", "Model performance", "performance with CIs incl. key subgroups",
     "report", "Discrimination, Calibration, Operating points, Subgroups"),
    ("23b", "Results", "Model performance", "heterogeneity across clusters", "report",
     "Subgroups; internal vs external test side by side"),
    ("24", "Results", "Model updating", "results of model updating", "report",
     "Calibration: raw vs recalibrated (when enabled)"),
    ("25", "Discussion", "Interpretation", "interpretation incl. fairness", "author", ""),
    ("26", "Discussion", "Limitations", "limitations and their effects", "partly",
     "Limitations: automatic notes; the discussion is the author's"),
    ("27a", "Discussion", "Usability", "handling poor-quality or missing input", "partly",
     "Data: preprocess skip reasons"),
    ("27b", "Discussion", "Usability", "user interaction and expertise needed", "author", ""),
    ("27c", "Discussion", "Usability", "future research", "author", ""),
)  # fmt: skip


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
