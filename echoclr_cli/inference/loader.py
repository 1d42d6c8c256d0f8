"""Running a classifier over a dataset: evaluation clips -> per-video probabilities.

:func:`eval_loader` builds the evaluation loader and :func:`predict_videos` runs a model over it.
:func:`predict_classes` does the same for a K-class model (softmax-averaged class probabilities).
Used during fine-tuning (validation each epoch, final evaluation), by ``echoclr evaluate``
(``evaluate.py``), ``echoclr predict`` (``predict.py``) and the view filter, through the run's
``Task`` (``run.py``). This module knows nothing about run dirs, checkpoints or metrics.

Evaluation clips per video are ``evaluate.clips_per_video`` clips (paper: 4) placed by
``evaluate.clip_starts`` (``published``: ``arange(0, T-L, (T-L)//4)[:4]``; ``linspace``) or
``"all"`` (non-overlapping clips covering the video, see ``clips.clip_starts``); min-max
scaling is over all clips of a video (``evaluate.scaling=video``, published) or per clip. A
video's range is taken over its whole clip set, so it does not depend on ``block_size``. Whatever the
video length, no forward pass sees more than ``evaluate.block_size`` clips, so activation memory is
bounded by the block size (the uint8 clips of one batch of ``evaluate.batch_size`` videos are held
on the host). A video's probability is the mean of its clips' sigmoids; a study's is the mean of
its videos' (``aggregate.aggregate_levels``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from echoclr_cli.config.schema import Config
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.data.datasets import ClipDataset, collate_clips
from echoclr_cli.errors import UserError
from echoclr_cli.events import EvalBatch, Progress
from echoclr_cli.metrics.multiclass import prob_columns
from echoclr_cli.runtime import cuda_available, loader_len

# clip logits (N,), clip labels (N,) -> per-clip losses (N,)
ClipLoss = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- model over a dataset
def eval_loader(
    df: pd.DataFrame,
    data_dir: Path,
    task: str | None,
    cfg: Config,
    clip_len: int,
    stride: int,
    clips_per_video: int | str | None = None,
    persistent: bool = False,
) -> DataLoader:
    """Evaluation loader: batches of ``evaluate.batch_size`` videos, each with its clips
    (``clips_per_video``, default ``evaluate.clips_per_video``). Pinned memory when the run
    uses CUDA; ``persistent``: the workers stay alive between passes (the per-epoch validation
    loader, which would otherwise re-spawn its workers every epoch)."""
    dataset = ClipDataset(
        df,
        data_dir,
        task,
        clip_len=clip_len,
        stride=stride,
        train=False,
        clips_per_video=clips_per_video or cfg.evaluate.clips_per_video,
        seed=cfg.runtime.seed,
        starts=cfg.evaluate.clip_starts,
        scaling=cfg.evaluate.scaling,
    )
    return DataLoader(
        dataset,
        batch_size=cfg.evaluate.batch_size,
        shuffle=False,
        num_workers=cfg.runtime.workers,
        collate_fn=collate_clips,
        pin_memory=cfg.runtime.device != "cpu" and cuda_available(),
        persistent_workers=persistent and cfg.runtime.workers > 0,
    )


@dataclass
class VideoPredictions:
    """Per-video predictions and (when a loss was given) the mean clip loss."""

    video: pd.DataFrame  # video_id, study_id, patient_id, y_true, y_prob, n_clips
    loss: float | None = None
    n_forwards: int = 0
    max_block: int = 0


@torch.no_grad()
def predict_videos(
    model: nn.Module,
    loader: DataLoader | Sequence[dict[str, Any]],
    device: torch.device,
    block_size: int,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    loss_fn: ClipLoss | None = None,
    autocast: Callable[[], Any] | None = None,
    progress: Progress | None = None,
) -> VideoPredictions:
    """Sigmoid-averaged video probabilities of ``model`` over ``loader`` (collated eval batches).

    Each batch's clips ``x: uint8 (sum N, C, T, H, W)`` run in blocks of at most ``block_size``
    clips: min-max (+ ``normalization``) -> model -> logits ``(n,)``. ``loss_fn`` (per-clip
    losses against the video's label) gives the mean loss over all clips. The model is put in
    eval mode and restored to its previous mode.
    """
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    was_training = model.training
    model.eval()
    mean, std = normalization if normalization is not None else (None, None)
    rows: list[pd.DataFrame] = []
    # one host sync per batch: probabilities and the loss sum stay on the device per block
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    loss_n, n_forwards, max_block = 0, 0, 0
    ctx = autocast or contextlib.nullcontext
    try:
        for b, batch in enumerate(loader):
            x, n_clips = batch["x"], batch["n_clips"]  # (sum N, C, T, H, W) uint8, (B,)
            y_video = batch["y"].float()  # (B,)
            y_clip = torch.repeat_interleave(y_video, n_clips)  # (sum N,)
            blocks: list[Tensor] = []
            for start in range(0, x.shape[0], block_size):
                # (n, C, T, H, W) uint8 with n <= block_size: the only clips on the device
                block = x[start : start + block_size].to(device, non_blocking=True)
                bounds = None if batch.get("bounds") is None else (
                    batch["bounds"][start : start + block_size]  # (n, 2) the video's range
                )  # fmt: skip
                clips = prepare_clips(block, None, None, mean, std, bounds)  # (n, 3, T, H, W)
                with ctx():
                    logits = model(clips).float().reshape(-1)  # (n,)
                n_forwards += 1
                max_block = max(max_block, int(block.shape[0]))
                blocks.append(torch.sigmoid(logits).double())
                if loss_fn is not None:
                    target = y_clip[start : start + len(logits)].to(device)  # (n,)
                    loss_sum += loss_fn(logits, target).double().sum()
                    loss_n += len(logits)
            probs = torch.cat(blocks).cpu() if blocks else torch.empty(0, dtype=torch.float64)
            per_video = torch.split(probs, n_clips.tolist())
            rows.append(
                pd.DataFrame(
                    {
                        "video_id": batch["video_id"],
                        "study_id": batch["study_id"],
                        "patient_id": batch["patient_id"],
                        "y_true": y_video.numpy().astype(np.float64),
                        "y_prob": [float(p.mean()) for p in per_video],
                        "n_clips": n_clips.numpy().astype(np.int64),
                    }
                )
            )
            if progress is not None:
                progress(EvalBatch(batch=b + 1, batches=loader_len(loader)))
    finally:
        model.train(was_training)
    cols = ["video_id", "study_id", "patient_id", "y_true", "y_prob", "n_clips"]
    video = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)
    loss = float(loss_sum) / loss_n if loss_n else None
    return VideoPredictions(video[cols], loss, n_forwards, max_block)


@torch.no_grad()
def predict_classes(
    model: nn.Module,
    loader: DataLoader | Sequence[dict[str, Any]],
    device: torch.device,
    block_size: int,
    classes: Sequence[str],
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    class_weight: Tensor | None = None,
    smoothing: float = 0.0,
    autocast: Callable[[], Any] | None = None,
    progress: Progress | None = None,
    with_loss: bool = False,
) -> tuple[pd.DataFrame, float | None]:
    """Per-video softmax probabilities (mean over the video's clips) of a K-class model.

    Returns ``(frame, mean clip loss or None)``; frame: ``video_id, study_id, patient_id,
    y_true`` (class index; NaN when the loader has no labels), ``prob_<class>`` x K, ``n_clips``.
    Clips run in blocks of at most ``block_size`` (as :func:`predict_videos`).
    """
    was_training = model.training
    model.eval()
    mean, std = normalization if normalization is not None else (None, None)
    ctx = autocast or contextlib.nullcontext
    cols = prob_columns(classes)
    rows: list[pd.DataFrame] = []
    loss_sum, loss_n = 0.0, 0
    try:
        for b, batch in enumerate(loader):
            x, n_clips = batch["x"], batch["n_clips"]  # (sum N, C, T, H, W) uint8, (B,)
            y_video = batch["y"].float()  # (B,) class index
            y_clip = torch.repeat_interleave(y_video, n_clips)  # (sum N,)
            blocks = []
            for start in range(0, x.shape[0], block_size):
                block = x[start : start + block_size].to(device, non_blocking=True)
                clips = prepare_clips(block, None, None, mean, std)  # (n, 3, T, H, W)
                with ctx():
                    logits = model(clips).float()  # (n, K)
                if logits.ndim != 2 or logits.shape[1] != len(classes):
                    raise UserError(
                        f"the view/class model gives outputs of shape {tuple(logits.shape)}, "
                        f"expected (clips, {len(classes)}) for classes {list(classes)}",
                        fix="use the class list the model was trained with",
                    )
                blocks.append(torch.softmax(logits, dim=1).double().cpu())
                if with_loss:
                    target = y_clip[start : start + len(logits)].long().to(device)
                    w = class_weight.to(device) if class_weight is not None else None
                    loss = F.cross_entropy(logits, target, weight=w, label_smoothing=smoothing)
                    loss_sum += float(loss) * len(logits)
                    loss_n += len(logits)
            probs = (
                torch.cat(blocks) if blocks else torch.empty(0, len(classes), dtype=torch.float64)
            )
            per_video = torch.stack([p.mean(0) for p in torch.split(probs, n_clips.tolist())])
            frame = pd.DataFrame(per_video.numpy(), columns=cols)
            frame.insert(0, "video_id", batch["video_id"])
            frame.insert(1, "study_id", batch["study_id"])
            frame.insert(2, "patient_id", batch["patient_id"])
            frame.insert(3, "y_true", y_video.numpy().astype(np.float64))
            frame["n_clips"] = n_clips.numpy().astype(np.int64)
            rows.append(frame)
            if progress is not None:
                progress(EvalBatch(batch=b + 1, batches=loader_len(loader)))
    finally:
        model.train(was_training)
    empty = pd.DataFrame(columns=["video_id", "study_id", "patient_id", "y_true", *cols, "n_clips"])
    video = pd.concat(rows, ignore_index=True) if rows else empty
    return video, (loss_sum / loss_n if loss_n else None)
