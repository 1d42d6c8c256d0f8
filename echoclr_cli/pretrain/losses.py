"""The pretraining losses: contrastive (NT-Xent) and frame order (``pretrain/methods.py`` says
which terms a method sums).

``nt_xent`` is the standard SimCLR loss: cosine similarities divided by a temperature, for each
of the 2B anchors a softmax over the 2B-1 other embeddings with the anchor's pair partner as the
target, mean over anchors. With ``gather=True`` under torch.distributed, every rank computes the
loss of its own 2B anchors against all 2*B*world candidates; ``all_gather`` comes from
``torch.distributed.nn`` so gradients flow back to the rank that produced each embedding (its
backward sums the gradient from every rank). The mean of the per-rank losses equals the
1-process loss on the global batch, and DDP's gradient averaging then gives exactly the
1-process gradient - no extra scaling is needed (tested in tests/test_ddp.py).

``nt_xent_chance`` and ``order_chance`` give each loss at chance (what a model that learned
nothing scores): the runs report them beside the losses.

Every loss runs in float32 with autocast disabled (``fp32``): inside the engine's bf16 autocast
the similarity matmul would otherwise run in bf16 whatever the inputs' dtype (the published
scripts trained in fp32; bf16 moved the NT-Xent by ~1e-3 and its gradients by 0.3-1.5%).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def fp32(x: Tensor) -> torch.autocast:
    """Autocast switched off on ``x``'s device: the losses compute in (at least) float32."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_with_grad(x: Tensor) -> Tensor:
    """(B, ...) on each rank -> (world*B, ...) in rank order, differentiable."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def _gather_no_grad(x: Tensor) -> Tensor:
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def nt_xent(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.05,
    gather: bool = False,
    groups: Tensor | None = None,
) -> Tensor:
    """Normalized temperature-scaled cross-entropy (SimCLR), mean over the 2B anchors.

    Args:
        z1, z2: (B, D) embeddings of the two views; row i of z1 and z2 is a positive pair.
        temperature: softmax temperature on cosine similarity (paper: 0.05).
        gather: under torch.distributed, use the embeddings of all ranks as candidates.
        groups: optional (B,) int64 group ids (study ids). Pairs of the same group other than
            the anchor's own pair are removed from the anchor's denominator (not negatives).
            None = every other embedding is a negative (paper behaviour).

    Returns:
        scalar loss (float32 or float64, the dtype of the promoted inputs).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1, z2 must both be (B, D); got {tuple(z1.shape)}, {tuple(z2.shape)}")
    with fp32(z1):
        return _nt_xent(z1, z2, temperature, gather, groups)


def _nt_xent(
    z1: Tensor, z2: Tensor, temperature: float, gather: bool, groups: Tensor | None
) -> Tensor:
    dtype = torch.promote_types(z1.dtype, torch.float32)
    z1 = F.normalize(z1.to(dtype), dim=1)  # (B, D)
    z2 = F.normalize(z2.to(dtype), dim=1)  # (B, D)
    b = z1.shape[0]
    rank, world = _world()
    if gather and world > 1:
        z1_all = _gather_with_grad(z1)  # (N, D), N = world*B
        z2_all = _gather_with_grad(z2)  # (N, D)
        groups_all = _gather_no_grad(groups) if groups is not None else None  # (N,)
        offset = rank * b
    else:
        z1_all, z2_all, groups_all, offset = z1, z2, groups, 0
    anchors = torch.cat([z1, z2], dim=0)  # (2B, D)
    cands = torch.cat([z1_all, z2_all], dim=0)  # (2N, D)
    logits = anchors @ cands.T / temperature  # (2B, 2N)
    drop, pos_idx = _candidate_mask(b, z1_all.shape[0], offset, groups, groups_all, z1.device)
    logits = logits.masked_fill(drop, float("-inf"))  # (2B, 2N)
    return F.cross_entropy(logits, pos_idx)


def _candidate_mask(
    b: int,
    n: int,
    offset: int,
    groups: Tensor | None,
    groups_all: Tensor | None,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Which of the 2N candidates each of the 2B anchors leaves out (itself; with ``groups`` the
    other pairs of its group) as a (2B, 2N) bool mask, and the column of its partner (2B,)."""
    local = torch.arange(b, device=device) + offset  # (B,) global pair index
    self_idx = torch.cat([local, local + n])  # (2B,) column of each anchor itself
    pos_idx = torch.cat([local + n, local])  # (2B,) column of its partner
    cols = torch.arange(2 * n, device=device)  # (2N,)
    drop = cols[None, :] == self_idx[:, None]  # (2B, 2N)
    if groups is not None and groups_all is not None:
        g_anchor = torch.cat([groups, groups]).to(device)  # (2B,)
        g_cand = torch.cat([groups_all, groups_all]).to(device)  # (2N,)
        same = g_anchor[:, None] == g_cand[None, :]  # (2B, 2N)
        drop = drop | (same & (cols[None, :] != pos_idx[:, None]))
    return drop, pos_idx


def nt_xent_chance(
    b: int, gather: bool = False, groups: Tensor | None = None, device: torch.device | None = None
) -> Tensor:
    """The NT-Xent of embeddings that carry no information (every candidate equally similar):
    the mean over the 2B anchors of ln(its candidates). Without ``groups`` that is ln(2N - 1),
    N the pairs over all processes (``gather``) or this process's ``b``; with ``groups`` each
    anchor counts the candidates ``nt_xent`` keeps for it. float64 scalar.
    """
    rank, world = _world()
    if gather and world > 1:
        n, offset = b * world, rank * b
        groups_all = _gather_no_grad(groups) if groups is not None else None
    else:
        n, offset, groups_all = b, 0, groups
    dev = device if device is not None else (groups.device if groups is not None else None)
    drop, _ = _candidate_mask(b, n, offset, groups, groups_all, dev or torch.device("cpu"))
    return (~drop).sum(dim=1).double().log().mean()


def order_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Frame-order classification loss: cross-entropy, mean over clips.

    Args:
        logits: (N, K!) reordering-head outputs.
        target: (N,) int64 permutation indices (index in ``itertools.permutations(range(K))``).
    """
    with fp32(logits):
        return F.cross_entropy(logits.float(), target)


def order_chance(classes: int) -> tuple[float, float]:
    """(cross-entropy, accuracy) of a head that knows nothing about ``classes`` orders:
    ln(classes) and 1/classes (K = 4 frames: ln 24 = 3.178, 1/24 = 0.042)."""
    return math.log(classes), 1.0 / classes


def order_accuracy(logits: Tensor, target: Tensor) -> Tensor:
    """Share of clips whose permutation is predicted exactly. logits (N, K!), target (N,)."""
    return (logits.argmax(dim=1) == target).float().mean()
