"""``echoclr evaluate``: a fine-tuned run on splits of a dataset, optionally compared with another.

The model is rebuilt from the run (``inference.run.load_run``: ``config.yaml`` + best.pt else
last.pt, and the run's Task) and run over the dataset; the maths over predictions (metrics,
bootstrap CIs, thresholds chosen on val, DeLong) is ``echoclr_cli.metrics``. The files are
written by ``inference.write.write_evaluation``, which the fine-tune uses for its own final
evaluation, so both write the same files.

Nothing is written before every argument is checked (run dirs, ``--compare`` run, dataset,
splits, output folder). The outputs go to one folder per evaluation, ``RUN/eval/<name>/`` (or
``--out``): built in a staging folder, then moved into place by ``io.replace_own_files``, which
removes only the files an earlier evaluation wrote there (listed in ``.echoclr-files.json``) and
never a file anyone else put there. The fine-tune's own ``metrics.json`` and predictions in the
run dir are never touched, so the sweep's per-run result file stays what the fine-tune wrote,
and an evaluation on fewer splits never clobbers a wider one.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from echoclr_cli import rundir
from echoclr_cli.config.schema import Config
from echoclr_cli.data.manifest import SPLITS
from echoclr_cli.errors import UserError
from echoclr_cli.events import Progress, Status
from echoclr_cli.inference.run import LoadedRun, device_and_autocast, load_run, predict_rows
from echoclr_cli.inference.write import write_evaluation
from echoclr_cli.io import OWN_FILES, atomic_write_json, replace_own_files
from echoclr_cli.metrics import splits as ev
from echoclr_cli.metrics.aggregate import aggregate_levels
from echoclr_cli.metrics.compare import compare_runs


def run_data_dir(run_dir: Path, data_dir: Path | None) -> Path:
    """``data_dir``, else the dataset the run was trained on (``finetune.json``)."""
    if data_dir is not None:
        return Path(data_dir)
    recorded = rundir.read_finetune_facts(run_dir).get("data_dir")
    if recorded:
        return Path(recorded)
    raise UserError(
        f"no dataset given and {run_dir}/{rundir.FINETUNE_FACTS} does not name one",
        fix="pass --data DATA",
    )


# --------------------------------------------------------------------------- evaluate
@dataclass
class EvaluateResult:
    """What ``echoclr evaluate`` computed and wrote."""

    run_dir: Path
    out_dir: Path
    name: str
    checkpoint: Path
    task: str
    splits: list[str]
    metrics: dict[str, Any]
    table: pd.DataFrame  # split, level, metric, value, ci_low, ci_high, n
    predictions: dict[str, dict[str, pd.DataFrame]]  # split -> level -> frame
    comparison: dict[str, Any] | None = None  # split -> level -> compare_runs dict
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def eval_name(
    splits: Sequence[str], data_name: str | None = None, compare_name: str | None = None
) -> str:
    """Default folder name of an evaluation: ``<splits joined by +>[_<dataset>][_vs-<run B>]``."""
    name = "+".join(splits)
    if data_name:
        name += f"_{data_name}"
    if compare_name:
        name += f"_vs-{compare_name}"
    return re.sub(r"[^A-Za-z0-9._+-]", "-", name)


def _check_out_dir(out_dir: Path) -> None:
    """An evaluation replaces its own earlier files only: refuse a folder that holds other
    things and no earlier evaluation (no ``eval.json``)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a folder", fix="pass another --out / --name")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / rundir.EVAL_INFO).is_file():
        raise UserError(
            f"{out_dir} is not empty and is not an earlier `echoclr evaluate` output "
            f"(no {rundir.EVAL_INFO})",
            fix="pass another --out (an empty or new folder) or --name",
        )


def _resolve_splits(
    requested: Sequence[str] | None, cfg: Config, present: set[str], data_dir: Path, task: str
) -> tuple[list[str], list[str]]:
    """``(splits to evaluate, notes)``: explicit splits must exist; ``evaluate.splits`` (the
    default) skips absent ones with a note. ``val`` is always evaluated when present."""
    explicit = requested is not None
    wanted = list(dict.fromkeys(requested if explicit else cfg.evaluate.splits))
    unknown = [s for s in wanted if s not in SPLITS]
    if unknown:
        source = "--split" if explicit else "evaluate.splits"
        raise UserError(f"{source}: unknown split(s) {unknown}", fix=f"use {', '.join(SPLITS)}")
    absent = [s for s in wanted if s not in present]
    notes = []
    if absent and explicit:
        raise UserError(
            f"{data_dir / 'manifest.csv'} has no labelled '{task}' videos in split(s) {absent} "
            f"(present: {sorted(present)})",
            fix="pick --split among the present ones",
        )
    if absent:
        notes.append(f"evaluate.splits {absent} have no labelled '{task}' videos: skipped")
    chosen = [s for s in wanted if s in present]
    todo = (["val"] if "val" in present and "val" not in chosen else []) + chosen
    if not todo:
        raise UserError(
            f"none of evaluate.splits {wanted} (nor val) has labelled '{task}' videos in "
            f"{data_dir / 'manifest.csv'}",
            fix="pass --split with a present split",
        )
    return todo, notes


