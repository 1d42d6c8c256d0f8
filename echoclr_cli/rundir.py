"""Run directories in one place: file names, which checkpoint a run is used with, its config.

Every module that reads or writes a run dir (pretrain, finetune, evaluate, predict, weights, sweep,
demo) takes its file names and rules from here, so a layout change is one edit. The layout of a
run dir (``docs/ARCHITECTURE.md``, "Run dir")::

    RUN/config.yaml                       resolved config (the engine writes it)
    RUN/history.csv                       one row per epoch
    RUN/checkpoints/{last,best,epoch_N}.pt
    RUN/init.json, train_studies.csv, finetune.json          (fine-tune)
    RUN/metrics.json, predictions_{split}_{level}.csv, plots/ (fine-tune: its own result file;
                                                              the sweep reads it; never rewritten
                                                              by `echoclr evaluate`)
    RUN/eval/<name>/                      one folder per `echoclr evaluate` (eval.json,
                                          metrics.json, predictions, plots, comparison.json)

Sections: layout (names), checkpoints, config and facts, dataset fingerprint, default run names
and reading a run's progress (demo and sweep).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import pandas as pd
import yaml

from echoclr_cli.errors import UserError
from echoclr_cli.pretrain.methods import DEFAULT_METHOD, METHODS

if TYPE_CHECKING:
    from echoclr_cli.config.schema import Config


class RunStart(TypedDict, total=False):
    """How a training run starts on its run dir (``--resume`` / ``--overwrite`` / ``--force``):
    what ``run_pretrain`` and ``run_finetune`` take as keywords and hand to the engine."""

    resume: bool  # continue from checkpoints/last.pt
    overwrite: bool  # start again in a finished or non-empty run dir (never deletes it)
    force: bool  # resume although the dataset changed since the run started


# --------------------------------------------------------------------------- layout (names)
CONFIG = "config.yaml"
HISTORY = "history.csv"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
INIT = "init.json"
TRAIN_STUDIES = "train_studies.csv"
FINETUNE_FACTS = "finetune.json"
METRICS = "metrics.json"
COMPARISON = "comparison.json"
PLOTS = "plots"
EVAL = "eval"  # RUN/eval/<name>/: the outputs of `echoclr evaluate`
EVAL_INFO = "eval.json"  # what an eval folder holds (and the mark that it is one)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def last_checkpoint(run_dir: Path) -> Path:
    """``checkpoints/last.pt`` (written every epoch; resume starts from it)."""
    return checkpoint_dir(run_dir) / LAST


def best_checkpoint(run_dir: Path) -> Path:
    """``checkpoints/best.pt`` (written when the monitored metric improves; fine-tune)."""
    return checkpoint_dir(run_dir) / BEST


def epoch_checkpoint(run_dir: Path, epoch: int) -> Path:
    """``checkpoints/epoch_N.pt`` (kept every ``checkpoint_every`` epochs)."""
    return checkpoint_dir(run_dir) / f"epoch_{epoch}.pt"


def predictions_csv(out_dir: Path, split: str, level: str) -> Path:
    """``predictions_{split}_{level}.csv`` (level: video | study)."""
    return Path(out_dir) / f"predictions_{split}_{level}.csv"


def eval_dir(run_dir: Path, name: str) -> Path:
    """``RUN/eval/<name>/``: where ``echoclr evaluate`` writes."""
    return Path(run_dir) / EVAL / name


# --------------------------------------------------------------------------- checkpoints
def find_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a run is used with: ``best.pt`` when it exists, else ``last.pt``, else None.

    A fine-tune run has best.pt (the best validation epoch) unless no epoch had a defined
    monitor; a pretrain run only has last.pt.
    """
    for path in (best_checkpoint(run_dir), last_checkpoint(run_dir)):
        if path.is_file():
            return path
    return None


def run_checkpoint(run_dir: Path) -> Path:
    """:func:`find_checkpoint`, or UserError when the run has neither file."""
    path = find_checkpoint(run_dir)
    if path is None:
        raise UserError(
            f"{run_dir} has no {CHECKPOINTS}/{BEST} or {CHECKPOINTS}/{LAST}",
            fix="train the run first (`echoclr finetune`)",
        )
    return path


# --------------------------------------------------------------------------- config and facts
def read_run_config(run_dir: Path) -> Config:
    """The resolved ``config.yaml`` a run saved (UserError when absent or unreadable)."""
    import yaml
    from pydantic import ValidationError

    from echoclr_cli.config.schema import Config

    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise UserError(
            f"{run_dir} has no {CONFIG}: not an echoclr run dir",
            fix="pass the --out dir of `echoclr finetune` (or `echoclr pretrain`)",
        )
    try:
        return Config.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValidationError) as e:
        raise UserError(
            f"{path} is not a valid echoclr config ({str(e).splitlines()[0]})",
            fix="re-run the training that wrote it",
        ) from None


def read_finetune_facts(run_dir: Path) -> dict[str, Any]:
    """``finetune.json`` of a run (dataset, frame size, subset sizes...); empty when absent."""
    path = Path(run_dir) / FINETUNE_FACTS
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise UserError(
            f"{path} is not valid JSON", fix="re-run the fine-tune that wrote it"
        ) from None
    return data if isinstance(data, dict) else {}


def run_frame_size(run_dir: Path) -> int | None:
    """The frame size a run was trained at: ``finetune.json`` ``frame_size`` (the dataset's),
    else its ``config.yaml`` ``preprocess.size``; None when the dir holds neither."""
    size = read_finetune_facts(run_dir).get("frame_size")
    if size:
        return int(size)
    if not (Path(run_dir) / CONFIG).is_file():
        return None
    return int(read_run_config(run_dir).preprocess.size)


# --------------------------------------------------------------------------- dataset fingerprint
def manifest_fingerprint(data_dir: Path) -> str:
    """sha256 (hex) of a dataset's ``manifest.csv``: checkpoints record it, and a resume on a
    changed dataset is refused."""
    return hashlib.sha256((Path(data_dir) / "manifest.csv").read_bytes()).hexdigest()


def fingerprints_match(recorded: str | None, current: str | None) -> bool:
    """Whether a checkpoint's recorded fingerprint names the current dataset.

    Unknown on either side counts as a match (older checkpoints recorded none). Pretrain runs
    before this module recorded the first 16 hex digits only; a recorded prefix of the current
    hash matches.
    """
    if not recorded or not current:
        return True
    return current == recorded or (len(recorded) < len(current) and current.startswith(recorded))


# --------------------------------------------------------------------------- run names and progress
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
    last = last_checkpoint(run_dir)
    history = run_dir / HISTORY
    done: int | None = 0
    if last.is_file():
        try:
            hist = pd.read_csv(history)
            done = int(hist["epoch"].max()) if "epoch" in hist and len(hist) else 0
        except (OSError, ValueError, pd.errors.EmptyDataError):
            done = None
    planned = None
    try:
        sec = yaml.safe_load((run_dir / CONFIG).read_text())[section]
        if sec.get("epochs") is None and section == "pretrain":  # the method's published count
            sec["epochs"] = METHODS[sec.get("method", DEFAULT_METHOD)].published_epochs
        planned = int(sec["epochs"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        pass
    return RunProgress(done, planned, last.is_file())
