"""The set-up a fine-tune run (binary ``finetune`` or K-class ``multiclass_train``) does once its
model is built: Engine, first files, optimizer, scheduler and loaders (``setup_fit``)."""

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
from echoclr_cli.config import Config
from echoclr_cli.data.datasets import ClipDataset, EpochSampler
from echoclr_cli.engine import Engine
from echoclr_cli.events import Progress
from echoclr_cli.inference import eval_loader
from echoclr_cli.io import atomic_write_json
from echoclr_cli.runtime import unwrap
from echoclr_cli.weights import input_normalization


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
    *,
    df: pd.DataFrame,
    sub_df: pd.DataFrame,
    data_dir: Path,
    out_dir: Path,
    batch_size: int,
    world_size: int,
    drop_last: bool,
    resume: bool,
    overwrite: bool,
    force: bool,
    progress: Progress | None,
    write_main: Callable[[], None],
) -> FitSetup:
    """The set-up every fine-tune run shares once its model is built: the Engine (run dir),
    rank 0's first files (``write_main``, then init.json; on resume init.json is read back),
    the frozen backbone of mode linear, optimizer, scheduler, train and val loaders."""
    ft, task = cfg.finetune, cfg.finetune.task
    engine = Engine(
        cfg,
        out_dir,
        section="finetune",
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        data_fingerprint=rundir.manifest_fingerprint(data_dir),
        force=force,
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

    from echoclr_cli.optim import build_optimizer, build_scheduler

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
