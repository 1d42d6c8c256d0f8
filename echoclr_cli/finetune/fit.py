"""What a fine-tune run (binary ``run.py`` or K-class ``multiclass.py``) does the same way: its
start (``FinetuneRun``, ``preflight``, ``capped_batch_size``); once its model is built, the
Engine, first files (the Task in ``task.json``), optimizer, scheduler and loaders
(``setup_fit``); the engine task's freezing and validation broadcast (``FitTask``); the final
evaluation of every split (``final_evaluation``) and what the run returns (``FinetuneResult``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from echoclr_cli import rundir
from echoclr_cli.config.schema import Config
from echoclr_cli.data.datasets import ClipDataset, EpochSampler
from echoclr_cli.data.manifest import dataset_frame_size
from echoclr_cli.errors import UserError
from echoclr_cli.events import Progress, Status
from echoclr_cli.inference.loader import eval_loader
from echoclr_cli.inference.run import Task, write_task
from echoclr_cli.inference.write import write_evaluation
from echoclr_cli.io import atomic_write_json
from echoclr_cli.models.weights import input_normalization
from echoclr_cli.runtime import dist_env, unwrap
from echoclr_cli.training.engine import Engine
from echoclr_cli.training.optim import build_optimizer, build_scheduler
from echoclr_cli.training.preflight import CheckResult, run_check


@dataclass(frozen=True)
class FinetuneRun:
    """What ``run_finetune`` is asked to do, passed on as one to the task's run and its set-up."""

    data_dir: Path
    out_dir: Path
    resume: bool = False
    overwrite: bool = False
    force: bool = False
    progress: Progress | None = None


def preflight(
    cfg: Config, run: FinetuneRun, task: str | None
) -> tuple[int, CheckResult, list[str]]:
    """The start of every fine-tune run: lp-ft is refused with several processes, then the
    preflight (the same as ``echoclr check --for finetune``; ``task`` = the binary label column to
    check, None for a categorical one). Returns (world size, the passed check with its
    ``manifest``, the run's first notes: the check's warnings)."""
    _, world_size, _ = dist_env()
    if cfg.finetune.mode == "lp-ft" and world_size > 1:
        raise UserError(
            "finetune.mode lp-ft is not supported with several processes (the backbone's "
            "gradients switch on mid-run, which DDP's fixed buckets do not allow)",
            fix="run lp-ft on one GPU, or use mode full / linear",
        )
    check = run_check(cfg, run.data_dir, task=task, section="finetune", world_size=world_size)
    check.raise_if_failed()
    notes = [f"{f.what}: {f.detail}" for f in check.findings if f.level == "warn"]
    return world_size, check, notes


def capped_batch_size(asked: int, n_videos: int, world_size: int, notes: list[str]) -> int:
    """``min(asked, training videos per process)``, noted when capped; refused below one."""
    per_rank = n_videos // world_size
    batch_size = min(asked, per_rank)
    if batch_size < 1:
        raise UserError(
            f"{n_videos} training videos cannot be shared by {world_size} processes",
            fix="use fewer processes or a larger --frac",
        )
    if batch_size < asked:
        notes.append(
            f"batch size capped at the {per_rank} training videos per process (asked {asked})"
        )
    return batch_size


@dataclass
class FitSetup:
    """What ``setup_fit`` builds for a fine-tune run (binary or K-class)."""

    engine: Engine
    prepared: nn.Module
    init: dict[str, Any]
    normalization: Any
    optimizer: Any
    scheduler: Any
    sampler: EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader


def setup_fit(
    cfg: Config,
    task: Task,
    model: nn.Module,
    init: dict[str, Any] | None,
    run: FinetuneRun,
    *,
    df: pd.DataFrame,
    sub_df: pd.DataFrame,
    batch_size: int,
    world_size: int,
    drop_last: bool,
    write_main: Callable[[], None],
) -> FitSetup:
    """The set-up every fine-tune run shares once its model is built: the Engine (run dir),
    rank 0's first files (``write_main``, the task's record ``task.json``, then init.json; on
    resume init.json is read back), the frozen backbone of mode linear, optimizer, scheduler,
    train and val loaders."""
    ft = cfg.finetune
    data_dir, out_dir = run.data_dir, run.out_dir
    engine = Engine(
        cfg,
        out_dir,
        section="finetune",
        resume=run.resume,
        overwrite=run.overwrite,
        progress=run.progress,
        data_fingerprint=rundir.manifest_fingerprint(data_dir),
        force=run.force,
    )
    if engine.is_main:
        write_main()
        write_task(out_dir, task)
        if init is not None:
            atomic_write_json(out_dir / rundir.INIT, init)
    if init is None:  # resume: the weights come from last.pt; init.json says where they started
        path = out_dir / rundir.INIT
        init = json.loads(path.read_text()) if path.exists() else {}
    normalization = input_normalization(cfg)
    if ft.mode == "linear":
        for p in model.backbone.parameters():
            p.requires_grad_(False)  # before DDP: frozen parameters stay out of its buckets
    prepared = engine.prepare(model)
    optimizer = build_optimizer(unwrap(prepared).parameters(), ft.optim)
    scheduler = build_scheduler(optimizer, ft.optim, ft.epochs)

    train_set = ClipDataset(
        sub_df,
        data_dir,
        task.column,
        clip_len=ft.clip_len,
        stride=ft.stride,
        train=True,
        seed=cfg.runtime.seed,
    )
    sampler = EpochSampler(
        len(train_set),
        shuffle=True,
        seed=cfg.runtime.seed,
        rank=engine.rank,
        world_size=world_size,
        drop_last=drop_last,
        batch_size=batch_size,
    )
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=cfg.runtime.workers,
        pin_memory=engine.device.type == "cuda",
        persistent_workers=cfg.runtime.workers > 0,
    )
    val_loader = eval_loader(
        df[df["split"] == "val"], data_dir, task.column, cfg, ft.clip_len, ft.stride, ft.val_clips,
        persistent=True,
    )  # fmt: skip
    return FitSetup(engine, prepared, init, normalization, optimizer, scheduler, sampler,
                    train_loader, val_loader)  # fmt: skip


