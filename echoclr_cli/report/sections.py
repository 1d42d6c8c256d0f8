"""Sections of `echoclr report` for one fine-tune run (data, recipe, methods, results).

Each section function takes the document builder (``report.html.Doc``) and a ``RunFacts`` (what
was read from the run dir and its dataset: ``report.facts``) and appends text, tables and
embedded figures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd
import yaml

from echoclr_cli import __version__
from echoclr_cli.clinical.write import summarize
from echoclr_cli.report.facts import (
    SPLIT_ORDER,
    RunFacts,
    code_hash,
    file_sha256,
    fmt_ci,
    ordered,
    png_of,
    redact,
)

MAIN_METRICS = ("auroc", "ap", "aupr_trapz", "sensitivity@youden", "specificity@youden")
RUNTIME_KEYS = ("runtime", "paths", "profile", "evaluate", "sweep", "synth")


# --------------------------------------------------------------------------- data
def split_counts(facts: RunFacts) -> pd.DataFrame:
    """Per split: videos, studies, patients, positive studies, prevalence, years, unlabelled."""
    rows = []
    man = facts.manifest
    if man is not None and facts.task in man.columns:
        for split in ordered(man["split"].unique()):
            g = man[man["split"] == split]
            lab = g[g[facts.task].notna()]
            studies = lab.groupby("study_id")[facts.task].first()
            years = pd.to_numeric(g.get("study_year"), errors="coerce").dropna()
            rows.append({
                "split": split, "videos": len(lab), "studies": len(studies),
                "patients": lab["patient_id"].nunique(), "positive studies": int(studies.sum()),
                "prevalence": float(studies.mean()) if len(studies) else None,
                "years": f"{int(years.min())}-{int(years.max())}" if len(years) else "-",
                "unlabelled videos (excluded)": int(g[facts.task].isna().sum()),
            })  # fmt: skip
        return pd.DataFrame(rows)
    for split, lv in facts.predictions.items():
        s = lv.get("study")
        if s is not None:
            rows.append({"split": split, "studies": len(s), "positive studies":
                         int(s["y_true"].sum()), "prevalence": float(s["y_true"].mean())})  # fmt: skip
    return pd.DataFrame(rows)


def data_section(doc, facts: RunFacts) -> None:
    doc.section("data", "Data")
    for n in facts.notes:
        doc.para(n, "warn")
    doc.sub(f"Studies per split (label '{facts.task}')")
    doc.table(split_counts(facts))
    ft = facts.finetune
    if ft:
        doc.para(
            f"Training used {ft.get('n_train_studies', '?')} of "
            f"{ft.get('n_train_studies_available', '?')} labelled training studies "
            f"(fraction {ft.get('frac', '?')}, {ft.get('n_train_positive_studies', '?')} positive, "
            f"{ft.get('n_train_videos', '?')} videos). Model selection and every threshold and "
            "recalibration map use the val split only; test and ext_test are used once."
        )
    if facts.skipped is not None:
        doc.sub("Files not included, by reason (preprocess)")
        counts = facts.skipped["reason"].value_counts().rename_axis("reason")
        doc.table(counts.reset_index(name="files"))
    doc.sub("De-identification")
    salt = facts.dataset.get("salt_id")
    doc.para(
        "Patient, study and video ids are salted hashes made at preprocessing"
        + (f" (salt fingerprint {salt}; the salt itself is not stored)" if salt else "")
        + ". The map back to original ids (id_map.csv) stays with the data owner and is not "
        "used here. This report holds no original id, file path or date finer than the year; "
        "subgroup fields from DICOM headers are coarse (vendor, model, year, sex, 10-year age "
        "band, frame-rate band)."
    )


# --------------------------------------------------------------------------- recipe
PREPROCESS_RUNTIME = ("input", "output", "overwrite", "salt", "workers", "labels", "layout")


def config_deviations(
    cfg: Mapping[str, Any],
    skip: tuple[str, ...] = (),
    preprocess: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Keys of a resolved config that differ from the published (paper) recipe.

    ``skip``: top-level sections left out (a fine-tune run's ``pretrain`` section did not make
    its init). ``preprocess``: the config the dataset was really made with (``dataset.json``),
    which replaces the run's own ``preprocess`` section.
    """
    from echoclr_cli.config.load import config_to_dict, diff_configs
    from echoclr_cli.config.schema import Config

    paper = config_to_dict(Config())
    cfg = dict(cfg)
    if preprocess:
        cfg["preprocess"] = {k: v for k, v in preprocess.items() if k not in PREPROCESS_RUNTIME}
        paper["preprocess"] = {
            k: v for k, v in paper["preprocess"].items() if k in cfg["preprocess"]
        }
    keys = [k for k in diff_configs(paper, cfg) if k.split(".")[0] not in RUNTIME_KEYS + skip]

    def get(d, key):
        for part in key.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        return d

    leaf = {k: k.rsplit(".", 1)[-1] for k in keys}  # a path is named by its role (redact)
    rows = [{"key": k, "this run": json.dumps(redact(get(cfg, k), leaf[k])),
             "published recipe": json.dumps(redact(get(paper, k), leaf[k]))}
            for k in keys]  # fmt: skip
    return pd.DataFrame(rows, columns=["key", "this run", "published recipe"])


