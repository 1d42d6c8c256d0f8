"""Multi-class fine-tuning on a categorical manifest column (e.g. the echo ``view``).

``echoclr finetune --task view`` lands here (``finetune.run_finetune`` dispatches when the task
is one of the dataset's categorical columns, ``manifest.categorical_columns``). Same training
core as the binary task (``Engine.fit``, ``ClipDataset``, device augmentation, init weights,
modes full / linear / lp-ft, best.pt on the monitor), with:

- classes: the sorted distinct non-empty values of the column over the whole manifest, saved in
  ``RUN/classes.json`` (``{"task", "classes"}``; its presence marks a multi-class run for
  ``evaluate``, ``predict``, ``export`` and the view filter); videos with an empty value are
  excluded and counted;
- model: backbone -> dropout -> Linear(out_dim, K) (:class:`MultiClassifier`);
- loss: softmax cross-entropy (``finetune.label_smoothing`` as torch's ``label_smoothing``);
  ``finetune.pos_weight: balanced`` weighs class k by n / (K n_k) over the training videos,
  anything else trains unweighted;
- label fraction: ``int(frac * N)`` training studies, a prefix of one random study order per
  ``frac_seed`` (nested across fractions), at least one;
- steps per epoch: every batch unless ``finetune.multiclass_max_steps_per_epoch`` is set;
  ``finetune.max_steps_per_epoch`` (the demo's 4) caps binary tasks only;
- monitor: ``val_loss`` (mean clip cross-entropy) or ``val_auroc`` = macro one-vs-rest AUROC of
  the validation videos;
- outputs: ``metrics.json`` (``metrics_multiclass``: accuracy, balanced accuracy, macro and
  per-class AUROC with class-stratified bootstrap CIs; video level, and study level when the
  label is constant within studies), ``predictions_{split}_{level}.csv`` with ``y_true`` /
  ``y_pred`` as class names and one ``prob_<class>`` column per class, and
  ``confusion_{split}_{level}.csv`` + ``plots/confusion_{split}_{level}.png``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from echoclr_cli import rundir
from echoclr_cli.config.schema import Config
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.data.manifest import categorical_columns, dataset_json, load_manifest
from echoclr_cli.errors import UserError
from echoclr_cli.events import EvalBatch, Progress, Status
from echoclr_cli.io import atomic_write_csv, atomic_write_json
from echoclr_cli.metrics.multiclass import (
    evaluate_multiclass_frame,
    levels_of,
    prob_columns,
    write_confusion,
)
from echoclr_cli.runtime import loader_len

CLASSES_FILE = "classes.json"


# --------------------------------------------------------------------------- runs and models
def is_multiclass_run(run_dir: Path) -> bool:
    """A run dir of a multi-class fine-tune (it holds ``classes.json``)."""
    return (Path(run_dir) / CLASSES_FILE).is_file()


def read_classes(run_dir: Path) -> list[str]:
    """The class list of a multi-class run."""
    path = Path(run_dir) / CLASSES_FILE
    try:
        classes = json.loads(path.read_text())["classes"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path} is missing or unreadable", fix="re-run the fine-tune") from None
    return [str(c) for c in classes]


class MultiClassifier(nn.Module):
    """Backbone -> Dropout -> Linear(out_dim, K); same parameter names as ``models.Classifier``."""

    def __init__(self, backbone: nn.Module, n_classes: int, dropout: float = 0.25) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.out_dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, T, H, W) -> logits (B, K)."""
        return self.head(self.dropout(self.backbone(x)))


def build_multiclassifier(cfg: Config, n_classes: int) -> MultiClassifier:
    from echoclr_cli.models.backbones import build_backbone

    return MultiClassifier(
        build_backbone(cfg.model.arch, cfg.model.width), n_classes, cfg.finetune.dropout
    )


def run_model(run_dir: Path, run_cfg: Config) -> nn.Module:
    """The (untrained) model of a fine-tune run dir: multi-class when it has ``classes.json``."""
    if is_multiclass_run(run_dir):
        return build_multiclassifier(run_cfg, len(read_classes(run_dir)))
    from echoclr_cli.models.backbones import Classifier, build_backbone

    return Classifier(
        build_backbone(run_cfg.model.arch, run_cfg.model.width), run_cfg.finetune.dropout
    )


