"""Multi-class fine-tuning on a categorical manifest column (e.g. the echo ``view``).

``echoclr finetune --task view`` lands here (``finetune.run.run_finetune`` decides the task's
kind once, ``inference.run.task_kind``: the task is one of the dataset's categorical columns,
``manifest.categorical_columns``). Same training core as the binary task (``Engine.fit``,
``ClipDataset``, device augmentation, init weights, modes full / linear / lp-ft, best.pt on the
monitor), with:

- classes: the sorted distinct non-empty values of the column over the whole manifest, recorded
  with the task in ``RUN/task.json`` (``evaluate``, ``predict``, ``export`` and the view filter
  read it back); videos with an empty value are excluded and counted;
- model: backbone -> dropout -> Linear(out_dim, K) (``models.Classifier`` with K outputs);
- loss: softmax cross-entropy (``finetune.label_smoothing`` as torch's ``label_smoothing``);
  ``finetune.pos_weight: balanced`` or ``published`` (the default) weighs class k by n / (K n_k)
  over the training videos, anything else trains unweighted;
- label fraction: ``int(frac * N)`` training studies, a prefix of one random study order per
  ``frac_seed`` (nested across fractions), at least one;
- budget: every batch of every epoch unless ``finetune.multiclass_max_steps_per_epoch`` /
  ``multiclass_patience`` are set; ``finetune.max_steps_per_epoch`` and ``patience`` (the demo's
  4 and 4) budget binary tasks only (:func:`multiclass_budget`);
- monitor: ``val_loss`` (mean clip cross-entropy) or ``val_auroc`` = macro one-vs-rest AUROC of
  the validation videos;
- outputs (``inference.write``): ``metrics.json`` (``metrics.multiclass``: accuracy, balanced
  accuracy, macro and per-class AUROC with class-stratified bootstrap CIs; video level, and study
  level when the label is constant within studies), ``predictions_{split}_{level}.csv`` with
  ``y_true`` / ``y_pred`` as class names and one ``prob_<class>`` column per class, and
  ``confusion_{split}_{level}.csv`` + ``plots/confusion_{split}_{level}.png``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from echoclr_cli import rundir
from echoclr_cli.config.schema import Config, FinetuneConfig
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.errors import UserError
from echoclr_cli.finetune import fit
from echoclr_cli.inference.loader import predict_classes
from echoclr_cli.inference.run import Task, load_categorical, read_task
from echoclr_cli.io import atomic_write_csv, atomic_write_json
from echoclr_cli.metrics.multiclass import multiclass_metrics, prob_columns
from echoclr_cli.models.checkpoint import load_checkpoint
from echoclr_cli.models.weights import init_backbone
from echoclr_cli.runtime import seed_everything, unwrap
from echoclr_cli.training.engine import Engine


class MultiFinetuneTask(fit.FitTask):
    """Engine task: one augmented random clip per video -> K logits -> cross-entropy. Freezing
    (linear, LP-FT) and the per-epoch validation broadcast are ``FitTask``'s."""

    def __init__(self, model, cfg: Config, classes, class_weight, val_loader, normalization):
        super().__init__(model, cfg, val_loader, normalization)
        self.classes = classes
        self.class_weight = class_weight

    def train_step(self, batch: dict[str, Any], engine: Engine) -> dict[str, Tensor]:
        self._set_frozen(self.backbone_frozen(engine.state.epoch))
        x = engine.to_device(batch["x"])  # (B, C, T, H, W) uint8
        y = engine.to_device(batch["y"]).long()  # (B,) class index
        mean, std = self.normalization if self.normalization else (None, None)
        clips = prepare_clips(x, self.cfg.finetune.augment, engine.generator, mean, std)
        logits = self.model(clips).float()  # (B, K)
        w = self.class_weight.to(logits.device) if self.class_weight is not None else None
        loss = F.cross_entropy(
            logits, y, weight=w, label_smoothing=self.cfg.finetune.label_smoothing
        )
        return {"loss": loss, "n_clips": torch.tensor(x.shape[0])}

    def _validate(self, engine: Engine) -> dict[str, float]:
        video, loss = predict_classes(
            unwrap(self.model),
            self.val_loader,
            engine.device,
            self.cfg.evaluate.block_size,
            self.classes,
            self.normalization,
            class_weight=self.class_weight,
            smoothing=self.cfg.finetune.label_smoothing,
            autocast=engine.autocast,
            with_loss=True,
        )
        summary = _summary(video, self.classes)
        return {
            "val_loss": loss if loss is not None else math.nan,
            "val_auroc": summary["auroc"],
            "val_balanced_accuracy": summary["balanced_accuracy"],
        }