def evaluate_run(
    cfg: Config,
    run_dir: Path,
    data_dir: Path | None = None,
    splits: Sequence[str] | None = None,
    *,
    compare: Path | None = None,
    out_dir: Path | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> EvaluateResult:
    """Evaluate a fine-tuned run on ``splits`` of a dataset (and compare it with another run).

    ``splits`` None = ``cfg.evaluate.splits`` (absent ones are skipped with a note; explicit
    absent splits are refused). ``val`` is always evaluated too when the dataset has it, because
    the thresholds reported for the other splits are chosen on it. ``data_dir`` None = the
    dataset the run was trained on. Evaluation settings (clips per video, block size, bootstrap,
    CI, plots) and runtime come from ``cfg``; the model from the run.

    Files (``eval.json``, ``metrics.json``, predictions CSVs, plots, ``comparison.json``) go to
    ``out_dir``, default ``RUN/eval/<name>/`` with ``name`` default :func:`eval_name`; the folder
    is replaced as a whole, and only when everything was computed.
    ``compare``: another fine-tune run on the same task; both are evaluated with the same
    settings on the same items and compared per split and level with ``compare.compare_runs``
    (paired stratified bootstrap of the AUROC difference A - B, and DeLong's test).
    """
    # ---- every argument is checked before anything is computed or written
    run_dir = Path(run_dir)
    device, _ = device_and_autocast(cfg)
    run = load_run(run_dir, device)
    task = run.task.column
    given_data = data_dir
    data_dir = run_data_dir(run_dir, data_dir)
    df = run.task.load_rows(data_dir)  # labelled rows: 0/1, or class indices of a K-class run
    todo, notes = _resolve_splits(splits, cfg, set(df["split"]), data_dir, task)
    other = None
    if compare is not None and run.task.is_multiclass:
        raise UserError("--compare is not supported for multi-class runs", fix="drop --compare")
    if compare is not None:
        other = load_run(Path(compare), device)
        if other.task.column != task:
            raise UserError(
                f"cannot compare runs of different tasks: {run_dir} ({task}) vs "
                f"{compare} ({other.task.column})",
                fix="compare two runs of the same --task",
            )
    if name is not None and not _NAME_OK.match(name):
        raise UserError(
            f"--name '{name}' is not a plain folder name",
            fix="use letters, digits and . _ + - (no slashes)",
        )
    if out_dir is None:
        recorded = rundir.read_finetune_facts(run_dir).get("data_dir")
        other_data = given_data is not None and (
            not recorded or Path(recorded).resolve() != Path(given_data).resolve()
        )
        named = [s for s in todo if s != "val"] or todo
        name = name or eval_name(
            named,
            Path(given_data).resolve().name if other_data else None,
            Path(compare).resolve().name if compare is not None else None,
        )
        out_dir = rundir.eval_dir(run_dir, name)
    out_dir = Path(out_dir)
    name = name or out_dir.name
    _check_out_dir(out_dir)

    # ---- predictions (nothing written yet)
    video_by_split, video_b = {}, {}
    for split in todo:
        _emit(progress, f"predicting {split}")
        part = df[df["split"] == split]
        video_by_split[split] = predict_rows(run, cfg, part, data_dir, labelled=True,
                                             progress=progress)  # fmt: skip
        if other is not None:
            _emit(progress, f"predicting {split} with {compare}")
            video_b[split] = predict_rows(other, cfg, part, data_dir, labelled=True,
                                          progress=progress)  # fmt: skip

    # ---- one folder, swapped in when complete
    box: dict[str, Any] = {}

    def fill(tmp: Path) -> list[Path]:
        history = run_dir / rundir.HISTORY
        metrics, levels, files = write_evaluation(
            cfg, run.task, video_by_split, tmp, history, df, progress
        )
        box.update(metrics=metrics, levels=levels)
        if other is not None:
            box["comparison"] = _compare(cfg, run, other, levels, video_b)
            atomic_write_json(tmp / rundir.COMPARISON, box["comparison"])
            files.append(tmp / rundir.COMPARISON)
        info = {
            "run_dir": str(run_dir),
            "checkpoint": run.checkpoint.name,
            "epoch": run.epoch,
            "task": task,
            "data_dir": str(Path(data_dir).resolve()),
            "splits": todo,
            "compare": str(compare) if compare is not None else None,
            "notes": notes,
            "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        atomic_write_json(tmp / rundir.EVAL_INFO, info)
        return [Path(p).relative_to(tmp) for p in (tmp / rundir.EVAL_INFO, *files)]

    # an evaluation folder from before the file index: its files are the earlier evaluation's
    legacy = not (out_dir / OWN_FILES).exists()
    written, _ = replace_own_files(out_dir, "evaluate", fill, overwrite=legacy,
                                   fix="move that file away, or pass another --out / --name")  # fmt: skip
    files = [out_dir / rel for rel in written]
    return EvaluateResult(
        run_dir=run_dir,
        out_dir=out_dir,
        name=name,
        checkpoint=run.checkpoint,
        task=task,
        splits=todo,
        metrics=box["metrics"],
        table=ev.metrics_to_frame(box["metrics"]),
        predictions=box["levels"],
        comparison=box.get("comparison"),
        notes=notes,
        files=files,
    )


def _compare(
    cfg: Config,
    run: LoadedRun,
    other: LoadedRun,
    levels: dict[str, dict[str, pd.DataFrame]],
    video_b: dict[str, pd.DataFrame],
) -> dict[str, Any]:
    e = cfg.evaluate
    out: dict[str, Any] = {"run_a": str(run.run_dir), "run_b": str(other.run_dir), "splits": {}}
    for split, by_level in levels.items():
        levels_b = aggregate_levels(video_b[split])
        out["splits"][split] = {
            level: compare_runs(
                by_level[level],
                levels_b[level],
                n=e.bootstrap,
                seed=e.bootstrap_seed,
                ci=e.ci,
                on="study_id" if level == "study" else "video_id",
                unit=e.bootstrap_unit,
            )
            for level in by_level
        }
    return out


def _emit(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(Status(message))
