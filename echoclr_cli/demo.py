"""`echoclr demo`: the whole pipeline on synthetic data, resumable stage by stage.

synth -> preprocess -> pretrain (SimCLR, MI-SimCLR, EchoCLR) -> sweep (random, random-bn and the
SSL inits). Every stage is skipped when its output is already complete, so re-running the demo only
redoes what is missing (and an interrupted demo continues where it stopped).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from echoclr_cli.config.schema import Config, pretrain_epochs
from echoclr_cli.events import Progress, counter
from echoclr_cli.models.bn_init import RANDOM_BN
from echoclr_cli.pretrain.methods import METHOD_NAMES
from echoclr_cli.rundir import pretrain_run_dir, run_progress, sweep_dir


@dataclass
class DemoResult:
    root: Path
    data_dir: Path
    pretrain_runs: dict[str, Path]
    sweep: Any  # sweep.SweepResult
    stages_skipped: list[str]


def _no_progress(_description: str):
    return contextlib.nullcontext(None)


def demo_config(cfg: Config, root: Path) -> Config:
    cfg = cfg.model_copy(deep=True)
    cfg.paths.raw = root / "raw"
    cfg.paths.data = root / "data"
    cfg.paths.runs = root / "runs"
    cfg.preprocess.input = None
    cfg.sweep.inits = ["random", RANDOM_BN, *METHOD_NAMES]  # random-bn: the BatchNorm control
    return cfg


def run_demo(
    *,
    cfg: Config,
    root: Path,
    progress: Callable[[str], AbstractContextManager[Progress | None]] = _no_progress,
    say: Callable[[str], None] = lambda _m: None,
) -> DemoResult:
    """Run (or finish) the demo under ``root``. ``progress(description)`` is a context manager
    giving each stage's event callback (``report.progress``); ``say`` prints a stage line."""
    from echoclr_cli.preprocess.run import preprocess
    from echoclr_cli.pretrain.run import run_pretrain
    from echoclr_cli.sweep import run_sweep
    from echoclr_cli.synth.archive import synthesize

    cfg = demo_config(cfg, Path(root))
    skipped: list[str] = []

    if (cfg.paths.raw / "synth.json").exists():
        skipped.append("synth")
    else:
        say(f"[1/4] synthesising {cfg.synth.studies} echo studies -> {cfg.paths.raw}")
        with progress("synth") as on_event:
            synthesize(cfg, cfg.paths.raw, progress=counter(on_event, "synth"))

    say(f"[2/4] preprocessing -> {cfg.paths.data}")
    with progress("preprocess") as on_event:
        preprocess(cfg, cfg.paths.raw, cfg.paths.data, progress=counter(on_event, "preprocess"))

    runs: dict[str, Path] = {}
    for method in METHOD_NAMES:
        mcfg = cfg.model_copy(deep=True)
        mcfg.pretrain.method = method
        run_dir = runs[method] = pretrain_run_dir(cfg, method)
        state = run_progress(run_dir, "pretrain")
        epochs = pretrain_epochs(mcfg.pretrain)
        if state.has_checkpoint and (state.epochs_done or 0) >= epochs:
            skipped.append(f"pretrain {method}")
            continue
        say(f"[3/4] pretraining {method} ({epochs} epochs) -> {run_dir}")
        with progress(f"pretrain {method}") as on_event:
            run_pretrain(
                mcfg, cfg.paths.data, run_dir, resume=state.has_checkpoint, progress=on_event
            )

    out_dir = sweep_dir(cfg)
    say(f"[4/4] label-efficiency sweep -> {out_dir}")
    with progress("sweep") as on_event:
        sweep = run_sweep(cfg=cfg, data_dir=cfg.paths.data, out_dir=out_dir, progress=on_event)
    return DemoResult(Path(root), cfg.paths.data, runs, sweep, skipped)
