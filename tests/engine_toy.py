"""A tiny task on the real engine, for engine and fault tests (no video models needed)."""

from __future__ import annotations

import os
import signal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from echoclr_cli.config.schema import Config
from echoclr_cli.training.engine import Engine


class ToyData(Dataset):
    def __init__(self, n: int = 48, seed: int = 0):
        rng = np.random.default_rng(123)
        self.x = rng.normal(size=(n, 6)).astype(np.float32)
        self.y = (self.x[:, 0] + 0.3 * self.x[:, 1] > 0).astype(np.float32)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key):
        epoch, i = key
        rng = np.random.default_rng((self.seed, epoch, i))  # per-sample randomness
        x = self.x[i] + rng.normal(scale=0.1, size=6).astype(np.float32)
        return torch.from_numpy(x), torch.tensor(self.y[i])


class ToySampler(Sampler):
    def __init__(self, n: int, batch_size: int, seed: int = 0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._skip = epoch, 0

    def skip(self, batches: int) -> None:
        self._skip = batches

    def __iter__(self):
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
        for i in order[self._skip * self.batch_size :]:
            yield (self.epoch, int(i))

    def __len__(self) -> int:
        return self.n - self._skip * self.batch_size


class ToyTask:
    def __init__(
        self, engine: Engine, nan_at_step: int | None = None, sigterm_at_step: int | None = None
    ):
        self.model = engine.prepare(
            nn.Sequential(
                nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1)
            )
        )
        self.nan_at_step = nan_at_step
        self.sigterm_at_step = sigterm_at_step
        self.calls = 0

    def train_step(self, batch, engine: Engine):
        self.calls += 1
        x, y = (t.to(engine.device) for t in batch)
        noise = torch.randn(x.shape, generator=engine.generator, device=engine.device)  # x: (B, 6)
        logits = self.model(x + 0.05 * noise).squeeze(1)  # (B,)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        if self.nan_at_step is not None and self.calls == self.nan_at_step:
            loss = loss * float("nan")
        if self.sigterm_at_step is not None and engine.state.step + 1 == self.sigterm_at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"loss": loss, "n_clips": torch.tensor(len(x))}

    def end_of_epoch(self, epoch: int, engine: Engine):
        return {"val_loss": 1.0 / (epoch + 1)}


def toy_config(**runtime) -> Config:
    cfg = Config()
    cfg.runtime.device = "cpu"
    for k, v in runtime.items():
        setattr(cfg.runtime, k, v)
    return cfg


def run_toy(run_dir, epochs: int, resume: bool = False, cfg: Config | None = None, **task_kw):
    cfg = cfg or toy_config()
    engine = Engine(cfg, run_dir, section="pretrain", resume=resume)
    task = ToyTask(engine, **task_kw)
    data = ToyData()
    sampler = ToySampler(len(data), batch_size=8)
    loader = DataLoader(data, batch_size=8, sampler=sampler, drop_last=True)
    opt = torch.optim.Adam(task.model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    result = engine.fit(
        task,
        loader,
        opt,
        sched,
        epochs=epochs,
        sampler=sampler,
        checkpoint_every=2,
        monitor="val_loss",
    )
    return engine, task, result
