"""The one training core shared by pretraining and fine-tuning.

A *task* turns a batch into a loss; the engine does everything else: device and precision,
DDP (when launched by torchrun), the step loop, non-finite checks, history.csv, atomic
checkpoints, best-checkpoint tracking, early stopping, SIGTERM (checkpoint, exit 143) and exact
resume.

Exact resume: all randomness is either derived from ``(seed, epoch, index)`` (datasets and
samplers) or held in state that the checkpoint stores (model, optimizer, scheduler, AMP scaler,
torch/CUDA/numpy/python RNGs, the device augmentation generator, the partial-epoch sums). A run
resumed from an epoch boundary on CPU therefore ends with bitwise the same weights as an
uninterrupted one; a run resumed mid-epoch (after SIGTERM) skips the batches it already did.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from echoclr_cli import __version__
from echoclr_cli.config import Config, config_to_dict, diff_configs, save_config
from echoclr_cli.errors import Preempted, UserError
from echoclr_cli.io import atomic_write, atomic_write_csv

# Config keys that may change between a run and its resume.
RESUMABLE_CHANGES = (
    "runtime.workers",
    "runtime.device",
    "runtime.threads",
    "runtime.compile",
    "paths.",
    "profile",
)
TIMING_COLUMNS = ("seconds", "clips_per_s")


class Task(Protocol):
    model: nn.Module

    def train_step(self, batch: Any, engine: Engine) -> dict[str, torch.Tensor]: ...

    def end_of_epoch(self, epoch: int, engine: Engine) -> dict[str, float]: ...


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches done in the current (incomplete) epoch
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    nonfinite: int = 0
    sums: dict[str, float] = field(default_factory=dict)  # partial-epoch sums
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FitResult:
    run_dir: Path
    epochs_run: int
    steps: int
    best_epoch: int | None
    best_metric: float | None
    stopped_early: bool
    history: pd.DataFrame


# --------------------------------------------------------------------------- setup helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (1 process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available() and not os.environ.get("ECHOCLR_FORCE_CPU"):
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"--device {spec} requested but CUDA is not available", fix="use --device cpu or auto"
        )
    return torch.device(spec)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for plain fp32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to touch an existing run unless asked. Never deletes the directory itself."""
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    if resume:
        if not last.exists():
            raise UserError(
                f"--resume: no checkpoint at {last}",
                fix="start a new run without --resume, or point --out at the run to resume",
            )
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise UserError(
                f"run dir {run_dir} already exists and is not empty",
                fix="use --resume to continue it, --overwrite to replace its outputs, or another --out",
            )
        # --overwrite: remove only the outputs we write, never user files or the directory.
        for name in ("history.csv", "metrics.json", "config.yaml", "init.json"):
            (run_dir / name).unlink(missing_ok=True)
        ck = run_dir / "checkpoints"
        if ck.is_dir():
            for p in ck.glob("*.pt"):
                p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def tensors_finite(module: nn.Module) -> bool:
    return all(
        torch.isfinite(t).all().item()
        for t in module.state_dict().values()
        if t.is_floating_point()
    )


