"""Where and how tensors run: device, precision, autocast, distributed setup, seeds.

Every decision about the machine is made here, once:

- ``cuda_available()`` is the one CUDA decision of the package; it is the only place that reads
  ``ECHOCLR_FORCE_CPU`` (set: behave as if there were no CUDA; the tests set it);
- ``resolve_device`` / ``resolve_dtype`` turn ``runtime.device`` / ``runtime.precision`` into a
  ``torch.device`` and an autocast dtype (None = plain fp32);
- ``autocast(device, dtype)`` is the one autocast context (training, validation, inference);
- ``dist_env`` / ``init_distributed`` read the torchrun environment and start the process group;
- ``configure_backends`` applies threads, cuDNN / TF32 and determinism settings;
- ``seed_everything``, ``unwrap`` (the plain module under DDP / torch.compile) and ``loader_len``
  (batches of a loader, or None for an iterable without length).

Imports only torch, numpy and ``errors`` (never the config tree: callers pass plain values).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from echoclr_cli.errors import UserError

FORCE_CPU_ENV = "ECHOCLR_FORCE_CPU"


def cuda_available() -> bool:
    """True when runs may use CUDA: a GPU is visible and ``ECHOCLR_FORCE_CPU`` is not set."""
    if os.environ.get(FORCE_CPU_ENV):
        return False
    return torch.cuda.is_available()


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``runtime.device`` (auto | cpu | cuda | cuda:N) -> device; auto = CUDA when available."""
    if spec == "auto":
        return torch.device("cuda", local_rank) if cuda_available() else torch.device("cpu")
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    if spec.startswith("cuda") and not cuda_available():
        raise UserError(
            f"--device {spec} requested but CUDA is not available", fix="use --device cpu or auto"
        )
    return torch.device(spec)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for plain fp32 (``auto`` = bf16 on CUDA, fp32 on CPU)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """The autocast context for ``dtype`` on ``device`` (a no-op context for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def device_and_autocast(
    device_spec: str, precision: str
) -> tuple[torch.device, Callable[[], contextlib.AbstractContextManager]]:
    """Device and a zero-argument autocast factory, for code that runs outside the engine."""
    device = resolve_device(device_spec)
    dtype = resolve_dtype(precision, device)
    return device, lambda: autocast(device, dtype)


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (1 process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def init_distributed(device: torch.device, world_size: int) -> bool:
    """Start the process group for a torchrun launch (nccl on CUDA, gloo on CPU); True if DDP."""
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return world_size > 1


def configure_backends(
    device: torch.device, threads: int | None, cudnn_benchmark: bool, deterministic: bool
) -> None:
    """Thread count, cuDNN autotuning / TF32 on CUDA, deterministic algorithms when asked."""
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def seed_everything(seed: int) -> None:
    """Seed python, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def loader_len(loader: Iterable[Any]) -> int | None:
    """Number of batches of ``loader``, or None when it has no length."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
