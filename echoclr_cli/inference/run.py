"""A trained run read back: its Task, its model and weights, and the backbone of any run or init.

The :class:`Task` is the one answer to "binary or K-class". ``echoclr finetune`` decides it from
the dataset (:func:`task_kind`: a categorical column such as ``view`` gives a K-class task, a
0/1 label column a binary one) and records it in ``RUN/task.json`` before training
(:func:`write_task`). ``evaluate``, ``predict``, ``export`` and the view filter read it back
(:func:`read_task`, :func:`load_run`) and ask it (``kind``, ``classes``, ``n_outputs``,
``build_model``, ``load_rows``, ``predict``) instead of deciding again. A run from before the
record is read the way it was told apart then: ``classes.json`` = K-class, else binary.

:func:`load_run` (evaluate, predict, the view filter) and :func:`load_classifier` (export,
explain) rebuild a fine-tuned classifier; :func:`load_encoder` (embed, ``export --encoder``)
the backbone of a pretrain or fine-tune run, or of the init ``random`` / ``kinetics``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from echoclr_cli import rundir, runtime
from echoclr_cli.config.schema import Config
from echoclr_cli.data.manifest import categorical_columns, dataset_json, load_manifest
from echoclr_cli.errors import UserError
from echoclr_cli.events import Progress
from echoclr_cli.inference.loader import eval_loader, predict_classes, predict_videos
from echoclr_cli.io import atomic_write_json, read_csv
from echoclr_cli.models import weights
from echoclr_cli.models.backbones import Classifier, build_backbone
from echoclr_cli.models.checkpoint import load_checkpoint

BINARY, MULTICLASS = "binary", "multiclass"
TASK_FILE = "task.json"  # {"column", "kind", "classes"}, written when the fine-tune starts
OLD_CLASSES_FILE = "classes.json"  # K-class runs from before task.json: {"task", "classes"}
INITS = ("random", "kinetics")


# --------------------------------------------------------------------------- the task
@dataclass(frozen=True)
class Task:
    """What a fine-tuned model predicts: manifest column ``column``; ``kind`` binary (a 0/1
    label column, one logit) or multiclass (a categorical column, one logit per class);
    ``classes`` in the model's output order (binary: ``("no <column>", "<column>")``)."""

    column: str
    kind: str
    classes: tuple[str, ...]

    @classmethod
    def binary(cls, column: str) -> Task:
        return cls(column, BINARY, (f"no {column}", column))

    @classmethod
    def multiclass(cls, column: str, classes: Sequence[str]) -> Task:
        return cls(column, MULTICLASS, tuple(str(c) for c in classes))

    @property
    def is_multiclass(self) -> bool:
        return self.kind == MULTICLASS

    @property
    def n_outputs(self) -> int:
        """Logits per clip: 1 (binary) or K."""
        return len(self.classes) if self.is_multiclass else 1

    def build_model(self, cfg: Config) -> Classifier:
        """The (untrained) classifier of ``cfg.model`` with ``n_outputs`` logits."""
        backbone = build_backbone(cfg.model.arch, cfg.model.width)
        return Classifier(backbone, cfg.finetune.dropout, self.n_outputs)

    def load_rows(self, data_dir: Path) -> pd.DataFrame:
        """The manifest rows with a known label: binary 0/1, K-class the class index into
        ``classes`` (a value outside them is refused)."""
        if self.is_multiclass:
            return load_categorical(data_dir, self.column, classes=self.classes)[0]
        return load_manifest(data_dir, task=self.column)

    def predict(
        self,
        model: nn.Module,
        loader,
        device: torch.device,
        block_size: int,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        autocast: Callable[[], Any] | None = None,
        progress: Progress | None = None,
    ) -> pd.DataFrame:
        """Per-video predictions (``video_id, study_id, patient_id, y_true, ..., n_clips``):
        binary ``y_prob`` (mean clip sigmoid), K-class ``prob_<class>`` (mean clip softmax)."""
        if self.is_multiclass:
            classes = list(self.classes)
            video, _ = predict_classes(model, loader, device, block_size, classes, normalization,
                                       autocast=autocast, progress=progress)  # fmt: skip
            return video
        return predict_videos(model, loader, device, block_size, normalization,
                              autocast=autocast, progress=progress).video  # fmt: skip


