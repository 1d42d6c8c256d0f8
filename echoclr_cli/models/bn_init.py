"""The ``random-bn`` init: random weights whose BatchNorm statistics are re-estimated on echo data.

A control for the SSL inits (issue 24): part of what fine-tuning gains from an SSL init may be
BatchNorm running statistics adapted to echo clips rather than what the contrastive task learned.
``random-bn`` keeps torchvision's random initialisation (the same tensors as ``random`` for the
same ``runtime.seed``) and replaces only the BatchNorm running means and variances:

- the clips: one random clip per video of the pretraining split (``pretrain.split``, the videos
  an SSL init saw), cut and augmented as a fine-tuning batch (``finetune.clip_len``, ``stride``,
  ``augment``, the init's input normalisation), in a seeded order (``runtime.seed``);
- the estimate: train-mode forward passes under ``torch.no_grad`` with every BatchNorm's
  ``momentum = None``, i.e. the running statistics are the cumulative average over the batches
  (each batch weighted equally), starting from reset statistics; at most
  :data:`RANDOM_BN_BATCHES` batches of ``finetune.batch_size`` clips (full batches; a split
  smaller than one batch gives one batch of all its videos);
- nothing else: no optimizer, no gradient, every weight and bias unchanged; each BatchNorm's
  momentum and the module's train/eval mode are restored after.

The numbers (videos, batches, clips) go to ``init.json`` (``bn_estimate``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError

RANDOM_BN = "random-bn"  # the init's name (finetune.init, sweep.inits)
RANDOM_BN_BATCHES = 32  # batches averaged at most (cumulative average, momentum None)
Normalization = tuple[tuple[float, ...], tuple[float, ...]] | None  # input mean/std, or none


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_bn(module: nn.Module, batches: Iterable[Tensor], max_batches: int) -> dict:
    """Replace the BatchNorm running statistics of ``module`` by their cumulative average over
    up to ``max_batches`` of ``batches`` (float inputs on the module's device), in train-mode
    forward passes without gradient. Weights are not touched. Returns ``{"batches", "clips",
    "layers"}``; UserError when there is no batch."""
    bns = batchnorms(module)
    was_training = module.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the forward passes
    module.train()
    n_batches = n_clips = 0
    try:
        for x in batches:
            if n_batches >= max_batches:
                break
            module(x)
            n_batches += 1
            n_clips += int(x.shape[0])
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        module.train(was_training)
    if n_batches == 0:
        raise UserError(
            "random-bn: no clip to estimate the BatchNorm statistics from",
            fix="pretraining split (pretrain.split) has no videos: check the dataset",
        )
    return {"batches": n_batches, "clips": n_clips, "layers": len(bns)}


def pretraining_batches(
    cfg: Config, data_dir: Path, device: torch.device, norm: Normalization = None
) -> tuple[Iterator[Tensor], int, int]:
    """Fine-tuning-style input clips of the pretraining split: ``(batches, videos, batch size)``.

    One random clip per video, in a seeded order, batches of ``finetune.batch_size`` (full ones;
    one batch of all videos when there are fewer), prepared as a training batch (``norm``: the
    init's input mean/std, ``weights.input_normalization``).
    """
    from echoclr_cli.data.augment import prepare_clips
    from echoclr_cli.data.datasets import ClipDataset
    from echoclr_cli.data.manifest import load_manifest

    ft, seed = cfg.finetune, cfg.runtime.seed
    wanted = [s.strip() for s in cfg.pretrain.split.split(",") if s.strip()]
    df = load_manifest(Path(data_dir))
    rows = df[df["split"].isin(wanted)].reset_index(drop=True)
    if rows.empty:
        raise UserError(
            f"random-bn: no videos in the pretraining split(s) {wanted} of {data_dir}",
            fix="set pretrain.split to a split the dataset has, e.g. --set pretrain.split=train",
        )
    ds = ClipDataset(rows, Path(data_dir), None, ft.clip_len, ft.stride, train=True, seed=seed)
    order = np.random.default_rng(seed).permutation(len(ds))
    batch = min(ft.batch_size, len(ds))
    mean, std = norm if norm else (None, None)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    def batches() -> Iterator[Tensor]:
        for i in range(0, len(order) - batch + 1, batch):
            x = torch.stack([ds[int(k)]["x"] for k in order[i : i + batch]]).to(device)
            yield prepare_clips(x, ft.augment, gen, mean, std)

    return batches(), len(ds), batch


def random_bn(
    cfg: Config, backbone: nn.Module, data_dir: Path | None, norm: Normalization = None
) -> dict[str, Any]:
    """Re-estimate the BatchNorm statistics of the (randomly initialised) ``backbone`` in place on
    the pretraining split of ``data_dir``; returns what ``init.json`` records (``bn_estimate``)."""
    from echoclr_cli.runtime import dist_env, resolve_device

    if data_dir is None:
        raise UserError(
            "finetune.init random-bn needs the dataset to estimate BatchNorm statistics on",
            fix="use random-bn with `echoclr finetune` or `echoclr sweep` (which read --data)",
        )
    device = resolve_device(cfg.runtime.device, dist_env()[2])
    home = next(backbone.parameters()).device
    backbone.to(device)
    try:
        batches, n_videos, batch = pretraining_batches(cfg, data_dir, device, norm)
        done = reestimate_bn(backbone, batches, RANDOM_BN_BATCHES)
    finally:
        backbone.to(home)
    return {
        "split": cfg.pretrain.split,
        "videos": n_videos,
        "batch_size": batch,
        "max_batches": RANDOM_BN_BATCHES,
        "momentum": None,
        **done,
    }
