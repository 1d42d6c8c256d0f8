"""The multi-class fine-tune run (``finetune.run_finetune`` dispatches here for a categorical
task) and the multi-class paths of ``echoclr evaluate`` and ``echoclr predict``.
See ``multiclass.py`` for the task's definition."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from echoclr_cli import rundir
from echoclr_cli.config.schema import Config
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.errors import UserError
from echoclr_cli.events import Progress, Status
from echoclr_cli.finetune.fit import FinetuneRun, capped_batch_size, preflight, setup_fit
from echoclr_cli.finetune.multiclass import (
    CLASSES_FILE,
    _balanced,
    _macro_auroc,
    build_multiclassifier,
    load_categorical,
    predict_classes,
    read_classes,
    write_multiclass_evaluation,
)
from echoclr_cli.finetune.run import FinetuneTask
from echoclr_cli.inference.loader import eval_loader
from echoclr_cli.io import atomic_write_csv, atomic_write_json
from echoclr_cli.models.checkpoint import load_checkpoint
from echoclr_cli.models.weights import init_backbone, input_normalization
from echoclr_cli.runtime import seed_everything, unwrap
from echoclr_cli.training.engine import Engine


class MultiFinetuneTask(FinetuneTask):
    """Engine task: one augmented random clip per video -> K logits -> cross-entropy. Freezing
    (linear, LP-FT) and the per-epoch validation broadcast are the binary task's."""

    def __init__(self, model, cfg: Config, classes, class_weight, val_loader, normalization):
        super().__init__(model, cfg, None, val_loader, normalization)
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
        return {
            "val_loss": loss if loss is not None else math.nan,
            "val_auroc": _macro_auroc(video, self.classes),
            "val_balanced_accuracy": _balanced(video, self.classes),
        }


def study_subset(train_df: pd.DataFrame, frac: float, seed: int) -> pd.DataFrame:
    """``int(frac * N)`` training studies (>= 1), a prefix of one random order per seed."""
    studies = np.array(sorted(train_df["study_id"].astype(str).unique()))
    order = np.random.default_rng(seed).permutation(len(studies))
    keep = set(studies[order[: max(1, int(frac * len(studies)))]])
    return train_df[train_df["study_id"].astype(str).isin(keep)]