# --------------------------------------------------------------------------- the engine task
class FitTask:
    """What both fine-tune engine tasks do alike: freeze the backbone (``linear``; ``lp-ft``
    during its first ``lp_epochs`` epochs) and validate on rank 0 at the end of every epoch
    (``_validate``, the task's own), broadcast to every rank. ``train_step`` is the task's own."""

    def __init__(
        self,
        model: nn.Module,
        cfg: Config,
        val_loader: DataLoader,
        normalization: tuple[tuple[float, ...], tuple[float, ...]] | None,
    ):
        self.model = model  # prepared (device, maybe DDP); the engine unwraps it to checkpoint
        self.cfg = cfg
        self.val_loader = val_loader
        self.normalization = normalization
        self.mode = cfg.finetune.mode
        self.lp_epochs = cfg.finetune.lp_epochs if self.mode == "lp-ft" else 0

    def backbone_frozen(self, epoch: int) -> bool:
        """Linear probe: always; LP-FT: during the first ``lp_epochs`` epochs."""
        return self.mode == "linear" or epoch < self.lp_epochs

    def _set_frozen(self, frozen: bool) -> None:
        backbone = unwrap(self.model).backbone
        for p in backbone.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            backbone.eval()  # BatchNorm statistics stay those of the init

    def train_step(self, batch: dict[str, Any], engine: Engine) -> dict[str, Tensor]:
        raise NotImplementedError

    def _validate(self, engine: Engine) -> dict[str, float]:
        raise NotImplementedError

    def end_of_epoch(self, epoch: int, engine: Engine) -> dict[str, float]:
        """Validation metrics for history.csv and the monitor (computed on rank 0)."""
        if self.lp_epochs and epoch <= self.lp_epochs:
            # Patience counts fine-tuning epochs only: the counter is cleared up to (and including)
            # the first FT epoch's check, before the engine updates it for this epoch.
            engine.state.bad_epochs = 0
        values = self._validate(engine) if engine.is_main else None
        if engine.distributed:
            # Rank 0 validates the weights it checkpoints (other ranks' BatchNorm statistics
            # differ after their own last forward) and every rank gets the same numbers, so the
            # monitor and early stopping agree across processes.
            box = [values]
            torch.distributed.broadcast_object_list(box, src=0)
            values = box[0]
        return values


# --------------------------------------------------------------------------- the end of a run
def final_evaluation(
    cfg: Config,
    task: Task,
    model: nn.Module,
    df: pd.DataFrame,
    run: FinetuneRun,
    splits: list[str],
    engine: Engine,
    normalization: Any,
    val_loader: DataLoader | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """The run's own evaluation (rank 0): the best weights ``model`` on every split
    (``val_loader``: reused for val), written into the run dir as ``echoclr evaluate`` writes
    its folder. Returns ``(metrics, paths written)``."""
    ft = cfg.finetune
    video_by_split = {}
    for split in splits:
        if run.progress is not None:
            run.progress(Status(f"evaluating {split}"))
        loader = (
            val_loader
            if split == "val" and val_loader is not None
            else eval_loader(
                df[df["split"] == split], run.data_dir, task.column, cfg, ft.clip_len, ft.stride
            )
        )
        video_by_split[split] = task.predict(model, loader, engine.device,
                                             cfg.evaluate.block_size, normalization,
                                             autocast=engine.autocast)  # fmt: skip
    history = run.out_dir / rundir.HISTORY
    metrics, _, files = write_evaluation(
        cfg, task, video_by_split, run.out_dir, history, df, run.progress
    )
    return metrics, files


def frame_size(df: pd.DataFrame, data_dir: Path) -> int | None:
    """The dataset's frame size (``dataset.json``, else the manifest's most common height)."""
    size = dataset_frame_size(data_dir)
    if size is not None:
        return size
    return int(df["height"].mode().iloc[0]) if "height" in df.columns and len(df) else None


@dataclass
class FinetuneResult:
    """What a fine-tune run did and wrote."""

    run_dir: Path
    task: str
    metrics: dict[str, Any]
    best_epoch: int | None
    best_metric: float | None
    epochs_run: int
    stopped_early: bool
    n_train_studies: int
    n_train_videos: int
    n_train_positive_studies: int
    fraction_extended: bool
    batch_size: int
    pos_weight: float | None
    init: dict[str, Any]
    splits: list[str]
    checkpoint: Path
    history: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
