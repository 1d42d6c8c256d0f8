"""Tiny trained runs shared by test_embed / test_explain / test_export (seconds on one thread)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from helpers import TINY_WIDTH, make_dataset, tiny_finetune_config

from echoclr_cli.config.load import deep_merge, load_config
from echoclr_cli.config.schema import Config


@dataclass
class TinyRuns:
    data: Path
    finetune: Path
    pretrain: Path
    cfg: Config  # the fine-tune config (evaluation settings for the commands under test)


def tiny_pretrain_config(**sections) -> Config:
    base = {
        "model": {"width": TINY_WIDTH, "proj_hidden": 16, "proj_dim": 8},
        "runtime": {"device": "cpu", "workers": 0},
        "pretrain": {"epochs": 1, "batch_size": 4, "optim": {"learning_rate": 1e-3}},
    }
    return load_config(profile="demo", overrides=deep_merge(base, sections))


def make_runs(root: Path, task: str = "lvh") -> TinyRuns:
    """A 12-study dataset, a 2-epoch fine-tuned classifier on ``task`` and a 1-epoch pretrain."""
    from echoclr_cli.finetune.run import run_finetune
    from echoclr_cli.pretrain.run import run_pretrain

    data = make_dataset(root, n_studies=12)
    cfg = tiny_finetune_config(epochs=2, finetune={"task": task})
    run_finetune(cfg, data, root / "ft")
    run_pretrain(tiny_pretrain_config(), data, root / "pt")
    return TinyRuns(data, root / "ft", root / "pt", cfg)