def class_weights(y: np.ndarray, k: int, how: Any) -> Tensor | None:
    """``balanced``: n / (K n_k) per class (0 for a class absent from training); else None."""
    if how != "balanced":
        return None
    counts = np.bincount(y.astype(np.int64), minlength=k).astype(np.float64)
    w = np.where(counts > 0, len(y) / (k * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def run_finetune_multiclass(cfg: Config, run: FinetuneRun):
    """Fine-tune a K-class classifier on categorical column ``cfg.finetune.task``."""
    from echoclr_cli.finetune.run import FinetuneResult, _frame_size

    ft = cfg.finetune
    task = ft.task
    data_dir, out_dir, resume, progress = run.data_dir, run.out_dir, run.resume, run.progress
    world_size, _, notes = preflight(cfg, run, task=None)
    df, classes, n_unknown = load_categorical(data_dir, task, cfg)
    if n_unknown:
        notes.append(f"{n_unknown} video(s) without a '{task}' value excluded")
    for split in ("train", "val"):
        if not (df["split"] == split).any():
            raise UserError(f"{data_dir / 'manifest.csv'}: split '{split}' has no videos with a "
                            f"'{task}' value", fix="re-run preprocess with other split fractions")  # fmt: skip
    if resume and (out_dir / CLASSES_FILE).is_file() and read_classes(out_dir) != classes:
        raise UserError(f"--resume: the classes of '{task}' differ from {out_dir / CLASSES_FILE}",
                        fix="resume with the original dataset, or start a new run")  # fmt: skip
    sub_df = study_subset(df[df["split"] == "train"], ft.frac, ft.frac_seed)
    y_train = sub_df[task].to_numpy(dtype=np.int64)
    weight = class_weights(y_train, len(classes), ft.pos_weight)
    absent = [c for i, c in enumerate(classes) if not (y_train == i).any()]
    if absent:
        notes.append(f"class(es) {absent} have no training video in this subset")
    batch_size = capped_batch_size(ft.batch_size, len(sub_df), world_size, notes)
    # The binary tasks' step cap (the demo's 4 steps keep its sweep in budget) left a 4-view
    # model at PLAX recall 0.67-0.92; a multi-class task has its own cap, unset in every profile
    # (docs/BENCHMARKS.md, "A view model with the defaults").
    step_cap = ft.multiclass_max_steps_per_epoch
    if ft.max_steps_per_epoch is not None and step_cap != ft.max_steps_per_epoch:
        notes.append(
            f"finetune.max_steps_per_epoch ({ft.max_steps_per_epoch}) caps binary tasks only; "
            f"this multi-class task trains {f'{step_cap} steps' if step_cap else 'every batch'} "
            "per epoch (finetune.multiclass_max_steps_per_epoch)"
        )

    seed_everything(cfg.runtime.seed)
    model = build_multiclassifier(cfg, len(classes))
    init = None if resume else init_backbone(cfg, model.backbone).to_dict()
    studies = (
        sub_df.groupby("study_id", sort=True)
        .agg(patient_id=("patient_id", "first"), n_videos=("video_id", "size"))
        .reset_index()
    )

    def write_main() -> None:
        atomic_write_json(out_dir / CLASSES_FILE, {"task": task, "classes": classes})
        atomic_write_csv(out_dir / rundir.TRAIN_STUDIES, studies)

    fs = setup_fit(cfg, model, init, run, df=df, sub_df=sub_df, batch_size=batch_size,
                   world_size=world_size, drop_last=True, write_main=write_main)  # fmt: skip
    engine, prepared, init, normalization = fs.engine, fs.prepared, fs.init, fs.normalization
    optimizer, scheduler, sampler = fs.optimizer, fs.scheduler, fs.sampler
    train_loader, val_loader = fs.train_loader, fs.val_loader
    task_obj = MultiFinetuneTask(prepared, cfg, classes, weight, val_loader, normalization)
    fit = engine.fit(task_obj, train_loader, optimizer, scheduler, epochs=ft.epochs,
                     sampler=sampler, checkpoint_every=0, monitor=ft.monitor,
                     monitor_mode="min" if ft.monitor == "val_loss" else "max",
                     patience=ft.patience, nonfinite_tolerance=ft.nonfinite_tolerance,
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
        video_by_split = {}
        for split in splits:
            if progress is not None:
                progress(Status(f"evaluating {split}"))
            loader = eval_loader(
                df[df["split"] == split], data_dir, task, cfg, ft.clip_len, ft.stride
            )
            video_by_split[split], _ = predict_classes(
                base, loader, engine.device, cfg.evaluate.block_size, classes, normalization,
                autocast=engine.autocast,
            )  # fmt: skip
        metrics, _, files = write_multiclass_evaluation(
            cfg, video_by_split, classes, out_dir, out_dir / rundir.HISTORY, progress
        )
        facts = {
            "data_dir": str(data_dir.resolve()), "task": task, "task_kind": "multiclass",
            "classes": classes, "frame_size": _frame_size(df, data_dir), "frac": ft.frac,
            "frac_seed": ft.frac_seed, "n_train_studies": len(studies),
            "n_train_videos": len(sub_df), "class_weight": None if weight is None else weight.tolist(),
            "batch_size": batch_size, "max_steps_per_epoch": step_cap,
            "best_epoch": fit.best_epoch, "best_metric": fit.best_metric, "monitor": ft.monitor,
            "epochs_run": fit.epochs_run, "stopped_early": fit.stopped_early,
            "checkpoint_tested": ckpt.name, "splits": splits, "notes": notes,
        }  # fmt: skip
        atomic_write_json(out_dir / rundir.FINETUNE_FACTS, facts)
    engine.barrier()
    engine.close()
    return FinetuneResult(
        run_dir=out_dir, task=task, metrics=metrics, best_epoch=fit.best_epoch,
        best_metric=fit.best_metric, epochs_run=fit.epochs_run, stopped_early=fit.stopped_early,
        n_train_studies=len(studies), n_train_videos=len(sub_df), n_train_positive_studies=0,
        fraction_extended=False, batch_size=batch_size, pos_weight=None, init=init,
        splits=splits, checkpoint=ckpt, history=fit.history,
        notes=[f"multi-class task '{task}': {len(classes)} classes {classes}", *notes],
        files=files,
    )  # fmt: skip


# --------------------------------------------------------------------------- evaluate / predict
def evaluate_multiclass_run(cfg: Config, run, data_dir: Path, todo: list[str], out_dir: Path,
                            notes: list[str], progress: Progress | None = None) -> dict[str, Any]:  # fmt: skip
    """Predict ``todo`` splits of ``data_dir`` with a loaded multi-class run and write the
    evaluation files into ``out_dir`` (an empty folder). Returns ``{metrics, levels, files}``."""
    from echoclr_cli.inference.evaluate import device_and_autocast

    classes = read_classes(run.run_dir)
    task = run.cfg.finetune.task
    df, _, _ = load_categorical(data_dir, task, classes=classes)
    device, autocast = device_and_autocast(cfg)
    ft = run.cfg.finetune
    video_by_split = {}
    for split in todo:
        loader = eval_loader(df[df["split"] == split], data_dir, task, cfg, ft.clip_len, ft.stride)
        video_by_split[split], _ = predict_classes(
            run.model, loader, device, cfg.evaluate.block_size, classes,
            input_normalization(run.cfg), autocast=autocast, progress=progress,
        )  # fmt: skip
    metrics, levels, files = write_multiclass_evaluation(
        cfg, video_by_split, classes, out_dir, run.run_dir / rundir.HISTORY, progress
    )
    return {"metrics": metrics, "levels": levels, "files": files}


def multiclass_splits(data_dir: Path, task: str, classes: list[str]) -> set[str]:
    """Splits holding videos with a known value of categorical ``task``."""
    df, _, _ = load_categorical(data_dir, task, classes=classes)
    return set(df["split"])


def predict_multiclass_tables(cfg: Config, run, df: pd.DataFrame, data_dir: Path,
                              progress: Progress | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """``echoclr predict`` with a multi-class run: per video ``video_id, study_id, patient_id,
    prob_<class>`` x K, ``y_pred`` (top class), ``n_clips``; per study the mean of its videos'
    probabilities, ``y_pred`` and ``n_videos``."""
    from echoclr_cli.inference.evaluate import device_and_autocast

    classes = read_classes(run.run_dir)
    device, autocast = device_and_autocast(cfg)
    ft = run.cfg.finetune
    loader = eval_loader(df, data_dir, None, cfg, ft.clip_len, ft.stride)
    video, _ = predict_classes(run.model, loader, device, cfg.evaluate.block_size, classes,
                               input_normalization(run.cfg), autocast=autocast, progress=progress)  # fmt: skip
    cols = [f"prob_{c}" for c in classes]
    names = np.asarray(classes, dtype=object)
    video = (
        video.drop(columns=["y_true"]).sort_values(["study_id", "video_id"]).reset_index(drop=True)
    )
    video.insert(
        3 + len(cols), "y_pred", names[video[cols].to_numpy().argmax(axis=1)] if len(video) else []
    )
    study = (
        video.groupby("study_id", sort=True)
        .agg(patient_id=("patient_id", "first"), n_videos=("video_id", "size"))
        .join(video.groupby("study_id", sort=True)[cols].mean())
        .reset_index()
    )
    study["y_pred"] = names[study[cols].to_numpy().argmax(axis=1)] if len(study) else []
    return video, study