# --------------------------------------------------------------------------- engine
class Engine:
    """Device, precision, distributed setup and the training loop for one run dir.

    Construct it *before* building the model: it seeds every RNG from ``runtime.seed``.
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        section: str,
        resume: bool = False,
        overwrite: bool = False,
        progress: Callable[[dict], None] | None = None,
        data_fingerprint: str | None = None,
        force: bool = False,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.section = section
        self.resume = resume
        self.progress = progress
        self.data_fingerprint = data_fingerprint
        self.force = force
        self.rank, self.world_size, self.local_rank = dist_env()
        self.is_main = self.rank == 0
        self.device = resolve_device(cfg.runtime.device, self.local_rank)
        if self.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend)
        self.distributed = self.world_size > 1
        self.amp_dtype = resolve_dtype(cfg.runtime.precision, self.device)
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = (
                cfg.runtime.cudnn_benchmark and not cfg.runtime.deterministic
            )
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if cfg.runtime.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.runtime.seed)
        # Device-side augmentation randomness; per-rank stream, checkpointed.
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.runtime.seed * 1000 + self.rank + 1)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.state = TrainState()
        self._sigterm = False
        self._pending_rng: dict | None = None
        if self.is_main:
            prepare_run_dir(self.run_dir, resume, overwrite)
            if resume:
                self._check_resume_config()
            save_config(cfg, self.run_dir / "config.yaml")
        self.barrier()

    # ----------------------------------------------------------------- small utilities
    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move to device, channels_last_3d on CUDA, optional compile, DDP wrap."""
        model = model.to(self.device)
        if self.device.type == "cuda" and self.cfg.runtime.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.cfg.runtime.compile:
            model = torch.compile(model)
        return model

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Batch tensor to the training device (non-blocking from pinned memory)."""
        return x.to(self.device, non_blocking=True)

    def all_reduce_sum(self, values: dict[str, float]) -> dict[str, float]:
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist(), strict=True))

    # ----------------------------------------------------------------- resume checks
    def _check_resume_config(self) -> None:
        path = self.run_dir / "config.yaml"
        if not path.exists():
            return
        import yaml

        old = yaml.safe_load(path.read_text()) or {}
        new = config_to_dict(self.cfg)
        changed = [
            k
            for k in diff_configs(old, new)
            if not k.startswith(RESUMABLE_CHANGES) and k != f"{self.section}.epochs"
        ]
        # Only sections that shape this run matter.
        relevant = ("runtime.", "model.", f"{self.section}.", "evaluate.")
        changed = [k for k in changed if k.startswith(relevant)]
        if changed and not self.force:
            raise UserError(
                f"--resume: config of {self.run_dir} changed in: {', '.join(changed)}",
                fix="resume with the original config (only --epochs may grow), or start a new run",
            )

    # ----------------------------------------------------------------- checkpoints
    def checkpoint_dict(self, model: nn.Module, optimizer, scheduler) -> dict:
        s = self.state
        return {
            "format": "echoclr-checkpoint",
            "version": __version__,
            "section": self.section,
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "epoch": s.epoch,
            "step": s.step,
            "batch_in_epoch": s.batch_in_epoch,
            "best_metric": s.best_metric,
            "best_epoch": s.best_epoch,
            "bad_epochs": s.bad_epochs,
            "nonfinite": s.nonfinite,
            "sums": dict(s.sums),
            "history": list(s.history),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "generator": self.generator.get_state(),
            },
            "config": config_to_dict(self.cfg),
            "data_fingerprint": self.data_fingerprint,
            "world_size": self.world_size,
        }

    def save(self, name: str, model: nn.Module, optimizer, scheduler) -> Path | None:
        """Atomically write checkpoints/<name> (rank 0); refuses non-finite weights."""
        path = self.ckpt_dir / name
        if not self.is_main:
            return None
        if not tensors_finite(unwrap(model)):
            raise UserError(
                f"refusing to write {path}: model holds non-finite values at step {self.state.step}",
                fix="lower the learning rate or check the data; earlier checkpoints are intact",
            )
        obj = self.checkpoint_dict(model, optimizer, scheduler)
        atomic_write(path, lambda f: torch.save(obj, f))
        return path

    def load_resume(self, model: nn.Module, optimizer, scheduler) -> None:
        path = self.ckpt_dir / "last.pt"
        ck = load_checkpoint(path, map_location=self.device)
        if (
            self.data_fingerprint
            and ck.get("data_fingerprint")
            and ck["data_fingerprint"] != self.data_fingerprint
            and not self.force
        ):
            raise UserError(
                f"--resume: the dataset changed since {path} was written (manifest differs)",
                fix="resume on the original dataset, or start a new run",
            )
        unwrap(model).load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scheduler is not None and ck.get("scheduler") is not None:
            scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        # Mid-epoch: the RNGs are restored after the epoch's loader iterator is created
        # (creating it draws from the global torch RNG), exactly where they were saved.
        self._pending_rng = ck["rng"]
        if not ck["batch_in_epoch"]:
            self._restore_rng()
        self.state = TrainState(
            epoch=ck["epoch"],
            step=ck["step"],
            batch_in_epoch=ck["batch_in_epoch"],
            best_metric=ck["best_metric"],
            best_epoch=ck["best_epoch"],
            bad_epochs=ck["bad_epochs"],
            nonfinite=ck.get("nonfinite", 0),
            sums=dict(ck.get("sums", {})),
            history=list(ck["history"]),
        )

    def _restore_rng(self) -> None:
        rng, self._pending_rng = self._pending_rng, None
        if rng is None:
            return
        torch.set_rng_state(rng["torch"].cpu())
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in rng["cuda"]])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.generator.set_state(rng["generator"].cpu())

    # ----------------------------------------------------------------- signals
    def _on_sigterm(self, signum, frame) -> None:  # noqa: ARG002
        self._sigterm = True

    @contextlib.contextmanager
    def _signals(self):
        try:
            old = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, old)

    # ----------------------------------------------------------------- the loop
    def fit(
        self,
        task: Task,
        train_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        epochs: int = 1,
        sampler: Any = None,
        checkpoint_every: int = 20,
        monitor: str | None = None,
        monitor_mode: str = "min",
        patience: int = 0,
        nonfinite_tolerance: int = 0,
        max_steps_per_epoch: int | None = None,
    ) -> FitResult:
        """Train ``task`` for ``epochs`` epochs (or until early stopping)."""
        model = task.model
        if self.resume:
            self.load_resume(model, optimizer, scheduler)
        s = self.state
        stopped_early = bool(patience and s.bad_epochs >= patience)
        steps_per_epoch = _len_or_none(train_loader)
        if max_steps_per_epoch and steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
        if steps_per_epoch == 0:
            raise UserError(
                "the training loader yields zero batches per epoch",
                fix="lower --batch-size below the number of training samples",
            )
        with self._signals():
            while s.epoch < epochs and not stopped_early:
                epoch = s.epoch
                if sampler is not None:
                    sampler.set_epoch(epoch)
                    if s.batch_in_epoch and hasattr(sampler, "skip"):
                        sampler.skip(s.batch_in_epoch)
                model.train()
                t0 = time.perf_counter()
                n_clips_epoch = 0
                batch_idx = s.batch_in_epoch
                batches = iter(train_loader)
                self._restore_rng()
                for batch in batches:
                    if max_steps_per_epoch and batch_idx >= max_steps_per_epoch:
                        break
                    n_clips_epoch += self._train_one(task, batch, optimizer, nonfinite_tolerance)
                    batch_idx += 1
                    s.batch_in_epoch = batch_idx
                    self._emit(
                        kind="step",
                        epoch=epoch + 1,
                        epochs=epochs,
                        batch=batch_idx,
                        batches=steps_per_epoch,
                        loss=s.sums.get("loss", 0.0) / max(s.sums.get("_count", 1), 1),
                    )
                    if self._sigterm:
                        self.save("last.pt", model, optimizer, scheduler)
                        self.barrier()
                        raise Preempted(f"SIGTERM at epoch {epoch + 1} batch {batch_idx}")
                if batch_idx == 0:
                    raise UserError(
                        f"epoch {epoch + 1} ran zero training steps",
                        fix="check the dataset size against --batch-size",
                    )
                seconds = time.perf_counter() - t0
                if scheduler is not None:
                    scheduler.step()
                row = self._epoch_row(epoch, seconds, n_clips_epoch, optimizer)
                model.eval()
                extra = task.end_of_epoch(epoch, self) or {}
                row.update({k: _to_float(v) for k, v in extra.items()})
                s.history.append(row)
                s.epoch = epoch + 1
                s.batch_in_epoch = 0
                s.sums = {}
                improved = self._update_monitor(row, monitor, monitor_mode)
                if improved:
                    self.save("best.pt", model, optimizer, scheduler)
                elif patience and monitor:
                    s.bad_epochs += 1
                    stopped_early = s.bad_epochs >= patience
                if self.is_main:
                    atomic_write_csv(self.run_dir / "history.csv", pd.DataFrame(s.history))
                    if self.cfg.runtime.tensorboard:  # a view regenerated from history.csv
                        from echoclr_cli.tb import write_history

                        write_history(self.run_dir)
                self.save("last.pt", model, optimizer, scheduler)
                if checkpoint_every and s.epoch % checkpoint_every == 0:
                    self.save(f"epoch_{s.epoch}.pt", model, optimizer, scheduler)
                self._emit(kind="epoch", epoch=s.epoch, epochs=epochs, row=row)
                self.barrier()
                if self._sigterm:
                    raise Preempted(f"SIGTERM after epoch {s.epoch}")
        return FitResult(
            run_dir=self.run_dir,
            epochs_run=s.epoch,
            steps=s.step,
            best_epoch=s.best_epoch,
            best_metric=s.best_metric,
            stopped_early=stopped_early,
            history=pd.DataFrame(s.history),
        )

    def _train_one(self, task: Task, batch: Any, optimizer, tolerance: int) -> int:
        s = self.state
        with self.autocast():
            out = task.train_step(batch, self)
        loss = out["loss"]
        optimizer.zero_grad(set_to_none=True)
        if not bool(torch.isfinite(loss.detach()).item()):
            s.nonfinite += 1
            if s.nonfinite > tolerance:
                raise UserError(
                    f"non-finite loss ({loss.item()}) at epoch {s.epoch + 1}, step {s.step + 1} "
                    f"(batch {s.batch_in_epoch + 1}); checkpoints on disk hold finite weights",
                    fix="lower the learning rate, check the data, or raise nonfinite_tolerance",
                )
            return 0
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
        s.step += 1
        n = int(out.get("n_clips", 0))
        for k, v in out.items():
            if k == "n_clips":
                continue
            s.sums[k] = s.sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
        s.sums["_count"] = s.sums.get("_count", 0.0) + 1
        s.sums["_clips"] = s.sums.get("_clips", 0.0) + n
        return n

    def _epoch_row(self, epoch: int, seconds: float, n_clips: int, optimizer) -> dict[str, Any]:
        sums = self.all_reduce_sum(dict(self.state.sums))
        count = max(sums.pop("_count", 1.0), 1.0)
        clips = sums.pop("_clips", float(n_clips))
        row: dict[str, Any] = {"epoch": epoch + 1, "step": self.state.step}
        for k, v in sums.items():
            row[k] = v / count
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["clips_per_s"] = clips / seconds if seconds > 0 else float("nan")
        row["seconds"] = seconds
        return row

    def _update_monitor(self, row: dict, monitor: str | None, mode: str) -> bool:
        if not monitor:
            return False
        if monitor not in row:
            raise UserError(f"monitor '{monitor}' is not in the epoch metrics {sorted(row)}")
        value = row[monitor]
        if value is None or not math.isfinite(value):
            return False  # e.g. one-class validation AUROC: never selected
        s = self.state
        better = s.best_metric is None or (
            value < s.best_metric if mode == "min" else value > s.best_metric
        )
        if better:
            s.best_metric = float(value)
            s.best_epoch = row["epoch"]
            s.bad_epochs = 0
        return better

    def _emit(self, **event: Any) -> None:
        if self.progress is not None and self.is_main:
            self.progress(event)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


# --------------------------------------------------------------------------- loading
def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """Load one of our checkpoints, with a clear error for missing or partial files."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}", fix="check the run dir / path")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated, corrupted or not a torch file
        raise UserError(
            f"cannot read checkpoint {path} ({type(e).__name__}: {e})",
            fix="use another checkpoint of the run (checkpoints/epoch_*.pt) or retrain",
        ) from None
    if not isinstance(ck, dict) or "model" not in ck:
        raise UserError(
            f"{path} is not an echoclr checkpoint", fix="pass a run dir or a .pt written by echoclr"
        )
    return ck


def _len_or_none(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _to_float(v: Any) -> float:
    if torch.is_tensor(v):
        return float(v.detach().cpu())
    return float(v) if v is not None else float("nan")


def history_without_timing(df: pd.DataFrame) -> pd.DataFrame:
    """History columns that must be identical between a resumed and an uninterrupted run."""
    return df.drop(columns=[c for c in TIMING_COLUMNS if c in df.columns])
