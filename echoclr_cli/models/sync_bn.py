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
"""

from __future__ import annotations

import torch
import torch.distributed as dist
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


def _convert(module: nn.Module, cls: type[_BatchNorm]) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, cls):
        out = cls(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert(child, cls))
    return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer of ``module`` synchronised over the process group: torch's
    ``SyncBatchNorm`` on CUDA, ``GlobalBatchNorm`` on other devices."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module, GlobalBatchNorm)


__all__ = ["GlobalBatchNorm", "convert_sync_batchnorm"]
