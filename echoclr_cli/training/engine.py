"""The one training core shared by pretraining and fine-tuning.

A *task* turns a batch into a loss; the engine does everything else: device and precision,
DDP (when launched by torchrun), the step loop, non-finite checks, history.csv, atomic
checkpoints, best-checkpoint tracking, early stopping, SIGTERM (checkpoint, exit 143), Ctrl-C
(checkpoint, exit 130) and exact resume. Device, precision and distributed helpers live in
``runtime.py``; the checkpoint dict, safe loading and the resume state in
``models/checkpoint.py``; the signal handling in ``training/interrupts.py``.

Exact resume: all randomness is either derived from ``(seed, epoch, index)`` (datasets and
samplers) or held in state that the checkpoint stores (model, optimizer, scheduler, AMP scaler,
torch/CUDA/numpy/python RNGs, the device augmentation generator, the partial-epoch sums). A run
resumed from an epoch boundary on CPU therefore ends with bitwise the same weights as an
uninterrupted one; a run resumed mid-epoch (after SIGTERM or Ctrl-C) skips the batches it already
did.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from echoclr_cli import rundir, runtime
from echoclr_cli.config.load import config_to_dict, save_config
from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.events import Epoch, Event, Step
from echoclr_cli.io import atomic_write_csv
from echoclr_cli.models.checkpoint import (
    TrainState,
    build_checkpoint,
    capture_rng,
    load_checkpoint,
    prepare_run_dir,
    restore_rng,
    resume_config_changes,
    save_checkpoint,
    state_from_checkpoint,
    tensors_finite,
)
from echoclr_cli.runtime import dist_env, resolve_device, resolve_dtype, seed_everything, unwrap
from echoclr_cli.training.interrupts import StopSignals


class Task(Protocol):
    model: nn.Module

    def train_step(self, batch: Any, engine: Engine) -> dict[str, torch.Tensor]: ...

    def end_of_epoch(self, epoch: int, engine: Engine) -> dict[str, float]: ...


@dataclass
class FitResult:
    run_dir: Path
    epochs_run: int
    steps: int
    best_epoch: int | None
    best_metric: float | None
    stopped_early: bool
    history: pd.DataFrame


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
        rt = cfg.runtime
        self.device = resolve_device(rt.device, self.local_rank)
        self.distributed = runtime.init_distributed(self.device, self.world_size)
        self.amp_dtype = resolve_dtype(rt.precision, self.device)
        runtime.configure_backends(self.device, rt.threads, rt.cudnn_benchmark, rt.deterministic)
        seed_everything(rt.seed)
        # Device-side augmentation randomness; per-rank stream, checkpointed.
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.runtime.seed * 1000 + self.rank + 1)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.state = TrainState()
        self.sync_every = max(1, int(rt.sync_every))
        self._unsynced = 0  # steps since the last host sync (Step events follow the syncs)
        # Host-sync-free steps: per-step (is non-finite, loss, epoch, step, batch) awaiting the
        # next check, and running float64 sums on the device (seeded from state.sums, so the
        # additions are exactly those of per-step host floats).
        self._window: list[tuple[torch.Tensor, torch.Tensor, int, int, int]] = []
        self._dev_sums: dict[str, torch.Tensor] = {}
        # SIGTERM or the first Ctrl-C: finish the step, save last.pt, stop (interrupts.py).
        self.stop = StopSignals()
        self._pending_rng: dict | None = None
        if rt.tensorboard:  # the optional package, before any work
            from echoclr_cli.training import tb

            tb.require()
        if self.is_main:
            prepare_run_dir(self.run_dir, resume, overwrite)
            if resume:
                self._check_resume_config()
            save_config(cfg, self.run_dir / "config.yaml")
        self.barrier()

    # ----------------------------------------------------------------- small utilities
    @property
    def ckpt_dir(self) -> Path:
        return rundir.checkpoint_dir(self.run_dir)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's autocast context (see ``runtime.autocast``)."""
        return runtime.autocast(self.device, self.amp_dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move to device, channels_last_3d on CUDA, optional compile, DDP wrap; with
        ``runtime.sync_bn`` and several processes, BatchNorm over the global batch first."""
        model = model.to(self.device)
        if self.distributed and self.cfg.runtime.sync_bn:
            from echoclr_cli.models.sync_bn import convert_sync_batchnorm

            model = convert_sync_batchnorm(model, self.device)
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
        changed = resume_config_changes(old, config_to_dict(self.cfg), self.section)
        if changed and not self.force:
            raise UserError(
                f"--resume: config of {self.run_dir} changed in: {', '.join(changed)}",
                fix="resume with the original config (only --epochs may grow), or start a new run",
            )

    # ----------------------------------------------------------------- checkpoints
    def checkpoint_dict(self, model: nn.Module, optimizer, scheduler) -> dict:
        return build_checkpoint(
            section=self.section,
            model=unwrap(model),
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=self.scaler,
            state=self.state,
            rng=capture_rng(self.generator),
            config=config_to_dict(self.cfg),
            data_fingerprint=self.data_fingerprint,
            world_size=self.world_size,
        )

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
        self.stop.saving = True
        try:
            save_checkpoint(path, self.checkpoint_dict(model, optimizer, scheduler))
        finally:
            self.stop.saving = False
        if name == rundir.LAST:
            s = self.state
            self.stop.saved_at = (s.epoch + (1 if s.batch_in_epoch else 0), s.step)
        return path

    def load_resume(self, model: nn.Module, optimizer, scheduler) -> None:
        path = self.ckpt_dir / rundir.LAST
        ck = load_checkpoint(path, map_location=self.device)
        if (
            not rundir.fingerprints_match(ck.get("data_fingerprint"), self.data_fingerprint)
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
        self.state = state_from_checkpoint(ck)
        s = self.state
        self.stop.saved_at = (s.epoch + (1 if s.batch_in_epoch else 0), s.step)

    def _restore_rng(self) -> None:
        rng, self._pending_rng = self._pending_rng, None
        if rng is not None:
            restore_rng(rng, self.generator)

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
        steps_per_epoch = runtime.loader_len(train_loader)
        if max_steps_per_epoch and steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
        if steps_per_epoch == 0:
            raise UserError(
                "the training loader yields zero batches per epoch",
                fix="lower --batch-size below the number of training samples",
            )
        with self.stop.installed():
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
                    self._unsynced += 1
                    batch_idx += 1
                    s.batch_in_epoch = batch_idx
                    last = batch_idx == steps_per_epoch
                    stop = self.stop.signal is not None
                    if stop or last or self._unsynced >= self.sync_every:
                        self.sync_steps()  # raises at the first non-finite step of the window
                        self._emit(
                            Step(
                                epoch=epoch + 1,
                                epochs=epochs,
                                batch=batch_idx,
                                batches=steps_per_epoch,
                                loss=s.sums.get("loss", 0.0) / max(s.sums.get("_count", 1), 1),
                            )
                        )
                    if stop:
                        self.save(rundir.LAST, model, optimizer, scheduler)
                        self.barrier()
                        raise self.stop.stop_error(epoch + 1, s)
                if batch_idx == 0:
                    raise UserError(
                        f"epoch {epoch + 1} ran zero training steps",
                        fix="check the dataset size against --batch-size",
                    )
                self.sync_steps()
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
                    self.save(rundir.BEST, model, optimizer, scheduler)
                elif patience and monitor:
                    s.bad_epochs += 1
                    stopped_early = s.bad_epochs >= patience
                if self.is_main:
                    atomic_write_csv(self.run_dir / "history.csv", pd.DataFrame(s.history))
                    if self.cfg.runtime.tensorboard:  # a view regenerated from history.csv
                        from echoclr_cli.training.tb import write_history

                        write_history(self.run_dir)
                self.save(rundir.LAST, model, optimizer, scheduler)
                if checkpoint_every and s.epoch % checkpoint_every == 0:
                    epoch_ckpt = rundir.epoch_checkpoint(self.run_dir, s.epoch)
                    self.save(epoch_ckpt.name, model, optimizer, scheduler)
                self._emit(Epoch(epoch=s.epoch, epochs=epochs, row=row))
                self.barrier()
                if self.stop.signal is not None:
                    raise self.stop.stop_error(s.epoch, s)
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
        """One step without a host sync (unless ``tolerance`` > 0 or ``sync_every`` is 1: a
        non-finite step must then be skipped, which needs the decision before the update).

        Without the sync a non-finite loss still updates the weights; ``sync_steps`` (every
        ``runtime.sync_every`` steps, at the epoch end and before any checkpoint) then raises
        naming the first bad step, so no checkpoint ever holds its update."""
        s = self.state
        with self.autocast():
            out = task.train_step(batch, self)
        loss = out["loss"]
        optimizer.zero_grad(set_to_none=True)
        detached = loss.detach()
        if tolerance > 0 or self.sync_every == 1:
            self.sync_steps()
            if not bool(torch.isfinite(detached).item()):
                s.nonfinite += 1
                if s.nonfinite > tolerance:
                    raise self._nonfinite_error(detached, s.epoch, s.step + 1, s.batch_in_epoch + 1)
                return 0
        else:
            self._window.append(
                (~torch.isfinite(detached), detached, s.epoch, s.step + 1, s.batch_in_epoch + 1)
            )
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
        s.step += 1
        n = int(out.get("n_clips", 0))
        for k, v in out.items():
            if k == "n_clips":
                continue
            acc = self._dev_sums.get(k)
            if acc is None:
                acc = torch.tensor(s.sums.get(k, 0.0), dtype=torch.float64, device=self.device)
                self._dev_sums[k] = acc
            acc.add_(v.detach().double() if torch.is_tensor(v) else float(v))
        s.sums["_count"] = s.sums.get("_count", 0.0) + 1
        s.sums["_clips"] = s.sums.get("_clips", 0.0) + n
        return n

    def sync_steps(self) -> None:
        """The one host sync of the steps since the last call: raise at the first non-finite
        loss among them, then move the device sums into ``state.sums``."""
        window, self._window = self._window, []
        self._unsynced = 0
        if window:
            bad = torch.stack([w[0] for w in window]).cpu()
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                _, loss, epoch, step, batch = window[i]
                self.state.nonfinite += 1
                raise self._nonfinite_error(loss, epoch, step, batch)
        if self._dev_sums:
            keys = list(self._dev_sums)
            values = torch.stack([self._dev_sums[k] for k in keys]).cpu().tolist()
            self.state.sums.update(zip(keys, values, strict=True))
            self._dev_sums = {}

    @staticmethod
    def _nonfinite_error(loss: torch.Tensor, epoch: int, step: int, batch: int) -> UserError:
        return UserError(
            f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step} "
            f"(batch {batch}); checkpoints on disk hold finite weights",
            fix="lower the learning rate, check the data, or raise nonfinite_tolerance",
        )

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

    def _emit(self, event: Event) -> None:
        if self.progress is not None and self.is_main:
            self.progress(event)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


# --------------------------------------------------------------------------- helpers
def _to_float(v: Any) -> float:
    if torch.is_tensor(v):
        return float(v.detach().cpu())
    return float(v) if v is not None else float("nan")
