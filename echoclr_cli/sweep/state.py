"""What a sweep dir says: each run's status, metrics, history and time spent; the sweep's config.

A run is ``done`` when its metrics.json is complete, ``partial`` when it has
``checkpoints/last.pt`` (resumed), else ``pending``. ``sweep.yaml`` pins the config that shapes
the runs: only the keys of ``sweep_mutable_keys()`` may change between invocations.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import yaml

from echoclr_cli.config.load import config_to_dict, diff_configs, redact_config
from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError

SELECT_LEVEL = "study"
ERROR_FILE = "sweep_error.txt"  # in a run dir whose fine-tune raised a UserError (the message)


def sweep_mutable_keys() -> tuple[str, ...]:
    """Config keys (dotted prefixes) a sweep may change between invocations without invalidating
    finished runs: the grid itself, where things live, how many workers, and the keys set per
    run: the resume rule (``checkpoint.RESUME_MUTABLE_KEYS``) plus the grid's keys."""
    from echoclr_cli.models.checkpoint import RESUME_MUTABLE_KEYS

    return (
        *RESUME_MUTABLE_KEYS,
        "sweep.",
        "runtime.seed",
        "finetune.task",
        "finetune.init",
        "finetune.frac",
        "finetune.frac_seed",
        "finetune.optim.learning_rate",
        "evaluate.splits",
    )


def read_metrics(run_dir: Path) -> dict | None:
    """A run's metrics.json when present and complete (a dict with a ``val`` section), else None.

    metrics.json is written atomically at the very end of a fine-tune run, so a present,
    parseable file with validation metrics means the run finished.
    """
    try:
        data = json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("val"), dict) else None


def run_status(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    if read_metrics(run_dir) is not None:
        return "done"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "partial"
    return "pending"


def read_history(run_dir: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(Path(run_dir) / "history.csv")
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None


def val_auroc(metrics: dict) -> float:
    val = metrics.get("val") or {}
    # a multi-class run with a per-video label (the view) has only the video level: its
    # "auroc" is the macro one-vs-rest AUROC
    cell = (val.get(SELECT_LEVEL) or val.get("video") or {}).get("auroc") or {}
    v = cell.get("value") if isinstance(cell, dict) else None
    return float(v) if v is not None and math.isfinite(float(v)) else math.nan


def best_epoch(run_dir: Path) -> int | None:
    """The epoch whose weights a fine-tune run tested (``finetune.json``), when recorded."""
    try:
        best = json.loads((Path(run_dir) / "finetune.json").read_text()).get("best_epoch")
    except (OSError, ValueError, AttributeError):
        return None
    return int(best) if isinstance(best, int | float) and math.isfinite(best) else None


def val_loss(history: pd.DataFrame | None, monitor: str, best_epoch: int | None = None) -> float:
    """Validation loss of the weights the run kept: its recorded best epoch, else the best
    epoch by ``finetune.monitor``."""
    if history is None or "val_loss" not in history or history.empty:
        return math.nan
    losses = pd.to_numeric(history["val_loss"], errors="coerce")
    if best_epoch is not None and "epoch" in history:
        at = losses[history["epoch"] == best_epoch]
        if len(at) == 1:
            return float(at.iloc[0])
    if monitor == "val_auroc" and "val_auroc" in history:
        auroc = pd.to_numeric(history["val_auroc"], errors="coerce")
        if auroc.notna().any():
            return float(losses[auroc.idxmax()])
    return float(losses.min()) if losses.notna().any() else math.nan


def run_seconds(run_dir: Path, history: pd.DataFrame | None) -> tuple[float, float]:
    """``(training seconds, evaluation seconds)`` of a finished run: the history's epoch
    seconds, and the time from the last history.csv write to metrics.json (final evaluation)."""
    run_dir = Path(run_dir)
    train = (
        float(pd.to_numeric(history["seconds"], errors="coerce").sum())
        if (history is not None and "seconds" in history)
        else math.nan
    )
    try:
        evaluation = max(
            0.0,
            (run_dir / "metrics.json").stat().st_mtime - (run_dir / "history.csv").stat().st_mtime,
        )
    except OSError:
        evaluation = 0.0
    return train, evaluation


def check_sweep_config(cfg: Config, out_dir: Path) -> None:
    """Refuse when ``out_dir/sweep.yaml`` was written with a config that shapes runs differently
    (finished runs would not be comparable). Grid, paths and worker counts may change."""
    path = Path(out_dir) / "sweep.yaml"
    if not path.exists():
        return
    try:
        old = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return
    # an older sweep.yaml holds the salt in clear: compared redacted, like the current dump
    old = redact_config(old) if isinstance(old, dict) else {}
    changed = [
        k for k in diff_configs(old, config_to_dict(cfg)) if not k.startswith(sweep_mutable_keys())
    ]
    if changed:
        raise UserError(
            f"sweep dir {out_dir} holds runs made with another config (changed: {', '.join(changed)})",
            fix=f"re-run with the config in {path} (only the grid may change), or use another --out",
        )