# --------------------------------------------------------------------------- the data
def is_categorical_task(data_dir: Path, task: str) -> bool:
    """``task`` is a categorical column of the dataset (dataset.json, else the manifest header)."""
    cols = dataset_json(Path(data_dir)).get("categorical_columns")
    if isinstance(cols, list):
        return task in cols
    path = Path(data_dir) / "manifest.csv"
    try:
        header = pd.read_csv(path, nrows=0, dtype=str)
    except (OSError, ValueError):
        return False
    header.attrs.pop("categorical_columns", None)
    return task in categorical_columns(header)


def load_categorical(
    data_dir: Path, task: str, cfg: Config | None = None, classes: Sequence[str] | None = None
) -> tuple[pd.DataFrame, list[str], int]:
    """Manifest rows with a known ``task`` value, the column turned into float class indices.

    ``classes`` None: the sorted distinct values (at least 2). Given (a trained run's list), a
    value outside it is refused. Returns ``(df, classes, n_excluded_unknown)``.
    """
    df = load_manifest(data_dir, cfg=cfg)
    path = Path(data_dir) / "manifest.csv"
    if task not in df.attrs.get("categorical_columns", []):
        raise UserError(
            f"{path}: '{task}' is not a categorical column "
            f"(categorical: {df.attrs.get('categorical_columns') or 'none'})",
            fix="pick --task among the label or categorical columns",
        )
    known = df[task].astype(str).str.strip() != ""
    n_unknown = int((~known).sum())
    df = df.loc[known].reset_index(drop=True)
    values = df[task].astype(str).str.strip()
    if classes is None:
        classes = sorted(values.unique())
        if len(classes) < 2:
            raise UserError(
                f"{path}: '{task}' has {len(classes)} distinct value(s) {classes}; "
                "a multi-class task needs at least 2",
                fix="pick another --task",
            )
    else:
        extra = sorted(set(values) - set(classes))
        if extra:
            raise UserError(
                f"{path}: '{task}' has value(s) {extra} the model was not trained on "
                f"(classes {list(classes)})",
                fix="evaluate on a dataset with the run's classes",
            )
    index = {c: i for i, c in enumerate(classes)}
    df[task] = values.map(index).astype(np.float32)
    return df, list(classes), n_unknown


# --------------------------------------------------------------------------- model over a dataset
@torch.no_grad()
def predict_classes(
    model: nn.Module,
    loader,
    device: torch.device,
    block_size: int,
    classes: Sequence[str],
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    class_weight: Tensor | None = None,
    smoothing: float = 0.0,
    autocast: Callable[[], Any] | None = None,
    progress: Progress | None = None,
    with_loss: bool = False,
) -> tuple[pd.DataFrame, float | None]:
    """Per-video softmax probabilities (mean over the video's clips) of a K-class model.

    Returns ``(frame, mean clip loss or None)``; frame: ``video_id, study_id, patient_id,
    y_true`` (class index; NaN when the loader has no labels), ``prob_<class>`` x K, ``n_clips``.
    Clips run in blocks of at most ``block_size`` (as ``inference.predict_videos``).
    """
    was_training = model.training
    model.eval()
    mean, std = normalization if normalization is not None else (None, None)
    ctx = autocast or contextlib.nullcontext
    cols = prob_columns(classes)
    rows: list[pd.DataFrame] = []
    loss_sum, loss_n = 0.0, 0
    try:
        for b, batch in enumerate(loader):
            x, n_clips = batch["x"], batch["n_clips"]
            y_video = batch["y"].float()
            y_clip = torch.repeat_interleave(y_video, n_clips)
            blocks = []
            for start in range(0, x.shape[0], block_size):
                block = x[start : start + block_size].to(device, non_blocking=True)
                clips = prepare_clips(block, None, None, mean, std)
                with ctx():
                    logits = model(clips).float()  # (n, K)
                if logits.ndim != 2 or logits.shape[1] != len(classes):
                    raise UserError(
                        f"the view/class model gives outputs of shape {tuple(logits.shape)}, "
                        f"expected (clips, {len(classes)}) for classes {list(classes)}",
                        fix="use the class list the model was trained with",
                    )
                blocks.append(torch.softmax(logits, dim=1).double().cpu())
                if with_loss:
                    target = y_clip[start : start + len(logits)].long().to(device)
                    w = class_weight.to(device) if class_weight is not None else None
                    loss = F.cross_entropy(logits, target, weight=w, label_smoothing=smoothing)
                    loss_sum += float(loss) * len(logits)
                    loss_n += len(logits)
            probs = (
                torch.cat(blocks) if blocks else torch.empty(0, len(classes), dtype=torch.float64)
            )
            per_video = torch.stack([p.mean(0) for p in torch.split(probs, n_clips.tolist())])
            frame = pd.DataFrame(per_video.numpy(), columns=cols)
            frame.insert(0, "video_id", batch["video_id"])
            frame.insert(1, "study_id", batch["study_id"])
            frame.insert(2, "patient_id", batch["patient_id"])
            frame.insert(3, "y_true", y_video.numpy().astype(np.float64))
            frame["n_clips"] = n_clips.numpy().astype(np.int64)
            rows.append(frame)
            if progress is not None:
                progress(EvalBatch(batch=b + 1, batches=loader_len(loader)))
    finally:
        model.train(was_training)
    empty = pd.DataFrame(columns=["video_id", "study_id", "patient_id", "y_true", *cols, "n_clips"])
    video = pd.concat(rows, ignore_index=True) if rows else empty
    return video, (loss_sum / loss_n if loss_n else None)