def recipe_section(doc, facts: RunFacts) -> None:
    doc.section("recipe", "Recipe")
    model = facts.cfg.get("model", {})
    ft = facts.cfg.get("finetune", {})
    doc.table(pd.DataFrame([
        {"item": "architecture", "value": f"{model.get('arch', '?')} (width {model.get('width')})"},
        {"item": "initialisation", "value": redact(str(ft.get("init", "?")), "init")},
        {"item": "init weights loaded", "value": _loaded(facts.init)},
        {"item": "clip length / stride", "value": f"{ft.get('clip_len')} / {ft.get('stride')}"},
        {"item": "epochs run / best epoch", "value": f"{facts.finetune.get('epochs_run', '-')} / "
                                                     f"{facts.finetune.get('best_epoch', '-')}"},
        {"item": "pos_weight (class imbalance)", "value": facts.finetune.get("pos_weight", "-")},
        {"item": "checkpoint evaluated", "value": facts.finetune.get("checkpoint_tested", "-")},
    ]))  # fmt: skip
    doc.sub("Deviations from the published recipe")
    dev = config_deviations(facts.cfg, ("pretrain",), facts.dataset.get("config"))
    if dev.empty:
        doc.para("none: the resolved config equals the published (paper) profile")
    else:
        doc.table(dev)
    doc.sub("Hashes")
    man_hash = file_sha256(facts.data_dir / "manifest.csv") if facts.data_dir else None
    ck = facts.run_dir / "checkpoints" / str(facts.finetune.get("checkpoint_tested", "best.pt"))
    doc.table(pd.DataFrame([
        {"what": "dataset manifest.csv (sha256)", "hash": man_hash or "dataset not reachable"},
        {"what": "checkpoint (sha256)", "hash": file_sha256(ck) or "absent"},
        {"what": "config.yaml (sha256)", "hash": file_sha256(facts.run_dir / "config.yaml")},
        {"what": f"echoclr {__version__} code (sha256 of sources)", "hash": code_hash()},
    ]))  # fmt: skip
    doc.sub("Resolved config (paths redacted)")
    doc.code(yaml.safe_dump(redact(facts.cfg), sort_keys=False))


def _loaded(init: Mapping[str, Any]) -> str:
    loaded = init.get("loaded")
    if isinstance(loaded, list | tuple):
        return f"{len(loaded)} tensors" if loaded else "none (random initialisation)"
    return "-" if loaded is None else str(loaded)


def methods_note(doc, facts: RunFacts) -> None:
    o = facts.opts
    doc.section("methods", "Evaluation methods")
    resampled = {
        "patient": "resampling whole patients (a patient's studies and videos together; the "
        "study where the manifest has no patient id)",
        "study": "resampling whole studies",
        "item": "resampling the rows as if independent",
    }.get(getattr(o, "unit", "patient"), "")
    doc.bullets([
        "A video's probability is the mean of its clips' sigmoid outputs; a study's is the mean "
        "of its videos' (each video counts once). Study level is primary.",
        f"95% CIs: {o.n_boot} stratified percentile bootstrap resamples of the evaluated split, "
        f"{resampled} (each table's CI unit), level {o.ci:g}. Thresholds and recalibration "
        "maps are chosen on val and held fixed.",
        "Discrimination: AUROC (Mann-Whitney), AP (step-wise), trapezoid AUPR.",
        f"Calibration: Brier score; ECE over up to {o.n_bins} equal-mass bins (fewer so that a "
        "bin holds >= 10 predictions on average); calibration slope "
        "(logistic regression of the outcome on logit p) and intercept (calibration-in-the-"
        "large, slope fixed at 1).",
        "Recalibration: " + ({"none": "not requested (--calibrate)",
                              "both": "temperature and Platt scaling fitted on val"}
                             .get(o.calibrate, f"{o.calibrate} scaling fitted on val")),
        "Operating points chosen on val: highest threshold with sensitivity >= 0.90 and 0.95, "
        "Youden's J" + (f", sensitivity >= {o.at_sensitivity:g}" if o.at_sensitivity else "")
        + (f", fixed threshold {o.at_threshold:g}" if o.at_threshold is not None else "")
        + "; positive iff p >= threshold.",
        f"Subgroups: per value of each manifest column; a warning below n={o.subgroup_min_n}. "
        "No CI where a class has a single member (every stratified resample is the same).",
        "Paired comparisons (sweeps): DeLong's test on the same studies, clustered by patient "
        "(Obuchowski 1997) unless evaluate.bootstrap_unit says otherwise; Holm-adjusted within "
        "each task and split.",
    ])  # fmt: skip