def task_kind(data_dir: Path, column: str) -> str:
    """The one decision, made by ``finetune``: MULTICLASS when ``column`` is a categorical
    column of the dataset (dataset.json, else the manifest header), else BINARY."""
    cols = dataset_json(Path(data_dir)).get("categorical_columns")
    if isinstance(cols, list):
        return MULTICLASS if column in cols else BINARY
    try:
        header = read_csv(Path(data_dir) / "manifest.csv", nrows=0, dtype=str)
    except (OSError, ValueError):
        return BINARY
    header.attrs.pop("categorical_columns", None)
    return MULTICLASS if column in categorical_columns(header) else BINARY


def write_task(run_dir: Path, task: Task) -> None:
    """Record ``task`` in the run dir (``task.json``)."""
    atomic_write_json(Path(run_dir) / TASK_FILE, {"column": task.column, "kind": task.kind,
                                                  "classes": list(task.classes)})  # fmt: skip


def read_task(run_dir: Path) -> Task:
    """The Task a fine-tune run recorded (``task.json``). A run from before the record:
    ``classes.json`` = K-class, else binary on its ``config.yaml``'s ``finetune.task`` (a folder
    without a config reads as binary on no column: it is no K-class run)."""
    run_dir = Path(run_dir)
    path, old = run_dir / TASK_FILE, run_dir / OLD_CLASSES_FILE
    if not path.is_file() and not old.is_file():  # binary, or no run at all
        has_cfg = (run_dir / rundir.CONFIG).is_file()
        return Task.binary(rundir.read_run_config(run_dir).finetune.task if has_cfg else "")
    record = path if path.is_file() else old
    try:
        rec = json.loads(record.read_text())
        if record == old:
            return Task.multiclass(rec["task"], rec["classes"])
        if rec["kind"] == MULTICLASS:
            return Task.multiclass(rec["column"], rec["classes"])
        if rec["kind"] == BINARY:
            return Task.binary(rec["column"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise UserError(f"{record} is unreadable or names no task kind", fix="re-run the fine-tune")


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


# --------------------------------------------------------------------------- trained runs
@dataclass
class LoadedRun:
    """A fine-tune run rebuilt from its dir: resolved config, model, checkpoint used, task."""

    run_dir: Path
    cfg: Config
    model: nn.Module
    checkpoint: Path
    epoch: int | None
    task: Task


def load_run(run_dir: Path, device: torch.device) -> LoadedRun:
    """Rebuild a fine-tuned classifier from ``config.yaml`` + ``checkpoints/best.pt`` (or last.pt)."""
    if not Path(run_dir).is_dir():
        raise UserError(f"run dir {run_dir} does not exist", fix="pass a fine-tune run dir")
    run_cfg = rundir.read_run_config(run_dir)
    path = rundir.run_checkpoint(run_dir)
    ck = load_checkpoint(path, map_location="cpu")
    if ck.get("section") not in (None, "finetune"):
        raise UserError(
            f"{path} is a {ck.get('section')} checkpoint, not a fine-tuned classifier",
            fix="evaluate/predict need a run of `echoclr finetune`",
        )
    return _with_weights(run_dir, run_cfg, path, ck["model"], ck.get("epoch"), device)


def load_classifier(run_dir: Path, device: torch.device | str = "cpu") -> LoadedRun:
    """A fine-tuned classifier from ``config.yaml`` + best.pt (else last.pt), ``weights_only``,
    in eval mode. A run without a classifier head (a pretrain run) is refused with one line."""
    run_dir = Path(run_dir)
    run_cfg = rundir.read_run_config(run_dir)
    path = rundir.run_checkpoint(run_dir)
    obj = weights.read_weights_file(path)
    state, _, _ = weights.unpack_state(obj)
    section = obj.get("section") if isinstance(obj, dict) else None
    if section not in (None, "finetune") or "head.weight" not in state:
        raise UserError(
            f"{run_dir} has no classifier head ({path.name} is a {section or 'backbone'} "
            "checkpoint)",
            fix="pass a run of `echoclr finetune` (or export the backbone with --encoder)",
        )
    epoch = obj.get("epoch") if isinstance(obj, dict) else None
    run = _with_weights(run_dir, run_cfg, path, state, epoch, device)
    run.model.eval()
    return run


def _with_weights(
    run_dir: Path, run_cfg: Config, path: Path, state: dict, epoch: int | None, device
) -> LoadedRun:
    """The run's task model (K outputs for a K-class run) with the checkpoint's weights."""
    task = read_task(run_dir)
    model = task.build_model(run_cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(
            f"{path} does not match the model of {run_dir}/config.yaml ({str(e).splitlines()[0]})",
            fix="re-run the fine-tune",
        ) from None
    return LoadedRun(Path(run_dir), run_cfg, model.to(device), path, epoch, task)


def device_and_autocast(cfg: Config) -> tuple[torch.device, Callable[[], Any]]:
    """Device of ``runtime.device`` and an autocast factory for ``runtime.precision`` (for a
    model run outside the engine)."""
    return runtime.device_and_autocast(cfg.runtime.device, cfg.runtime.precision)


def predict_rows(
    run: LoadedRun,
    cfg: Config,
    df: pd.DataFrame,
    data_dir: Path,
    *,
    labelled: bool,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Per-video predictions of a loaded run on manifest rows ``df`` (the run's clip length
    and stride, the evaluation settings of ``cfg``); ``labelled``: ``y_true`` from the task's
    column (else NaN, for unlabelled input)."""
    device, autocast = device_and_autocast(cfg)
    ft = run.cfg.finetune
    column = run.task.column if labelled else None
    loader = eval_loader(df, data_dir, column, cfg, ft.clip_len, ft.stride)
    norm = weights.input_normalization(run.cfg)
    return run.task.predict(run.model, loader, device, cfg.evaluate.block_size, norm,
                            autocast=autocast, progress=progress)  # fmt: skip


# --------------------------------------------------------------------------- encoders
@dataclass
class Encoder:
    """A backbone ready to embed clips, and how its inputs are prepared."""

    name: str
    source: str  # run dir or init name
    kind: str  # pretrain | finetune | random | kinetics
    backbone: nn.Module
    normalization: tuple[Sequence[float], Sequence[float]] | None
    clip_len: int
    stride: int
    arch: str
    width: float
    checkpoint: str | None = None


def load_encoder(cfg: Config, source: str | Path, clip_len: int | None = None) -> Encoder:
    """Backbone of a run dir (pretrain or fine-tune) or of the init ``random`` / ``kinetics``.

    A run keeps its own model and input normalisation; its clip length is the one it was trained
    with (fine-tune: ``finetune.clip_len``, pretrain: ``pretrain.clip_len``) unless ``clip_len``
    is given. Inits use ``cfg.model`` and ``cfg.finetune.clip_len``.
    """
    src = str(source)
    if src in INITS:
        c = cfg.model_copy(deep=True)
        c.finetune.init = src
        torch.manual_seed(cfg.runtime.seed)  # the random init is reproducible
        backbone = build_backbone(c.model.arch, c.model.width)
        weights.init_backbone(c, backbone)
        return Encoder(
            src, src, src, backbone, weights.input_normalization(c),
            clip_len or c.finetune.clip_len, c.finetune.stride, c.model.arch, c.model.width,
        )  # fmt: skip
    run_dir = Path(src)
    if not run_dir.is_dir():
        raise UserError(
            f"'{src}' is neither a run dir nor one of the inits {', '.join(INITS)}",
            fix="pass a pretrain/finetune --out dir, or --init random|kinetics",
        )
    run_cfg = rundir.read_run_config(run_dir)
    path = rundir.run_checkpoint(run_dir)
    obj = weights.read_weights_file(path)
    state, _, _ = weights.unpack_state(obj)
    kind = obj.get("section") or "finetune"
    backbone = build_backbone(run_cfg.model.arch, run_cfg.model.width)
    weights.load_backbone_weights(backbone, state, source=str(path))
    if kind == "pretrain":
        norm, own_len, stride = None, run_cfg.pretrain.clip_len, run_cfg.pretrain.stride
    else:
        norm = weights.input_normalization(run_cfg)
        own_len, stride = run_cfg.finetune.clip_len, run_cfg.finetune.stride
    return Encoder(
        run_dir.name, src, kind, backbone, norm, clip_len or own_len, stride,
        run_cfg.model.arch, run_cfg.model.width, str(path),
    )  # fmt: skip