# --------------------------------------------------------------------------- evaluation files
def write_multiclass_evaluation(
    cfg: Config,
    video_by_split: dict[str, pd.DataFrame],
    classes: Sequence[str],
    out_dir: Path,
    history_csv: Path | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, pd.DataFrame]], list[Path]]:
    """metrics.json, prediction CSVs (class names), confusion CSV/PNG for every split and level."""
    out_dir = Path(out_dir)
    e = cfg.evaluate
    metrics: dict[str, Any] = {}
    levels_by_split: dict[str, dict[str, pd.DataFrame]] = {}
    paths: list[Path] = []
    names = np.asarray(classes, dtype=object)
    for split, video in video_by_split.items():
        levels = levels_of(video, classes)
        levels_by_split[split] = levels
        metrics[split] = {}
        for level, df in levels.items():
            if progress is not None:
                progress(
                    Status(f"metrics {split}/{level}: {len(df)} rows, {e.bootstrap} resamples")
                )
            metrics[split][level] = evaluate_multiclass_frame(
                df, classes, e.bootstrap, e.ci, e.bootstrap_seed
            )
            public = df.copy()
            public["y_true"] = names[public["y_true"].to_numpy(dtype=np.int64)]
            public["y_pred"] = (
                names[df[prob_columns(classes)].to_numpy().argmax(axis=1)] if len(df) else []
            )
            path = rundir.predictions_csv(out_dir, split, level)
            atomic_write_csv(path, public)
            paths.append(path)
            png = out_dir / rundir.PLOTS / f"confusion_{split}_{level}.png" if e.plots else None
            paths += write_confusion(df, classes, out_dir / f"confusion_{split}_{level}.csv", png)
    metrics["thresholds"] = {}
    metrics["reasons"] = {}
    atomic_write_json(out_dir / rundir.METRICS, metrics)
    paths.append(out_dir / rundir.METRICS)
    if e.plots and history_csv is not None and Path(history_csv).exists():
        from echoclr_cli.metrics import plots

        paths.append(plots.plot_history(history_csv, out_dir / rundir.PLOTS / "history.png"))
    return metrics, levels_by_split, paths


def _macro_auroc(video: pd.DataFrame, classes: Sequence[str]) -> float:
    from echoclr_cli.metrics.multiclass import multiclass_metrics

    if video.empty:
        return math.nan
    y = video["y_true"].to_numpy(dtype=np.int64)
    return multiclass_metrics(y, video[prob_columns(classes)].to_numpy(), classes)["auroc"]


def _balanced(video: pd.DataFrame, classes: Sequence[str]) -> float:
    from echoclr_cli.metrics.multiclass import multiclass_metrics

    if video.empty:
        return math.nan
    y = video["y_true"].to_numpy(dtype=np.int64)
    return multiclass_metrics(y, video[prob_columns(classes)].to_numpy(), classes)[
        "balanced_accuracy"
    ]
