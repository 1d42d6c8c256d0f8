"""What a fine-tune run (binary ``finetune`` or K-class ``multiclass_train``) does the same way:
its start (``FinetuneRun``, ``preflight``, ``capped_batch_size``) and, once its model is built,
the Engine, first files, optimizer, scheduler and loaders (``setup_fit``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn
from torch.utils.data import DataLoader

from echoclr_cli import rundir
from echoclr_cli.check import CheckResult, run_check
from echoclr_cli.config.schema import Config
from echoclr_cli.data.datasets import ClipDataset, EpochSampler
from echoclr_cli.errors import UserError
from echoclr_cli.events import Progress
from echoclr_cli.inference.loader import eval_loader
from echoclr_cli.io import atomic_write_json
from echoclr_cli.models.weights import input_normalization
from echoclr_cli.runtime import dist_env, unwrap
from echoclr_cli.training.engine import Engine


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
    rank 0's first files (``write_main``, then init.json; on resume init.json is read back),
    the frozen backbone of mode linear, optimizer, scheduler, train and val loaders."""
    ft, task = cfg.finetune, cfg.finetune.task
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

    from echoclr_cli.training.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(unwrap(prepared).parameters(), ft.optim)
    scheduler = build_scheduler(optimizer, ft.optim, ft.epochs)

    train_set = ClipDataset(
        sub_df,
        data_dir,
        task,
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
        df[df["split"] == "val"], data_dir, task, cfg, ft.clip_len, ft.stride, ft.val_clips,
        persistent=True,
    )  # fmt: skip
    return FitSetup(engine, prepared, init, normalization, optimizer, scheduler, sampler,
                    train_loader, val_loader)  # fmt: skip
