"""BatchNorm with statistics over the global batch of a DDP run, on any device.

``torch.nn.SyncBatchNorm`` does this on GPUs only: DDP refuses it for CPU modules ("SyncBatchNorm
layers only work with GPU modules", torch 2.14), so a gloo run on CPU (the multi-node tests, a CPU
cluster) needs its own. ``GlobalBatchNorm`` computes, in training mode, the mean and the biased
variance over every process's batch with two differentiable all-reduces (sum and count, then the
sum of squared deviations: the same two-pass arithmetic as a single process, no E[x^2] - E[x]^2
cancellation), so k processes on k slices of a batch normalise exactly as one process on the whole
batch, forward and backward. Running statistics are updated as ``nn.BatchNorm`` does (unbiased
variance over the global count). In eval mode, or outside a process group, it is plain BatchNorm.

``convert_sync_batchnorm(module, device)``: torch's SyncBatchNorm on CUDA, ``GlobalBatchNorm``
elsewhere; parameters and buffers are shared with the original layers (an optimizer built before
stays valid) and the state-dict keys do not change (checkpoints load into a plain model).

``GroupBatchNorm`` (``pretrain.bn_group_size`` G > 0, issue 24): the published pretraining ran
``nn.DataParallel`` on 2 GPUs, so each 392-clip view was normalised in two replicas of 196 clips.
In training mode a backbone call's batch is cut along dim 0 into groups of G clips, each
normalised with its own statistics (ghost BatchNorm). Under DDP (world size W, b clips per
process, equal on every rank as the pretraining loader guarantees) the groups are formed over the
global batch, rank r holding global clips ``r*b .. r*b+b-1``: a group inside one process is
normalised locally (no communication; cuDNN's kernel), a group that spans processes is reduced
over them (two differentiable all-reduces), so 1 process == W processes for any W. The last group
takes the remainder (a remainder of one clip joins the previous group: one clip's statistics are
not a batch). Running statistics: as DataParallel, whose replica on device 0 shares its buffers
with the module, only global group 0 updates them (once per call, so ``num_batches_tracked``
counts calls as before); under DDP rank 0 holds group 0 and DDP's buffer broadcast copies its
buffers to the other ranks at the next forward. The published rule is kept (not the mean over
groups): the running statistics are what fine-tuning and the probe inherit.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce
from torch.nn.modules.batchnorm import _BatchNorm


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of all processes (any dimensionality >= 2)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(x)
        c = x.size(1)
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        local_n = torch.full((1,), x.numel() // c, dtype=xf.dtype, device=x.device)
        first = differentiable_all_reduce(torch.cat([xf.sum(dims), local_n]))
        n = first[c].detach()
        mean = first[:c] / n
        shape = [1, c] + [1] * (x.dim() - 2)
        centred = xf - mean.view(shape)
        var = differentiable_all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class GroupBatchNorm(_BatchNorm):
    """BatchNorm in groups of ``group_size`` clips along the global batch (module docstring)."""

    def __init__(self, *args, group_size: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.group_size = group_size  # an attribute, not a buffer: state-dict keys unchanged

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"

    def _factor(self) -> float:
        """Count this call and return the running-statistics momentum (as ``_BatchNorm``)."""
        if not self.track_running_stats or self.num_batches_tracked is None:
            return 0.0
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training or self.group_size <= 0:
            return super().forward(x)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        n = x.size(0)
        bounds = group_bounds(n * world, self.group_size)
        factor = self._factor()
        if all(s // n == (e - 1) // n for s, e in bounds):  # every group inside one process
            return self._local(x, bounds, rank * n, factor)
        return self._spanning(x, bounds, rank * n, factor)

    def _local(self, x: torch.Tensor, bounds, offset: int, factor: float) -> torch.Tensor:
        out = []
        for s, e in bounds:
            if e <= offset or s >= offset + x.size(0):
                continue
            first = s == 0 and self.track_running_stats  # global group 0 (DataParallel's replica 0)
            rm, rv = (self.running_mean, self.running_var) if first else (None, None)
            part = x[s - offset : e - offset]
            out.append(F.batch_norm(part, rm, rv, self.weight, self.bias, True, factor, self.eps))
        return out[0] if len(out) == 1 else torch.cat(out)

    def _spanning(self, x: torch.Tensor, bounds, offset: int, factor: float) -> torch.Tensor:
        """Groups that cross processes: per-group sums over every process's clips."""
        n, c = x.size(0), x.size(1)
        dims = list(range(2, x.dim()))
        per_clip = x[0, 0].numel()  # values per clip and channel
        starts = torch.tensor([s for s, _ in bounds], device=x.device)
        clips = torch.arange(offset, offset + n, device=x.device)
        gid = torch.bucketize(clips, starts, right=True) - 1  # (n,) clip -> its global group
        count = torch.tensor([(e - s) * per_clip for s, e in bounds], device=x.device)  # (G,)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16/fp16 -> fp32, fp64 stays
        zeros = torch.zeros(len(bounds), c, dtype=xf.dtype, device=x.device)
        sums = zeros.index_add(0, gid, xf.sum(dims) if dims else xf)  # (G, C)
        mean = differentiable_all_reduce(sums) / count[:, None]
        shape = [n, c] + [1] * len(dims)
        centred = xf - mean[gid].view(shape)
        sq = centred * centred
        var = differentiable_all_reduce(zeros.index_add(0, gid, sq.sum(dims) if dims else sq))
        var = var / count[:, None]  # (G, C) biased, as BatchNorm normalises
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                k = float(count[0])
                unbiased = var[0] * (k / max(k - 1, 1))
                self.running_mean.mul_(1 - factor).add_(
                    mean[0].to(self.running_mean.dtype), alpha=factor
                )
                self.running_var.mul_(1 - factor).add_(
                    unbiased.to(self.running_var.dtype), alpha=factor
                )
        y = centred * torch.rsqrt(var[gid] + self.eps).view(shape)
        if self.affine:
            wshape = [1, c] + [1] * len(dims)
            y = y * self.weight.view(wshape) + self.bias.view(wshape)
        return y.to(x.dtype)


