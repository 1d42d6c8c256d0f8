"""`echoclr demo`: the whole pipeline on synthetic data, resumable stage by stage.

synth -> preprocess -> pretrain (EchoCLR, MI-SimCLR) -> sweep (random vs the SSL inits). Every
stage is skipped when its output is already complete, so re-running the demo only redoes what is
missing (and an interrupted demo continues where it stopped).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from echoclr_cli.config import Config

DEMO_METHODS = ("echoclr", "mi-simclr")


@dataclass
class DemoResult:
    root: Path
    data_dir: Path
    pretrain_runs: dict[str, Path]
    sweep: Any  # sweep.SweepResult
    stages_skipped: list[str]


def _null_progress(_desc: str):
    return contextlib.nullcontext(None)


def pretrain_state(run_dir: Path) -> tuple[int, bool]:
    """(completed epochs, has checkpoint) of a pretrain run dir."""
    from echoclr_cli.engine import load_checkpoint

    last = Path(run_dir) / "checkpoints" / "last.pt"
    if not last.exists():
        return 0, False
    return int(load_checkpoint(last)["epoch"]), True


def demo_config(cfg: Config, root: Path) -> Config:
    cfg = cfg.model_copy(deep=True)
    cfg.paths.raw = root / "raw"
    cfg.paths.data = root / "data"
    cfg.paths.runs = root / "runs"
    cfg.preprocess.input = None
    cfg.sweep.inits = ["random", *DEMO_METHODS]
    return cfg


def run_demo(
    cfg: Config,
    root: Path,
    count_progress: Callable[[str], Any] = _null_progress,
    training_progress: Callable[[str], Any] = _null_progress,
    say: Callable[[str], None] = lambda _m: None,
) -> DemoResult:
    from echoclr_cli.data.synth import synthesize
    from echoclr_cli.preprocess import preprocess
    from echoclr_cli.pretrain import run_pretrain
    from echoclr_cli.sweep import run_sweep

    cfg = demo_config(cfg, Path(root))
    skipped: list[str] = []

    if (cfg.paths.raw / "synth.json").exists():
        skipped.append("synth")
    else:
        say(f"[1/4] synthesising {cfg.synth.studies} echo studies -> {cfg.paths.raw}")
        with count_progress("synth") as update:
            synthesize(cfg, cfg.paths.raw, progress=update)

    say(f"[2/4] preprocessing -> {cfg.paths.data}")
    with count_progress("preprocess") as update:
        preprocess(cfg, cfg.paths.raw, cfg.paths.data, progress=update)

    runs: dict[str, Path] = {}
    for method in DEMO_METHODS:
        mcfg = cfg.model_copy(deep=True)
        mcfg.pretrain.method = method
        run_dir = cfg.paths.runs / "pretrain" / method
        runs[method] = run_dir
        done, has_ck = pretrain_state(run_dir)
        if done >= mcfg.pretrain.epochs:
            skipped.append(f"pretrain {method}")
            continue
        say(f"[3/4] pretraining {method} ({mcfg.pretrain.epochs} epochs) -> {run_dir}")
        with training_progress(f"pretrain {method}") as progress:
            run_pretrain(mcfg, cfg.paths.data, run_dir, resume=has_ck, progress=progress)

    say(f"[4/4] label-efficiency sweep -> {cfg.paths.runs / 'sweep'}")
    with training_progress("sweep") as progress:
        sweep = run_sweep(cfg, cfg.paths.data, cfg.paths.runs / "sweep", progress=progress)
    return DemoResult(Path(root), cfg.paths.data, runs, sweep, skipped)
