"""The fine-tuning loss: weighted, label-smoothed binary cross-entropy on one logit.

Like every loss it runs in float32 with autocast disabled (``pretrain.losses.fp32``): inside the
engine's bf16 autocast it would otherwise be computed in bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from echoclr_cli.errors import UserError
from echoclr_cli.pretrain.losses import fp32


def pos_weight_value(spec: str, n_pos: int, n_neg: int) -> float | None:
    """``finetune.pos_weight`` -> the positive-class weight of the BCE (None = unweighted).

    ``published`` (the paper default) -> ``max(1, n_neg / n_pos)``: the published scripts took
    the balanced class weights and divided by the smaller one, so positives are never weighted
    below negatives; ``balanced`` (ours, an option) -> ``n_neg / n_pos``, below 1 when the
    positives are the majority; ``none`` -> None; a number -> it.
    """
    if spec == "none":
        return None
    if spec in ("balanced", "published"):
        if n_pos == 0:
            raise UserError(
                f"pos_weight {spec} needs at least one positive training video",
                fix="check the labels",
            )
        ratio = n_neg / n_pos
        return max(1.0, ratio) if spec == "published" else ratio
    return float(spec)


def smooth_targets(y: Tensor, smoothing: float) -> Tensor:
    """Label smoothing for one logit: ``y * (1 - s) + s / 2`` (0 -> s/2, 1 -> 1 - s/2)."""
    return y * (1.0 - smoothing) + smoothing / 2.0


def classification_loss(
    logits: Tensor, y: Tensor, pos_weight: float | None, smoothing: float, reduction: str = "mean"
) -> Tensor:
    """Weighted, smoothed BCE with logits. logits, y: (B,) -> scalar (or (B,) with 'none').

    ``-[w * t * log sigmoid(x) + (1 - t) * log(1 - sigmoid(x))]`` with ``t`` the smoothed target
    and ``w`` the positive weight: only positive terms are weighted.
    """
    with fp32(logits):
        target = smooth_targets(y.float(), smoothing)  # (B,)
        pw = (
            torch.tensor(pos_weight, dtype=torch.float32, device=logits.device)
            if pos_weight
            else None
        )
        return F.binary_cross_entropy_with_logits(
            logits.float(), target, pos_weight=pw, reduction=reduction
        )
