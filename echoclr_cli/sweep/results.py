"""A sweep's results: model selection on val, the long results table, paper-style tables, figures.

Selection (per ``task, init, ratio, seed``, over the LR grid) uses the validation split only:
the highest study-level val AUROC (``sweep.select_metric: val_auroc``; ties -> lower val loss,
then lower LR) or the lowest val loss (``val_loss``; ties -> higher AUROC, then lower LR). A run
whose val AUROC is undefined (one-class val split, FAULTS.md 15) is never selected; a cell is
only selected once all its LR runs are finished. The test and ext_test metrics of the selected
run (computed by the fine-tune run itself) are the sweep's results (``schema.RESULT_COLUMNS``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.io import atomic_write_csv
from echoclr_cli.metrics.plots import label_efficiency_table, plot_label_efficiency
from echoclr_cli.schema import RESULT_COLUMNS, SELECTION_COLUMNS
from echoclr_cli.sweep.grid import INIT_ORDER
from echoclr_cli.sweep.state import (
    ERROR_FILE,
    SELECT_LEVEL,
    best_epoch,
    read_history,
    read_metrics,
    val_auroc,
    val_loss,
)

TABLE_METRICS = ("auroc", "ap")


@dataclass
class SweepTable:
    """A paper-style table: rows = init, columns = ratio ``"1% (n=53)"``.

    ``values``/``low``/``high`` are floats (one seed: value and bootstrap CI; several seeds:
    mean and mean -/+ sd); ``text`` holds the cells as strings with the best value per column
    suffixed ``" *"``; ``best`` marks those cells. ``ci_unit`` names what the one-seed
    bootstrap CIs resampled (``patient`` by default; results.csv's ``ci_unit``).
    """

    task: str
    split: str
    level: str
    metric: str
    values: pd.DataFrame
    low: pd.DataFrame
    high: pd.DataFrame
    n_seeds: pd.DataFrame
    text: pd.DataFrame
    best: pd.DataFrame
    ci_unit: str = ""

    @property
    def key(self) -> str:
        return f"{self.metric}_{self.task}_{self.split}"


def _selection_key(
    cand: tuple[float, str, float, float], by_metric: str
) -> tuple[float, float, float]:
    """Sort key of a candidate ``(lr, run_dir, val_auroc, val_loss)``: smaller is better."""
    lr, _, auroc, loss = cand
    loss = loss if math.isfinite(loss) else math.inf
    return (loss, -auroc, lr) if by_metric == "val_loss" else (-auroc, loss, lr)


def select_models(plan_df: pd.DataFrame, out_dir: Path, cfg: Config) -> pd.DataFrame:
    """One row per (task, init, ratio, seed): the selected LR run and why (``SELECTION_COLUMNS``).

    ``run_dir``/``lr`` are empty when nothing can be selected yet (``reason`` says why: runs
    not finished, or every val split one-class).
    """
    rows = []
    by_metric = cfg.sweep.select_metric
    monitor = cfg.finetune.monitor
    for (task, init, ratio, seed), g in plan_df.groupby(
        ["task", "init", "ratio", "seed"], sort=False
    ):
        cands = []
        for r in g.itertuples():
            metrics = read_metrics(out_dir / r.run_dir)
            if metrics is None:
                continue
            auroc = val_auroc(metrics)
            loss = val_loss(
                read_history(out_dir / r.run_dir), monitor, best_epoch(out_dir / r.run_dir)
            )
            cands.append((float(r.lr), r.run_dir, auroc, loss))
        row = {
            "task": task,
            "init": init,
            "ratio": float(ratio),
            "n_studies": int(g["n_studies"].iloc[0]),
            "seed": int(seed),
            "lr": math.nan,
            "run_dir": "",
            "val_auroc": math.nan,
            "val_loss": math.nan,
            "candidates": len(g),
            "finished": len(cands),
            "reason": "",
        }
        valid = [c for c in cands if math.isfinite(c[2])]
        if len(cands) < len(g):
            row["reason"] = f"waiting for {len(g) - len(cands)} of {len(g)} runs"
            errors = [
                (out_dir / d / ERROR_FILE).read_text().strip()
                for d in g["run_dir"]
                if (out_dir / d / ERROR_FILE).is_file() and read_metrics(out_dir / d) is None
            ]
            if errors:
                row["reason"] += f" ({len(errors)} failed: {errors[0]})"
        elif not valid:
            row["reason"] = "no run with a defined val AUROC (one-class val split)"
        else:
            lr, run_dir, auroc, loss = min(valid, key=lambda c: _selection_key(c, by_metric))
            skipped = len(cands) - len(valid)
            row.update(
                lr=lr,
                run_dir=run_dir,
                val_auroc=auroc,
                val_loss=loss,
                reason=f"best {by_metric} of {len(valid)}"
                + (f" ({skipped} one-class val run(s) excluded)" if skipped else ""),
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=list(SELECTION_COLUMNS))


def collect_results(selection: pd.DataFrame, out_dir: Path, splits: Sequence[str]) -> pd.DataFrame:
    """Long results table of the selected runs on ``splits`` (``schema.RESULT_COLUMNS``)."""
    from echoclr_cli.metrics.splits import metrics_to_frame

    frames = []
    for row in selection[selection["run_dir"] != ""].itertuples():
        metrics = read_metrics(out_dir / row.run_dir)
        if metrics is None:
            continue
        long = metrics_to_frame({s: metrics[s] for s in splits if isinstance(metrics.get(s), dict)})
        for col in ("task", "init", "ratio", "n_studies", "seed", "lr"):
            long[col] = getattr(row, col)
        frames.append(long)
    if not frames:
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    df = pd.concat(frames, ignore_index=True)[list(RESULT_COLUMNS)]
    for col in ("value", "ci_low", "ci_high"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df


def _sort_results(df: pd.DataFrame, inits: Sequence[str]) -> pd.DataFrame:
    rank = {n: i for i, n in enumerate(inits)}
    key = df["init"].map(lambda x: rank.get(x, len(rank)))
    return (
        df.assign(_rank=key)
        .sort_values(
            ["task", "_rank", "init", "ratio", "seed", "split", "level", "metric"], kind="stable"
        )
        .drop(columns="_rank")
        .reset_index(drop=True)
    )


def _fmt(x: float) -> str:
    return f"{x:.3f}" if x is not None and math.isfinite(x) else "-"


def results_table(
    results: pd.DataFrame,
    task: str,
    split: str,
    metric: str = "auroc",
    level: str = "study",
    inits: Sequence[str] | None = None,
) -> SweepTable:
    """Paper-style table (rows init, columns ratio with n studies) of one task/split/metric.

    Rows are every init and columns every ratio with a selected run for the task and split; a
    cell whose value is undefined (one-class test split) or missing reads ``"-"``.
    """
    long = label_efficiency_table(results, task, split, level, metric)
    rows = results[(results["task"] == task) & (results["split"] == split)]
    cell_rows = rows[(rows["level"] == level) & (rows["metric"] == metric)]
    units = cell_rows.get("ci_unit", pd.Series(dtype=object)).dropna().astype(str)
    ci_unit = ", ".join(sorted(units.unique()))
    present = set(rows["init"])
    order = [i for i in (inits or sorted(present)) if i in present]
    ratios = sorted(float(r) for r in rows["ratio"].unique())
    cols = {
        r: f"{100 * r:g}% (n={int(round(rows.loc[rows['ratio'] == r, 'n_studies'].mean()))})"
        for r in ratios
    }

    def pivot(name: str) -> pd.DataFrame:
        p = pd.DataFrame(np.nan, index=pd.Index(order, name="init"), columns=ratios)
        if not long.empty:
            p = long.pivot(index="init", columns="ratio", values=name).reindex(
                index=order, columns=ratios
            )
        p.columns = [cols[r] for r in ratios]
        p.index.name = "init"
        return p.astype(float)

    values, low, high, n_seeds = pivot("value"), pivot("low"), pivot("high"), pivot("n_seeds")
    best = pd.DataFrame(False, index=values.index, columns=values.columns)
    for c in values.columns:
        col = values[c]
        if col.notna().any():
            best[c] = np.isclose(col, col.max(), rtol=0, atol=1e-12) & col.notna()
    text = pd.DataFrame("", index=values.index, columns=values.columns, dtype=object)
    for i in values.index:
        for c in values.columns:
            v, lo, hi, k = values.at[i, c], low.at[i, c], high.at[i, c], n_seeds.at[i, c]
            if not math.isfinite(v):
                cell = "-"
            elif k > 1:
                cell = f"{_fmt(v)} ± {_fmt(v - lo)} (n={int(k)})"
            elif math.isfinite(lo) and math.isfinite(hi):
                cell = f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"
            else:
                cell = _fmt(v)
            text.at[i, c] = cell + (" *" if best.at[i, c] else "")
    return SweepTable(task, split, level, metric, values, low, high, n_seeds, text, best, ci_unit)


def aggregate_all(
    out_dir: Path,
    cfg: Config,
    plan_frame: pd.DataFrame | None = None,
    inits: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, SweepTable], list[Path]]:
    out_dir = Path(out_dir)
    if plan_frame is None:
        path = out_dir / "plan.csv"
        if not path.exists():
            raise UserError(f"no plan.csv in {out_dir}", fix="run `echoclr sweep --out DIR` first")
        plan_frame = pd.read_csv(path)
    if inits is None:
        rank = {n: i for i, n in enumerate(INIT_ORDER)}
        inits = sorted(plan_frame["init"].unique(), key=lambda x: (rank.get(x, len(rank)), x))
    splits = [s for s in dict.fromkeys(cfg.sweep.splits)]
    selection = select_models(plan_frame, out_dir, cfg)
    from echoclr_cli.clinical.core import ClinicalOptions
    from echoclr_cli.clinical.sweep import paired_pvalues, sweep_clinical_columns

    results = collect_results(selection, out_dir, splits)
    opts = ClinicalOptions.from_config(cfg)
    results = _sort_results(
        sweep_clinical_columns(results, selection, out_dir, splits, opts), inits
    )
    atomic_write_csv(out_dir / "selection.csv", selection)
    atomic_write_csv(out_dir / "results.csv", results)
    unit = getattr(cfg.evaluate, "bootstrap_unit", "patient")
    pairs = paired_pvalues(selection, out_dir, splits, inits, ci=cfg.evaluate.ci, unit=unit)
    atomic_write_csv(out_dir / "paired_comparisons.csv", pairs)
    tables: dict[str, SweepTable] = {}
    figures: list[Path] = []
    present = set(results["split"]) if not results.empty else set()
    for task in dict.fromkeys(plan_frame["task"]):
        for split in splits:
            if split not in present:
                continue
            for metric in TABLE_METRICS:
                t = results_table(results, task, split, metric, SELECT_LEVEL, inits)
                tables[t.key] = t
                table_csv = t.text.reset_index().assign(ci_unit=t.ci_unit)  # names its unit
                atomic_write_csv(out_dir / f"table_{t.key}.csv", table_csv)
            if not cfg.evaluate.plots:
                continue
            figures.append(
                plot_label_efficiency(
                    results,
                    out_dir / f"label_efficiency_{task}_{split}.png",
                    task,
                    split,
                    level=SELECT_LEVEL,
                    metric="auroc",
                    inits=inits,
                )
            )
    return results, selection, tables, figures


def aggregate(out_dir: Path, cfg: Config) -> tuple[pd.DataFrame, dict[str, SweepTable]]:
    """Select models and tabulate whatever is finished in ``out_dir`` (reads its plan.csv).

    Writes selection.csv, results.csv, table_*.csv and label_efficiency_*.png; returns
    ``(results, tables)`` with tables keyed ``"{metric}_{task}_{split}"``.
    """
    results, _, tables, _ = aggregate_all(out_dir, cfg)
    return results, tables
