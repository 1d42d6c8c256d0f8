"""Sections of `echoclr report` for a sweep dir: grid, label efficiency, calibration, DeLong.

Reads the sweep's ``sweep.yaml``, ``selection.csv`` and ``results.csv`` plus the selected runs'
files; the best selected run at the largest ratio of each task is reported in full as well.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from echoclr_cli.clinical.sweep import paired_pvalues, sweep_clinical_columns
from echoclr_cli.errors import UserError
from echoclr_cli.io import read_csv
from echoclr_cli.report.facts import RunFacts, code_hash, file_sha256, ordered, png_of
from echoclr_cli.report.sections import (
    config_deviations,
    data_section,
    methods_note,
    results_sections,
)

TABLE_LEVEL = "study"


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.exists():
        raise UserError(
            f"{path} not found ({what})",
            fix="run `echoclr sweep` (it aggregates what has finished) before the report",
        )
    return read_csv(path, keep_default_na=True)  # our own CSV: formula-neutralised cells restored


def efficiency_table(results: pd.DataFrame, task: str, split: str, metric: str,
                     inits: list[str]) -> pd.DataFrame:  # fmt: skip
    """init x ratio text table ``value [low, high]`` (mean +/- sd with several seeds)."""
    from echoclr_cli.metrics.plots import label_efficiency_table

    long = label_efficiency_table(results, task, split, TABLE_LEVEL, metric)
    if long.empty:
        return pd.DataFrame()
    cols = {}
    for r, g in long.groupby("ratio"):
        cols[r] = f"{100 * r:g}% (n={int(round(g['n_studies'].mean()))})"
    out = []
    for init in [i for i in inits if i in set(long["init"])]:
        row: dict[str, Any] = {"init": init}
        for r, name in cols.items():
            g = long[(long["init"] == init) & (long["ratio"] == r)]
            if g.empty:
                row[name] = "-"
                continue
            v, lo, hi, k = g.iloc[0][["value", "low", "high", "n_seeds"]]
            if k > 1:
                row[name] = f"{v:.3f} ± {v - lo:.3f} (n={int(k)})"
            elif np.isfinite(lo) and np.isfinite(hi):
                row[name] = f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
            else:
                row[name] = f"{v:.3f}"
        out.append(row)
    return pd.DataFrame(out)


def featured_runs(selection: pd.DataFrame) -> dict[str, str]:
    """task -> run_dir of the selected run at the largest ratio with the best val AUROC."""
    sel = selection[selection["run_dir"].fillna("") != ""]
    out = {}
    for task, g in sel.groupby("task", sort=False):
        top = g[g["ratio"] == g["ratio"].max()]
        best = top.sort_values(["val_auroc", "init"], ascending=[False, True], na_position="last")
        out[task] = str(best.iloc[0]["run_dir"])
    return out


def sweep_sections(
    doc, sweep_dir: Path, data_dir: Path | None, options: Mapping[str, Any],
    say: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """All sections of a sweep report; returns the model-card facts."""
    from echoclr_cli.metrics.plots import plot_label_efficiency

    sweep_dir = Path(sweep_dir)
    cfg = yaml.safe_load((sweep_dir / "sweep.yaml").read_text()) if (
        sweep_dir / "sweep.yaml").exists() else {}  # fmt: skip
    selection = _read_csv(sweep_dir / "selection.csv", "model selection")
    results = _read_csv(sweep_dir / "results.csv", "results table")
    sw = cfg.get("sweep", {})
    splits = [s for s in dict.fromkeys(sw.get("splits", ["test", "ext_test"]))]
    inits_order = [i for i in dict.fromkeys(selection["init"]) if isinstance(i, str)]
    featured = featured_runs(selection)
    if not featured:
        raise UserError(f"no finished run selected in {sweep_dir}/selection.csv",
                        fix="let `echoclr sweep` finish at least one run per cell")  # fmt: skip
    facts = {task: RunFacts.load(sweep_dir / run, data_dir, options, say)
             for task, run in featured.items()}  # fmt: skip
    first = next(iter(facts.values()))
    data_section(doc, first)
    # recipe: grid and selection
    doc.section("recipe", "Recipe (sweep grid)")
    grid = {k: sw.get(k) for k in ("tasks", "inits", "ratios", "lrs", "low_ratio_lrs",
                                   "low_ratio", "seeds", "low_ratio_seeds", "select_metric", "splits")}  # fmt: skip
    doc.table(pd.DataFrame([{"setting": k, "value": str(v)} for k, v in grid.items()]))
    doc.para(f"One learning rate per (task, init, ratio, seed) is selected on study-level val "
             f"{sw.get('select_metric', 'val_auroc')}; test splits never take part.")  # fmt: skip
    doc.sub("Deviations from the published recipe")
    dev = config_deviations(cfg)
    doc.table(dev) if not dev.empty else doc.para("none")
    doc.sub("Hashes")
    man = first.data_dir / "manifest.csv" if first.data_dir else None
    doc.table(pd.DataFrame([
        {"what": "dataset manifest.csv (sha256)", "hash": file_sha256(man) if man else "-"},
        {"what": "sweep.yaml (sha256)", "hash": file_sha256(sweep_dir / "sweep.yaml")},
        {"what": "code (sha256 of echoclr sources)", "hash": code_hash()},
    ]))  # fmt: skip
    doc.sub("Selected runs")
    cols = [c for c in ("task", "init", "ratio", "n_studies", "seed", "lr", "val_auroc",
                        "reason") if c in selection.columns]  # fmt: skip
    doc.table(selection[cols])
    methods_note(doc, first)
    # label efficiency
    doc.section("label-efficiency", "Label efficiency")
    opts = first.opts
    results = sweep_clinical_columns(results, selection, sweep_dir, splits, opts)
    present = set(results["split"]) if not results.empty else set()
    card_metrics: dict[str, Any] = {}
    for task in dict.fromkeys(selection["task"]):
        for split in ordered(s for s in splits if s in present):
            doc.sub(f"{task} - {split}: study-level AUROC by init and label ratio")
            table = efficiency_table(results, task, split, "auroc", inits_order)
            doc.table(table)
            card_metrics[f"{task}/{split}/auroc"] = table.to_dict("records")
            doc.figure(png_of(lambda p, t=task, s=split: plot_label_efficiency(
                results, p, t, s, level=TABLE_LEVEL, metric="auroc", inits=inits_order)),
                f"label efficiency, {task}, {split}")  # fmt: skip
            for metric in ("brier", "ece"):
                doc.sub(f"{task} - {split}: {metric} (calibration) by init and ratio")
                doc.table(efficiency_table(results, task, split, metric, inits_order))
    # paired comparisons
    doc.section("paired", "Paired comparisons between inits (DeLong)")
    pairs = paired_pvalues(selection, sweep_dir, [s for s in splits if s in present], inits_order)
    if pairs.empty:
        doc.para("only one init: nothing to compare")
    else:
        shown = pairs.assign(
            diff=[f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" if np.isfinite(d) else "-"
                  for d, lo, hi in zip(pairs["diff"], pairs["ci_low"], pairs["ci_high"],
                                       strict=True)],
        )[["task", "split", "ratio", "n_studies", "seed", "init_a", "init_b", "n", "auroc_a",
           "auroc_b", "diff", "p_value", "p_holm", "unit", "test", "reason"]]  # fmt: skip
        doc.para("diff = AUROC(init_a) - AUROC(init_b) with its 95% DeLong CI, on the same "
                 "test studies; unit/test: the independent unit and the method (DeLong "
                 "clustered by patient: Obuchowski 1997); p_holm adjusts within each task and "
                 "split.")  # fmt: skip
        doc.table(shown)
    # featured runs in full
    card: dict[str, Any] = {}
    for task, f in facts.items():
        doc.section(f"featured-{task}", f"Featured model: {task}, {Path(featured[task]).name}")
        doc.para(f"The selected run at the largest label ratio with the best val AUROC "
                 f"({featured[task]}); its full evaluation follows.")  # fmt: skip
        got = results_sections(doc, f)
        if not card:
            card = got
        else:
            card["limitations"] = card.get("limitations", []) + [
                f"{task}: {x}" for x in got.get("limitations", [])
            ]
    card["metrics"] = {"label_efficiency": card_metrics, **card.get("metrics", {})}
    card["commands"] = [
        f"echoclr sweep --data DATA --out {sweep_dir.name} --config {sweep_dir.name}/sweep.yaml",
        f"echoclr report {sweep_dir.name} --data DATA --out report.html",
    ]
    card["task"] = ", ".join(facts)
    return card
