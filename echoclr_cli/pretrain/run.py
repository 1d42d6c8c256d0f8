"""`echoclr pretrain`: self-supervised pretraining (SimCLR, MI-SimCLR, EchoCLR) on the training
engine.

``run_pretrain`` reads the dataset dir, runs the preflight (``training/preflight.py``, before any
model is built or any file written), takes the pairs, batch and steps of ``pretrain/plan.py``,
builds the model of ``pretrain/task.py`` (backbone, projector, reorder head when the method
reorders), optimizer and loader, and hands ``PretrainTask`` to ``Engine.fit``; then writes
metrics.json. The checkpoint's model state is the ``SSLModel``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Unpack

import pandas as pd

from echoclr_cli import rundir
from echoclr_cli.config.schema import Config, with_pretrain_epochs
from echoclr_cli.events import Note
from echoclr_cli.io import atomic_write_json
from echoclr_cli.models.sync_bn import convert_group_batchnorm
from echoclr_cli.pretrain.plan import bn_group_size, make_loader, plan_pretrain
from echoclr_cli.pretrain.probe import build_probe
from echoclr_cli.pretrain.task import PretrainTask, build_model
from echoclr_cli.rundir import RunStart, manifest_fingerprint
from echoclr_cli.runtime import dist_env
from echoclr_cli.training.engine import Engine
from echoclr_cli.training.optim import build_optimizer, build_scheduler
from echoclr_cli.training.preflight import run_check


@dataclass
class PretrainResult:
    run_dir: Path
    method: str
    epochs_run: int
    steps: int
    n_videos: int
    n_studies: int
    n_pairs: int
    batch_size: int  # pairs per process per step (may be lowered, see notes)
    steps_per_epoch: int
    checkpoint: Path
    history: pd.DataFrame
    global_batch: int = 0  # pairs per step over all processes
    notes: list[str] = field(default_factory=list)


def run_pretrain(
    cfg: Config,
    data_dir: Path,
    out_dir: Path,
    progress: Callable[[dict], None] | None = None,
    **start: Unpack[RunStart],
) -> PretrainResult:
    """Pretrain ``cfg.pretrain.method`` on ``data_dir`` into the run dir ``out_dir``
    (``start``: resume / overwrite / force, ``rundir.RunStart``)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    cfg = with_pretrain_epochs(cfg)  # None -> the method's published count, recorded
    rank, world, _ = dist_env()
    # Preflight (the same as `echoclr check --for pretrain`): missing files, leakage, splits,
    # batches; nothing is built, allocated or written before it passes.
    check = run_check(cfg, data_dir, section="pretrain", world_size=world)
    check.raise_if_failed()
    df = check.manifest
    plan = plan_pretrain(cfg, df, data_dir, world)
    probe = build_probe(cfg, df, data_dir)
    engine = Engine(
        cfg,
        out_dir,
        section="pretrain",
        progress=progress,
        data_fingerprint=manifest_fingerprint(data_dir),
        **start,
    )
    if progress is not None and rank == 0:
        for note in plan.notes:
            progress(Note(note))
    try:
        model = build_model(cfg)
        if bn_group_size(cfg, world):  # BatchNorm per group of clips (plan.bn_groups)
            model = convert_group_batchnorm(model, bn_group_size(cfg, world))
        net = engine.prepare(model)
        optimizer = build_optimizer(model.parameters(), cfg.pretrain.optim)
        scheduler = build_scheduler(optimizer, cfg.pretrain.optim, cfg.pretrain.epochs)
        loader, sampler = make_loader(cfg, plan, rank, pin_memory=engine.device.type == "cuda")
        task = PretrainTask(cfg, model, net, probe)
        fit = engine.fit(
            task,
            loader,
            optimizer,
            scheduler,
            epochs=cfg.pretrain.epochs,
            sampler=sampler,
            checkpoint_every=cfg.pretrain.checkpoint_every,
            nonfinite_tolerance=cfg.pretrain.nonfinite_tolerance,
            max_steps_per_epoch=cfg.pretrain.max_steps_per_epoch,
        )
    finally:
        engine.close()
    table = plan.dataset.table
    steps = plan.steps_per_epoch
    if cfg.pretrain.max_steps_per_epoch:
        steps = min(steps, cfg.pretrain.max_steps_per_epoch)
    result = PretrainResult(
        run_dir=out_dir,
        method=cfg.pretrain.method,
        epochs_run=fit.epochs_run,
        steps=fit.steps,
        n_videos=len(table.video_id),
        n_studies=len(set(table.study_id)),
        n_pairs=len(plan.dataset),
        batch_size=plan.batch_size,
        global_batch=plan.batch_size * plan.world_size,
        steps_per_epoch=steps,
        checkpoint=rundir.last_checkpoint(out_dir),
        history=fit.history,
        notes=plan.notes,
    )
    if rank == 0:
        last = fit.history.iloc[-1].to_dict() if len(fit.history) else {}
        atomic_write_json(
            out_dir / "metrics.json",
            {
                "method": result.method,
                "epochs": result.epochs_run,
                "steps": result.steps,
                "videos": result.n_videos,
                "studies": result.n_studies,
                "pairs": result.n_pairs,
                "batch_size": result.batch_size,
                "global_batch": result.global_batch,
                "steps_per_epoch": result.steps_per_epoch,
                "notes": result.notes,
                "final": {
                    k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in last.items()
                },
            },
        )
    return result