def _summary(video: pd.DataFrame, classes: Sequence[str]) -> dict[str, float]:
    """Macro AUROC and balanced accuracy of per-video predictions (NaN without videos)."""
    if video.empty:
        return {"auroc": math.nan, "balanced_accuracy": math.nan}
    y = video["y_true"].to_numpy(dtype=np.int64)
    return multiclass_metrics(y, video[prob_columns(classes)].to_numpy(), classes)


def study_subset(train_df: pd.DataFrame, frac: float, seed: int) -> pd.DataFrame:
    """``int(frac * N)`` training studies (>= 1), a prefix of one random order per seed."""
    studies = np.array(sorted(train_df["study_id"].astype(str).unique()))
    order = np.random.default_rng(seed).permutation(len(studies))
    keep = set(studies[order[: max(1, int(frac * len(studies)))]])
    return train_df[train_df["study_id"].astype(str).isin(keep)]


def class_weights(y: np.ndarray, k: int, how: Any) -> Tensor | None:
    """``balanced`` / ``published``: n / (K n_k) per class (0 for a class absent from training);
    else None. (The published positive-class weight is a binary rule; K classes keep balanced.)"""
    if how not in ("balanced", "published"):
        return None
    counts = np.bincount(y.astype(np.int64), minlength=k).astype(np.float64)
    w = np.where(counts > 0, len(y) / (k * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def multiclass_budget(ft: FinetuneConfig) -> tuple[int | None, int, str | None]:
    """``(steps per epoch cap, early-stopping patience, note or None)`` of a multi-class task.

    ``finetune.max_steps_per_epoch`` and ``finetune.patience`` budget the binary tasks (the demo
    profile's 4 and 4 keep its sweep in minutes); a multi-class task has its own
    ``multiclass_max_steps_per_epoch`` (None = every batch) and ``multiclass_patience``
    (0 = off), so a view model trains every batch of every epoch by default. With the demo's
    binary budget a 4-view model reached PLAX recall 0.67-0.92 at 64 px and 0.07-0.60 at 112 px
    (docs/BENCHMARKS.md, "A view model with the defaults"). The note says when a binary setting
    was set and not applied.
    """
    cap, patience = ft.multiclass_max_steps_per_epoch, ft.multiclass_patience
    ignored = []
    if ft.max_steps_per_epoch is not None and ft.max_steps_per_epoch != cap:
        ignored.append(f"max_steps_per_epoch {ft.max_steps_per_epoch}")
    if ft.patience != patience:
        ignored.append(f"patience {ft.patience}")
    note = None
    if ignored:
        note = (
            f"finetune.{' and '.join(ignored)} {'apply' if len(ignored) > 1 else 'applies'} to "
            "binary tasks; this multi-class task "
            f"trains {f'{cap} steps' if cap else 'every batch'} per epoch with "
            f"{f'patience {patience}' if patience else 'no early stopping'} "
            "(finetune.multiclass_max_steps_per_epoch, multiclass_patience)"
        )
    return cap, patience, note


def run_finetune_multiclass(cfg: Config, run: fit.FinetuneRun) -> fit.FinetuneResult:
    """Fine-tune a K-class classifier on categorical column ``cfg.finetune.task``."""
    ft = cfg.finetune
    column = ft.task
    data_dir, out_dir, resume = run.data_dir, run.out_dir, run.resume
    world_size, _, notes = fit.preflight(cfg, run, task=None)
    df, classes, n_unknown = load_categorical(data_dir, column, cfg)
    task = Task.multiclass(column, classes)
    if n_unknown:
        notes.append(f"{n_unknown} video(s) without a '{column}' value excluded")
    for split in ("train", "val"):
        if not (df["split"] == split).any():
            raise UserError(f"{data_dir / 'manifest.csv'}: split '{split}' has no videos with a "
                            f"'{column}' value", fix="re-run preprocess with other split fractions")  # fmt: skip
    if resume and (out_dir / rundir.CONFIG).is_file() and read_task(out_dir) != task:
        raise UserError(f"--resume: the classes of '{column}' differ from those {out_dir} "
                        "was trained on", fix="resume with the original dataset, or start a new run")  # fmt: skip
    sub_df = study_subset(df[df["split"] == "train"], ft.frac, ft.frac_seed)
    y_train = sub_df[column].to_numpy(dtype=np.int64)
    weight = class_weights(y_train, len(classes), ft.pos_weight)
    absent = [c for i, c in enumerate(classes) if not (y_train == i).any()]
    if absent:
        notes.append(f"class(es) {absent} have no training video in this subset")
    batch_size = fit.capped_batch_size(ft.batch_size, len(sub_df), world_size, notes)
    step_cap, patience, budget_note = multiclass_budget(ft)
    if budget_note:
        notes.append(budget_note)

    seed_everything(cfg.runtime.seed)
    model = task.build_model(cfg)
    init = None if resume else init_backbone(cfg, model.backbone, run.data_dir).to_dict()
    studies = (
        sub_df.groupby("study_id", sort=True)
        .agg(patient_id=("patient_id", "first"), n_videos=("video_id", "size"))
        .reset_index()
    )
    fs = fit.setup_fit(
        cfg, task, model, init, run, df=df, sub_df=sub_df, batch_size=batch_size,
        world_size=world_size, drop_last=True,
        write_main=lambda: atomic_write_csv(out_dir / rundir.TRAIN_STUDIES, studies),
    )  # fmt: skip
    engine, prepared, init, normalization = fs.engine, fs.prepared, fs.init, fs.normalization
    task_obj = MultiFinetuneTask(prepared, cfg, classes, weight, fs.val_loader, normalization)
    fitted = engine.fit(task_obj, fs.train_loader, fs.optimizer, fs.scheduler, epochs=ft.epochs,
                        sampler=fs.sampler, checkpoint_every=0, monitor=ft.monitor,
                        monitor_mode="min" if ft.monitor == "val_loss" else "max",
                        patience=patience, nonfinite_tolerance=ft.nonfinite_tolerance,
                        max_steps_per_epoch=step_cap)  # fmt: skip

    ckpt = rundir.run_checkpoint(out_dir)
    base = unwrap(prepared)
    base.load_state_dict(load_checkpoint(ckpt, map_location=engine.device)["model"])
    present = set(df["split"])
    splits = [s for s in ["val", *dict.fromkeys(cfg.evaluate.splits)] if s in present]
    splits = list(dict.fromkeys(splits))
    metrics: dict[str, Any] = {}
    files: list[Path] = []
    if engine.is_main:
        metrics, files = fit.final_evaluation(cfg, task, base, df, run, splits, engine,
                                              normalization)  # fmt: skip
        facts = {
            "data_dir": str(data_dir.resolve()), "task": column, "task_kind": task.kind,
            "classes": classes, "frame_size": fit.frame_size(df, data_dir), "frac": ft.frac,
            "frac_seed": ft.frac_seed, "n_train_studies": len(studies),
            "n_train_videos": len(sub_df), "class_weight": None if weight is None else weight.tolist(),
            "batch_size": batch_size, "max_steps_per_epoch": step_cap, "patience": patience,
            "best_epoch": fitted.best_epoch, "best_metric": fitted.best_metric,
            "monitor": ft.monitor, "epochs_run": fitted.epochs_run, "stopped_early": fitted.stopped_early,
            "checkpoint_tested": ckpt.name, "splits": splits, "notes": notes,
        }  # fmt: skip
        atomic_write_json(out_dir / rundir.FINETUNE_FACTS, facts)
    engine.barrier()
    engine.close()
    return fit.FinetuneResult(
        run_dir=out_dir, task=column, metrics=metrics, best_epoch=fitted.best_epoch,
        best_metric=fitted.best_metric, epochs_run=fitted.epochs_run,
        stopped_early=fitted.stopped_early,
        n_train_studies=len(studies), n_train_videos=len(sub_df), n_train_positive_studies=0,
        fraction_extended=False, batch_size=batch_size, pos_weight=None, init=init,
        splits=splits, checkpoint=ckpt, history=fitted.history,
        notes=[f"multi-class task '{column}': {len(classes)} classes {classes}", *notes],
        files=files,
    )  # fmt: skip
