"""Supervised fine-tuning of a video ResNet on one binary label, on the shared engine.

``run_finetune`` = preflight -> study-level label fraction -> model + init weights -> engine.fit
(train with device augmentation; validate every epoch; best.pt on the monitor) -> reload the best
weights -> metrics, predictions and plots for val and the evaluation splits.

Options (``finetune`` section; defaults = the paper):

- ``frac`` / ``frac_seed``: ``int(frac * N)`` labelled training studies, a prefix of one
  stratified random order per seed, so subsets are nested across fractions (see
  :func:`stratified_study_order`). The run writes the studies it used to ``train_studies.csv``.
- ``pos_weight``: ``published`` (the default) = max(1, n_neg / n_pos) of the training *videos*
  of the subset (the samples the loss sees; the published code divided sklearn's balanced class
  weights by the smaller one); ``balanced`` = n_neg / n_pos (below 1 when positives are the
  majority), ``none``, or a number. Only positive terms are weighted (``BCEWithLogits(pos_weight=...)``), in training and
  validation alike (the published evaluation loss weighted every element). ``val_loss`` is the
  training loss formula (same weight, same smoothing) on the evaluation clips.
- ``label_smoothing`` s: targets ``y * (1 - s) + s / 2`` (the published code parsed it and
  never applied it).
- ``dropout``: before the linear head (DIFFERS from the published code, which dropped logits).
- ``mode``: ``full`` fine-tuning; ``linear`` probe (backbone frozen and kept in eval mode, so
  BatchNorm statistics do not move; only the head trains); ``lp-ft``: linear probe for
  ``lp_epochs`` epochs, then full fine-tuning (the optimizer holds all parameters from the start;
  backbone parameters get no gradient, hence no Adam state, until the FT phase).
- ``early_stop``: ``published`` (paper profile) monitors ``val_bce_video``, the unweighted BCE
  of the clip-averaged probability per validation video, and stops after ``patience + 1`` epochs
  without improvement (the published ``while ... epochs_no_improve <= patience`` loop);
  ``ours`` monitors ``monitor`` (``val_loss`` min or ``val_auroc`` max, study level) and stops
  after ``patience`` epochs without improvement. In ``lp-ft`` patience counts fine-tuning epochs
  only. The test metrics use the best-validation weights (``checkpoints/best.pt``).
- batches: ``min(batch_size, training videos per process)``, no drop_last: every training video
  is seen every epoch, as the published loader (a 1% subset smaller than one batch still trains;
  the run notes the cap). A final batch of ONE video still trains (forward, loss, update) with
  BatchNorm in eval mode for that step (``bn_frozen_stats``): normalised by the running
  statistics, which it does not update (one sample's statistics are noise, and a 1x1x1 feature
  map cannot be batch-normalised in training mode at all).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection
from functools import partial
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from echoclr_cli import rundir
from echoclr_cli.config.schema import Config
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.data.fractions import training_subset
from echoclr_cli.errors import UserError
from echoclr_cli.events import Progress
from echoclr_cli.finetune.fit import (
    FinetuneResult,
    FinetuneRun,
    FitTask,
    capped_batch_size,
    final_evaluation,
    frame_size,
    preflight,
    setup_fit,
)
from echoclr_cli.finetune.losses import classification_loss, pos_weight_value
from echoclr_cli.finetune.multiclass import run_finetune_multiclass
from echoclr_cli.inference.loader import predict_videos
from echoclr_cli.inference.run import MULTICLASS, Task, task_kind
from echoclr_cli.io import atomic_write_csv, atomic_write_json
from echoclr_cli.metrics.aggregate import aggregate_levels
from echoclr_cli.metrics.core import auroc_rank
from echoclr_cli.models.checkpoint import load_checkpoint
from echoclr_cli.models.weights import (
    KINETICS_WIDTH,
    RANDOM_BN,
    init_backbone,
    read_weights_file,
    resolve_init_file,
    unpack_state,
)
from echoclr_cli.rundir import RunStart
from echoclr_cli.runtime import seed_everything, unwrap
from echoclr_cli.training.engine import Engine

PUBLISHED_MONITOR = "val_bce_video"


@contextlib.contextmanager
def bn_frozen_stats(model: nn.Module, frozen: bool = True):
    """BatchNorm layers in eval mode inside: normalised with their running statistics, which
    are not updated. Used for a final training batch of ONE video: its own statistics would
    move the running estimates by a single-video value (and a 1x1x1 feature map cannot be
    batch-normalised at all); the video still contributes its gradient."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not frozen or not bns:
        yield
        return
    modes = [m.training for m in bns]
    for m in bns:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(bns, modes, strict=True):
            m.train(mode)