def group_bounds(total: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of the BatchNorm groups of ``size`` clips over ``total`` clips; the last
    takes the remainder, and a remainder of one clip joins the previous group."""
    if size <= 0 or size >= total:
        return [(0, total)]
    starts = list(range(0, total, size))
    if total - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, [*starts[1:], total], strict=True))


def _convert(module: nn.Module, make) -> nn.Module:
    """``module`` with every BatchNorm layer replaced by ``make(layer)`` (parameters and buffers
    shared, training flag kept); layers that already are of that class stay."""
    out = module
    if isinstance(module, _BatchNorm):
        new = make(module)
        if new is not None:
            if module.affine:
                with torch.no_grad():
                    new.weight = module.weight
                    new.bias = module.bias
            new.running_mean = module.running_mean
            new.running_var = module.running_var
            new.num_batches_tracked = module.num_batches_tracked
            new.training = module.training
            out = new
    for name, child in module.named_children():
        out.add_module(name, _convert(child, make))
    return out


def _args(bn: _BatchNorm) -> tuple:
    return bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer of ``module`` synchronised over the process group: torch's
    ``SyncBatchNorm`` on CUDA, ``GlobalBatchNorm`` on other devices."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(
        module, lambda bn: None if isinstance(bn, GlobalBatchNorm) else GlobalBatchNorm(*_args(bn))
    )


def convert_group_batchnorm(module: nn.Module, group_size: int) -> nn.Module:
    """Every BatchNorm layer of ``module`` as a ``GroupBatchNorm`` of ``group_size`` clips
    (``pretrain.bn_group_size``); parameters, buffers and state-dict keys unchanged."""
    return _convert(module, lambda bn: GroupBatchNorm(*_args(bn), group_size=group_size))


__all__ = [
    "GlobalBatchNorm",
    "GroupBatchNorm",
    "convert_group_batchnorm",
    "convert_sync_batchnorm",
    "group_bounds",
]
