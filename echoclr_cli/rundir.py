"""Run directories in one place: where runs live and what a run dir says about itself.

(The layout, best-else-last and the manifest fingerprint are the other half of this module.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from echoclr_cli.config import Config


# --- run names and progress ---
def pretrain_root(cfg: Config) -> Path:
    """Where SSL pretrain runs live: ``sweep.pretrain_dir``, else ``<paths.runs>/pretrain``."""
    return Path(cfg.sweep.pretrain_dir or Path(cfg.paths.runs) / "pretrain")


def pretrain_run_dir(cfg: Config, method: str | None = None) -> Path:
    """Default run dir of ``echoclr pretrain``: ``<paths.runs>/pretrain/<method>``."""
    return Path(cfg.paths.runs) / "pretrain" / (method or cfg.pretrain.method)


def finetune_run_dir(cfg: Config) -> Path:
    """Default run dir of ``echoclr finetune``: ``<paths.runs>/finetune/<task>-<init>-<frac>-s<seed>``
    (``<init>`` is random, kinetics or the init path's last part)."""
    ft = cfg.finetune
    init = ft.init if ft.init in ("random", "kinetics") else Path(ft.init).name
    return Path(cfg.paths.runs) / "finetune" / f"{ft.task}-{init}-{ft.frac:g}-s{cfg.runtime.seed}"


def sweep_dir(cfg: Config) -> Path:
    """Default sweep dir: ``<paths.runs>/sweep``."""
    return Path(cfg.paths.runs) / "sweep"


@dataclass(frozen=True)
class RunProgress:
    """How far a training run got, read from its files (no checkpoint is unpickled).

    ``epochs_done``: the last epoch of history.csv when ``checkpoints/last.pt`` exists, 0 without
    last.pt, None when last.pt exists but history.csv is unreadable (the engine writes both after
    every epoch; resume restarts from last.pt).
    ``epochs_planned``: ``<section>.epochs`` of the run's config.yaml (None when unreadable).
    """

    epochs_done: int | None
    epochs_planned: int | None
    has_checkpoint: bool

    @property
    def finished(self) -> bool:
        return (
            self.has_checkpoint
            and self.epochs_done is not None
            and self.epochs_planned is not None
            and self.epochs_done >= self.epochs_planned
        )


def run_progress(run_dir: Path, section: str = "pretrain") -> RunProgress:
    """``RunProgress`` of a pretrain (or fine-tune) run dir."""
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    history = run_dir / "history.csv"
    done: int | None = 0
    if last.is_file():
        try:
            hist = pd.read_csv(history)
            done = int(hist["epoch"].max()) if "epoch" in hist and len(hist) else 0
        except (OSError, ValueError, pd.errors.EmptyDataError):
            done = None
    planned = None
    try:
        planned = int(yaml.safe_load((run_dir / "config.yaml").read_text())[section]["epochs"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        pass
    return RunProgress(done, planned, last.is_file())