def video_bce(video: pd.DataFrame) -> float:
    """Unweighted BCE of the clip-averaged probability per video (the published early-stopping
    quantity; its constant weight does not change which epoch is best). NaN without videos."""
    if not len(video):
        return math.nan
    y = video["y_true"].to_numpy(dtype=np.float64)
    p = video["y_prob"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore"):  # log(0) -> -inf -> clamped at -100 as torch's BCELoss
        lp, lq = np.maximum(np.log(p), -100.0), np.maximum(np.log1p(-p), -100.0)
    return float(-(y * lp + (1 - y) * lq).mean())


def early_stopping(ft: Any) -> tuple[str, str, int]:
    """``(monitor, mode, engine patience)`` of ``finetune.early_stop``: the engine stops after
    ``patience`` bad epochs, so the published rule (stop after patience + 1) passes patience + 1;
    patience 0 = off in both. ``monitor: val_auroc`` with the published rule is refused (it
    would be ignored)."""
    if ft.early_stop == "published":
        if ft.monitor != "val_loss":
            raise UserError(
                f"finetune.monitor {ft.monitor} is not used by finetune.early_stop=published "
                "(which monitors the per-video BCE, val_bce_video)",
                fix="add --set finetune.early_stop=ours to stop on "
                f"{ft.monitor}, or drop the monitor setting",
            )
        return PUBLISHED_MONITOR, "min", ft.patience + 1 if ft.patience else 0
    return ft.monitor, "min" if ft.monitor == "val_loss" else "max", ft.patience


# --------------------------------------------------------------------------- the task
class FinetuneTask(FitTask):
    """Engine task: one augmented random clip per video -> logit -> weighted BCE.

    ``end_of_epoch`` predicts the validation videos (``evaluate`` clip settings) and returns
    ``val_loss`` (same loss as training, mean over clips), ``val_auroc`` (study level) and
    ``val_auroc_video``.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: Config,
        pos_weight: float | None,
        val_loader: DataLoader,
        normalization: tuple[tuple[float, ...], tuple[float, ...]] | None,
    ):
        super().__init__(model, cfg, val_loader, normalization)
        self.pos_weight = pos_weight

    def train_step(self, batch: dict[str, Any], engine: Engine) -> dict[str, Tensor]:
        """batch: ``x`` uint8 (B, C, T, H, W), ``y`` (B,) -> loss."""
        self._set_frozen(self.backbone_frozen(engine.state.epoch))
        x = engine.to_device(batch["x"])  # (B, C, T, H, W) uint8
        y = engine.to_device(batch["y"]).float()  # (B,) non-blocking from pinned memory
        mean, std = self.normalization if self.normalization else (None, None)
        augment = self.cfg.finetune.augment
        clips = prepare_clips(x, augment, engine.generator, mean, std)  # (B, 3, T, H, W) float
        if engine.device.type == "cuda" and self.cfg.runtime.channels_last:
            clips = clips.contiguous(memory_format=torch.channels_last_3d)  # as the model
        with bn_frozen_stats(self.model, x.shape[0] == 1):  # a final batch of one video
            logits = self.model(clips).float()  # (B,)
        loss = classification_loss(logits, y, self.pos_weight, self.cfg.finetune.label_smoothing)
        return {"loss": loss, "n_clips": torch.tensor(x.shape[0])}

    def _validate(self, engine: Engine) -> dict[str, float]:
        preds = predict_videos(
            unwrap(self.model),
            self.val_loader,
            engine.device,
            self.cfg.evaluate.block_size,
            self.normalization,
            loss_fn=partial(
                classification_loss,
                pos_weight=self.pos_weight,
                smoothing=self.cfg.finetune.label_smoothing,
                reduction="none",
            ),
            autocast=engine.autocast,
        )
        levels = aggregate_levels(preds.video)
        return {
            "val_loss": preds.loss if preds.loss is not None else math.nan,
            PUBLISHED_MONITOR: video_bce(preds.video),
            "val_auroc": level_auroc(levels["study"]),
            "val_auroc_video": level_auroc(levels["video"]),
        }


def level_auroc(df: pd.DataFrame) -> float:
    """AUROC of one aggregated level (``y_true``, ``y_prob``); NaN for one class or no rows."""
    y = df["y_true"].to_numpy(dtype=np.int64)[None]  # (1, n)
    p = df["y_prob"].to_numpy(dtype=np.float64)[None]  # (1, n)
    return float(auroc_rank(y, p)[0]) if len(df) else math.nan


# --------------------------------------------------------------------------- the model follows its init
MODEL_KEYS = ("arch", "width")
PUBLISHED_MODEL = {"arch": "r3d_18", "width": 1.0}  # the published EchoCLR checkpoints


def init_model(init: str) -> tuple[dict[str, Any], str] | None:
    """``({arch, width} or the part it fixes, where it was read)`` of the model ``finetune.init``
    needs.

    Our run dir: its ``config.yaml``; our checkpoint file: the config it records; a published
    EchoCLR checkpoint: r3d_18 at full width; Kinetics-400: the width torchvision's weights have
    (any arch with Kinetics weights). None for random / random-bn and for state dicts that do not
    say (their tensors are checked against the configured model when loading).
    """
    if init in ("random", RANDOM_BN):
        return None
    if init == "kinetics":
        return {"width": KINETICS_WIDTH}, (
            f"torchvision's Kinetics-400 weights, which exist at width {KINETICS_WIDTH} only"
        )
    path = Path(init).expanduser()
    if path.is_dir() and (path / rundir.CONFIG).is_file():
        model = rundir.read_run_config(path).model
        return {"arch": model.arch, "width": model.width}, str(path / rundir.CONFIG)
    file = resolve_init_file(init)
    _, fmt, model_cfg = unpack_state(read_weights_file(file))
    if model_cfg and all(k in model_cfg for k in MODEL_KEYS):
        return {k: model_cfg[k] for k in MODEL_KEYS}, str(file)
    if fmt == "echoclr-published":
        return dict(PUBLISHED_MODEL), f"{file} (published EchoCLR format)"
    return None


def follow_init_model(
    cfg: Config, explicit: Collection[str] = frozenset(), init: str | None = None
) -> tuple[Config, str | None]:
    """``cfg`` with the arch and width its init (``init``, default ``finetune.init``) was trained
    with or needs (keys in ``explicit``, dotted config keys the user set, are kept); returns the
    new config and one line saying so (None: nothing to follow).
    """
    found = init_model(cfg.finetune.init if init is None else init)
    if found is None:
        return cfg, None
    model, source = found
    follow = [k for k in MODEL_KEYS if k in model and f"model.{k}" not in explicit]
    if not follow:
        return cfg, None
    update = {k: model[k] for k in follow}
    new = cfg.model_copy(update={"model": cfg.model.model_copy(update=update)})
    said = ", ".join(f"model.{k}={model[k]}" for k in follow)
    return new, f"model follows the init: {said} (from {source})"


# --------------------------------------------------------------------------- the run
def run_finetune(
    cfg: Config,
    data_dir: Path,
    out_dir: Path,
    progress: Progress | None = None,
    **start: Unpack[RunStart],
) -> FinetuneResult:
    """Fine-tune ``cfg.model`` on ``cfg.finetune.task`` of ``data_dir`` into run dir ``out_dir``.

    Writes (besides the engine's config.yaml, history.csv, checkpoints/{last,best}.pt):
    ``train_studies.csv``, ``task.json`` (the Task), ``init.json``, ``finetune.json`` (run facts:
    dataset, subset sizes, pos_weight, batch size), ``metrics.json``, ``predictions_{split}_{video,study}.csv`` and
    ``plots/`` for val and ``evaluate.splits`` (default test, ext_test; absent ones are noted).
    The task's kind is decided here, once: a categorical column (e.g. ``--task view``) is a
    K-class task (``multiclass.py``), a 0/1 label column binary; ``task.json`` records it.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    run = FinetuneRun(data_dir, out_dir, progress=progress, **start)
    if task_kind(data_dir, cfg.finetune.task) == MULTICLASS:
        return run_finetune_multiclass(cfg, run)
    ft = cfg.finetune
    task = ft.task
    task_obj = Task.binary(task)
    monitor, monitor_mode, patience = early_stopping(ft)  # refuses a monitor it would ignore
    world_size, check, notes = preflight(cfg, run, task)
    df = check.manifest

    train_df = df[df["split"] == "train"]
    sample, sub_df = training_subset(train_df, task, ft.frac, ft.frac_seed)
    if sample.extended:
        notes.append(
            f"frac {ft.frac}: int({ft.frac} x {sample.n_available}) = {sample.n_requested} studies "
            f"extended to {len(sample.studies)} to hold a positive and a negative study"
        )
    n_pos_v = int((sub_df[task] == 1).sum())
    pos_weight = pos_weight_value(ft.pos_weight, n_pos_v, len(sub_df) - n_pos_v)
    batch_size = capped_batch_size(ft.batch_size, len(sub_df), world_size, notes)

    # The model and its init weights come before the Engine, so a missing or wrong weight file
    # is refused before a run dir is created; seeding first keeps the head's init a function of
    # runtime.seed (the Engine seeds again, as for every run).
    seed_everything(cfg.runtime.seed)
    model = task_obj.build_model(cfg)
    init: dict[str, Any] | None = None
    if not run.resume:
        init = init_backbone(cfg, model.backbone, data_dir).to_dict()
    fs = setup_fit(
        cfg, task_obj, model, init, run, df=df, sub_df=sub_df, batch_size=batch_size,
        world_size=world_size,
        drop_last=False,  # every training video every epoch (published loader)
        write_main=lambda: _write_train_studies(
            sample.studies, out_dir / rundir.TRAIN_STUDIES, run.resume
        ),
    )  # fmt: skip
    engine, prepared, init, normalization = fs.engine, fs.prepared, fs.init, fs.normalization
    optimizer, scheduler, sampler = fs.optimizer, fs.scheduler, fs.sampler
    train_loader, val_loader = fs.train_loader, fs.val_loader
    fit = engine.fit(
        FinetuneTask(prepared, cfg, pos_weight, val_loader, normalization),
        train_loader,
        optimizer,
        scheduler,
        epochs=ft.epochs,
        sampler=sampler,
        checkpoint_every=0,
        monitor=monitor,
        monitor_mode=monitor_mode,
        patience=patience,
        nonfinite_tolerance=ft.nonfinite_tolerance,
        max_steps_per_epoch=ft.max_steps_per_epoch,
    )

    # ---- final evaluation with the best-validation weights (rank 0 writes)
    ckpt = rundir.run_checkpoint(out_dir)
    if ckpt.name == rundir.LAST:
        notes.append(f"no epoch improved {monitor} (undefined every epoch): tested with last.pt")
    base = unwrap(prepared)
    base.load_state_dict(load_checkpoint(ckpt, map_location=engine.device)["model"])
    splits = ["val"] + [s for s in dict.fromkeys(cfg.evaluate.splits) if s != "val"]
    present = set(df["split"])
    missing = [s for s in cfg.evaluate.splits if s not in present]
    if missing:
        notes.append(f"evaluate.splits {missing} have no labelled '{task}' videos: skipped")
    splits = [s for s in splits if s in present]
    metrics: dict[str, Any] = {}
    files: list[Path] = []
    if engine.is_main:
        reuse = val_loader if not ft.val_clips else None  # the per-epoch loader, same clips
        metrics, files = final_evaluation(cfg, task_obj, base, df, run, splits, engine,
                                          normalization, reuse)  # fmt: skip
        facts = {
            "data_dir": str(data_dir.resolve()),
            "task": task,
            "frame_size": frame_size(df, data_dir),
            "frac": ft.frac,
            "frac_seed": ft.frac_seed,
            "n_train_studies_available": sample.n_available,
            "n_train_studies": len(sample.studies),
            "n_train_studies_requested": sample.n_requested,
            "n_train_videos": len(sub_df),
            "n_train_positive_studies": int(sample.studies["y"].sum()),
            "pos_weight": pos_weight,
            "batch_size": batch_size,
            "best_epoch": fit.best_epoch,
            "best_metric": fit.best_metric,
            "monitor": monitor,
            "early_stop": ft.early_stop,
            "epochs_run": fit.epochs_run,
            "stopped_early": fit.stopped_early,
            "checkpoint_tested": ckpt.name,
            "splits": splits,
            "notes": notes,
        }
        atomic_write_json(out_dir / rundir.FINETUNE_FACTS, facts)
    engine.barrier()
    engine.close()
    return FinetuneResult(
        run_dir=out_dir,
        task=task,
        metrics=metrics,
        best_epoch=fit.best_epoch,
        best_metric=fit.best_metric,
        epochs_run=fit.epochs_run,
        stopped_early=fit.stopped_early,
        n_train_studies=len(sample.studies),
        n_train_videos=len(sub_df),
        n_train_positive_studies=int(sample.studies["y"].sum()),
        fraction_extended=sample.extended,
        batch_size=batch_size,
        pos_weight=pos_weight,
        init=init,
        splits=splits,
        checkpoint=ckpt,
        history=fit.history,
        notes=notes,
        files=files,
    )


def _write_train_studies(studies: pd.DataFrame, path: Path, resume: bool) -> None:
    """Write the subset; on resume it must be the same studies as before."""
    if resume and path.exists():
        old = pd.read_csv(path, dtype={"study_id": str})
        if sorted(old["study_id"]) != sorted(studies["study_id"].astype(str)):
            raise UserError(
                f"--resume: the training studies differ from {path} (dataset, task or frac changed)",
                fix="resume with the original dataset and options, or start a new run",
            )
        return
    atomic_write_csv(path, studies[["order", "study_id", "patient_id", "y", "n_videos"]])