# --------------------------------------------------------------------------- results
def results_sections(doc, facts: RunFacts) -> dict[str, Any]:
    """Training, discrimination, calibration, operating points, subgroups; returns card facts."""
    from echoclr_cli.clinical.core import apply_recalibration
    from echoclr_cli.clinical.plots import plot_decision_curve, plot_reliability
    from echoclr_cli.metrics import plots
    from echoclr_cli.metrics.splits import metrics_to_frame

    clin = facts.clinical
    summary = summarize(clin)
    limitations: list[str] = []
    hist = facts.run_dir / "history.csv"
    if hist.exists():
        doc.section("training", "Training curves")
        doc.figure(png_of(lambda p: plots.plot_history(hist, p)), "loss and per-epoch metrics")
    # discrimination
    doc.section("discrimination", "Discrimination")
    split_metrics = {s: facts.metrics[s] for s in facts.splits}
    long = metrics_to_frame(split_metrics)
    rows = []
    for (split, level), g in long.groupby(["split", "level"], sort=False):
        cells = {r.metric: {"value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high}
                 for r in g.itertuples()}  # fmt: skip
        n, n_pos = cells.get("n", {}).get("value"), cells.get("n_pos", {}).get("value")
        units = g["ci_unit"].dropna().astype(str).unique() if "ci_unit" in g else []
        rows.append({"split": split, "level": level, "n": n, "positives": n_pos,
                     **{m: fmt_ci(cells.get(m)) for m in MAIN_METRICS},
                     "CI unit": ", ".join(units) or "-"})  # fmt: skip
    disc = pd.DataFrame(rows)
    if not disc.empty:
        disc["_o"] = disc["split"].map({s: i for i, s in enumerate(SPLIT_ORDER)})
        disc = disc.sort_values(["level", "_o"]).drop(columns="_o")  # study before video
    doc.para("Internal and external/temporal test splits side by side (study level first).")
    doc.table(disc)
    card_metrics: dict[str, Any] = {}
    for split in facts.splits:
        cells = facts.metrics[split].get("study", {})
        card_metrics[split] = {
            **{m: cells.get(m) for m in ("auroc", "ap")},
            **{m: (cells.get(m) or {}).get("value") for m in ("n", "n_pos")},
        }
        study = facts.predictions.get(split, {}).get("study")
        if study is None:
            continue
        if split != "val":
            doc.figure(
                png_of(lambda p, s=study, sp=split: plots.plot_roc_pr(
                    s, p.with_suffix(""), n_boot=min(facts.opts.n_boot, 200), seed=facts.opts.seed,
                    ci=facts.opts.ci, title=f"{sp}/study")),
                f"ROC and precision-recall curves, {split}, study level",
            )  # fmt: skip
        if card_metrics[split].get("n") and card_metrics[split]["n"] < 100 and split != "val":
            limitations.append(f"{split}: only {card_metrics[split]['n']} studies; CIs are wide")
        auroc = cells.get("auroc", {})
        if split != "val" and auroc.get("value") is None:
            limitations.append(f"{split}: AUROC undefined (one class)")
    if "ext_test" not in facts.splits:
        limitations.append("no external or temporal test split: generalisation is untested")
    # calibration
    doc.section("calibration", "Calibration")
    cal = summary.calibration
    recal = clin.get("levels", {}).get("study", {}).get("recalibration", {})
    if not cal.empty:
        piv = cal.assign(cell=[fmt_ci(r) for r in cal.to_dict("records")])
        piv = piv.pivot_table(index=["split", "level", "variant"], columns="metric",
                              values="cell", aggfunc="first").reset_index()  # fmt: skip
        rank = {sp: i for i, sp in enumerate(SPLIT_ORDER)}
        piv = piv.sort_values(
            ["level", "split"], key=lambda c: c.map(rank) if c.name == "split" else c
        )
        doc.table(piv)
        for m, fitted in recal.items():
            doc.para(f"{m} scaling fitted on val: {fitted.get('params') or fitted.get('reason')}")
        for r in cal[(cal["level"] == "study") & (cal["variant"] == "raw") &
                     (cal["metric"] == "calibration_slope")].itertuples():  # fmt: skip
            if r.split != "val" and r.ci_low is not None and r.ci_high is not None:
                if not (r.ci_low <= 1 <= r.ci_high):
                    limitations.append(
                        f"{r.split}: calibration slope {r.value:.2f} (CI excludes 1): "
                        "probabilities are mis-calibrated; consider --calibrate"
                    )
    for split in facts.splits:
        study = facts.predictions.get(split, {}).get("study")
        if study is None:
            continue
        variants = {
            m: q
            for m, f in recal.items()
            if (q := apply_recalibration(study["y_prob"].to_numpy(), f)) is not None
        }
        doc.figure(
            png_of(lambda p, s=study, v=variants, sp=split: plot_reliability(
                s, p, facts.opts.n_bins, v, f"{sp}/study")),
            f"reliability diagram, {split}, study level (exact 95% binomial bars)",
        )  # fmt: skip
    # operating points
    doc.section("operating-points", "Operating points")
    thr = clin.get("levels", {}).get("study", {}).get("thresholds", {})
    doc.para(
        "Thresholds chosen on val (study level): "
        + (", ".join(f"{k} = {v:.4g}" for k, v in thr.items() if v is not None) or "none")
    )
    ops = summary.operating
    card_ops: dict[str, Any] = {}
    if not ops.empty:
        ops = ops[ops["level"] == "study"]
        rows = []
        for (split, point), g in ops.groupby(["split", "point"], sort=False):
            cells = {r["metric"]: r for r in g.to_dict("records")}
            first = g.iloc[0]
            rows.append({"split": split, "point": point, "threshold": first["threshold"],
                         **{m: fmt_ci(cells[m]) for m in ("sensitivity", "specificity", "ppv",
                                                          "npv")},
                         "TP/FP/FN/TN": f"{first['tp']}/{first['fp']}/{first['fn']}/{first['tn']}"})  # fmt: skip
            card_ops.setdefault(split, {})[point] = {
                m: cells[m]["value"] for m in ("sensitivity", "specificity", "ppv", "npv")
            } | {"threshold": first["threshold"]}
        doc.table(pd.DataFrame(rows))
    for split in facts.splits:
        study = facts.predictions.get(split, {}).get("study")
        if study is not None and split != "val":
            doc.figure(
                png_of(lambda p, s=study, sp=split: plot_decision_curve(s, p, thr, f"{sp}/study")),
                f"decision curve (net benefit), {split}, study level",
            )
    # subgroups
    subgroup_rows = subgroups_section(doc, facts, summary, limitations)
    facts_tripod = {
        "recalibrated": any(f.get("params") for f in recal.values()),
        "subgroups": bool(subgroup_rows),
        "external": "ext_test" in facts.splits,
    }
    return {
        "task": facts.task,
        "model": {
            "task": facts.task,
            "architecture": facts.cfg.get("model", {}).get("arch"),
            "init": redact(str(facts.cfg.get("finetune", {}).get("init")), "init"),
            "echoclr_version": __version__,
            "code_sha256": code_hash(),
        },  # fmt: skip
        "data": {"splits": split_counts(facts).to_dict("records")},
        "metrics": card_metrics,
        "operating_points": card_ops,
        "subgroups": subgroup_rows,
        "limitations": limitations + facts.notes,
        "tripod_facts": facts_tripod,
    }


def subgroups_section(doc, facts: RunFacts, summary, limitations: list[str]) -> int:
    doc.section("subgroups", "Subgroups")
    sub = summary.subgroups
    skipped = facts.clinical.get("subgroups_skipped", {})
    if sub.empty:
        doc.para(
            "No subgroup table: "
            + (
                "the dataset is not reachable (pass --data)"
                if facts.manifest is None
                else "no manifest column qualifies"
            ),
            "warn",
        )
        return 0
    doc.para("Per value of each manifest column (study level when the column is constant within "
             "each study). The external site is the ext_test split, shown side by side above. "
             "Youden threshold from the whole val split.")  # fmt: skip
    n_warn = 0
    for (split, col), g in sub.groupby(["split", "column"], sort=False):
        doc.sub(f"{split}: by {col} ({g['level'].iloc[0]} level)")
        rows = []
        for value, gg in g.groupby("group", sort=False):
            cells = {r["metric"]: r for r in gg.to_dict("records")}
            first = gg.iloc[0]
            rows.append({col: value, "n": first["n"], "positives": first["n_pos"],
                         **{m: fmt_ci(cells.get(m)) for m in ("auroc", "brier",
                                                              "sensitivity@youden",
                                                              "specificity@youden")},
                         "warning": first["warning"]})  # fmt: skip
            n_warn += bool(first["warning"])
        doc.table(pd.DataFrame(rows))
    if skipped:
        doc.para("Columns not used: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    if n_warn:
        limitations.append(f"{n_warn} subgroup(s) below the minimum count or one-class")
    return len(sub)


__all__ = ["data_section", "methods_note", "recipe_section", "results_sections"]
