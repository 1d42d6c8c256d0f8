"""Optimizer and per-epoch learning-rate schedule from an ``OptimConfig`` (pretrain and finetune).

The engine steps the scheduler once per epoch, so schedules are functions of the epoch index:
``lr(e) = learning_rate * factor(e)`` for the epoch ``e`` (0-based) about to run.

- warmup (``warmup_epochs = w > 0``): ``factor = (e + 1) / w`` for ``e < w``;
- ``none``: 1 after warmup (the paper: constant Adam lr);
- ``cosine``: ``0.5 * (1 + cos(pi * (e - w) / (epochs - w)))`` after warmup;
- ``step``: x0.1 at 50% and again at 75% of the epochs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from echoclr_cli.config.schema import OptimConfig


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam (paper), AdamW or SGD with momentum, at ``cfg.learning_rate``."""
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params, lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def lr_factor(epoch: int, epochs: int, schedule: str, warmup_epochs: int) -> float:
    """Multiplier of the base learning rate for 0-based ``epoch`` of ``epochs``."""
    w = min(warmup_epochs, epochs)
    if epoch < w:
        return (epoch + 1) / w
    if schedule == "cosine":
        span = max(epochs - w, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch - w, span) / span))
    if schedule == "step":
        return 0.1 ** sum(epoch >= m for m in (math.ceil(0.5 * epochs), math.ceil(0.75 * epochs)))
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """Per-epoch LambdaLR, or None for a constant learning rate without warmup."""
    if cfg.schedule == "none" and cfg.warmup_epochs == 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, epochs, cfg.schedule, cfg.warmup_epochs)
    )
