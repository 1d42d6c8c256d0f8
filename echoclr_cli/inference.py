"""Running a trained classifier over a dataset: clips -> video probabilities -> study.

Used during fine-tuning (validation each epoch), after it (val/test/ext_test metrics), by
``echoclr evaluate`` (:func:`evaluate_run`) and by ``echoclr predict`` (:func:`predict`).

Evaluation clips per video are ``evaluate.clips_per_video`` evenly spaced clips (paper: 4) or
``"all"`` (non-overlapping clips covering the video, see ``datasets.clip_starts``). Whatever the
video length, no forward pass sees more than ``evaluate.block_size`` clips, so activation memory is
bounded by the block size (the uint8 clips of one batch of ``evaluate.batch_size`` videos are held
on the host). A video's probability is the mean of its clips' sigmoids; a study's is the mean of
its videos' (``evaluate.aggregate_levels``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from pydantic import ValidationError
from torch import Tensor, nn
from torch.utils.data import DataLoader

from echoclr_cli import evaluate as ev
from echoclr_cli.config import Config
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.data.datasets import ClipDataset, collate_clips
from echoclr_cli.data.manifest import SPLITS, load_manifest
from echoclr_cli.engine import load_checkpoint, resolve_device, resolve_dtype
from echoclr_cli.errors import UserError
from echoclr_cli.io import atomic_write_csv, atomic_write_json
from echoclr_cli.weights import input_normalization

Progress = Callable[[dict], None] | None
# clip logits (N,), clip labels (N,) -> per-clip losses (N,)
ClipLoss = Callable[[Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- model over a dataset
def eval_loader(
    df: pd.DataFrame,
    data_dir: Path,
    task: str | None,
    cfg: Config,
    clip_len: int,
    stride: int,
    clips_per_video: int | str | None = None,
) -> DataLoader:
    """Evaluation loader: batches of ``evaluate.batch_size`` videos, each with its clips
    (``clips_per_video``, default ``evaluate.clips_per_video``)."""
    dataset = ClipDataset(
        df,
        data_dir,
        task,
        clip_len=clip_len,
        stride=stride,
        train=False,
        clips_per_video=clips_per_video or cfg.evaluate.clips_per_video,
        seed=cfg.runtime.seed,
    )
    return DataLoader(
        dataset,
        batch_size=cfg.evaluate.batch_size,
        shuffle=False,
        num_workers=cfg.runtime.workers,
        collate_fn=collate_clips,
        persistent_workers=False,
    )


@dataclass
class VideoPredictions:
    """Per-video predictions and (when a loss was given) the mean clip loss."""

    video: pd.DataFrame  # video_id, study_id, patient_id, y_true, y_prob, n_clips
    loss: float | None = None
    n_forwards: int = 0
    max_block: int = 0


@torch.no_grad()
def predict_videos(
    model: nn.Module,
    loader: DataLoader | Sequence[dict[str, Any]],
    device: torch.device,
    block_size: int,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    loss_fn: ClipLoss | None = None,
    autocast: Callable[[], Any] | None = None,
    progress: Progress = None,
) -> VideoPredictions:
    """Sigmoid-averaged video probabilities of ``model`` over ``loader`` (collated eval batches).

    Each batch's clips ``x: uint8 (sum N, C, T, H, W)`` run in blocks of at most ``block_size``
    clips: min-max (+ ``normalization``) -> model -> logits ``(n,)``. ``loss_fn`` (per-clip
    losses against the video's label) gives the mean loss over all clips. The model is put in
    eval mode and restored to its previous mode.
    """
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    was_training = model.training
    model.eval()
    mean, std = normalization if normalization is not None else (None, None)
    rows: list[pd.DataFrame] = []
    loss_sum, loss_n, n_forwards, max_block = 0.0, 0, 0, 0
    ctx = autocast or contextlib.nullcontext
    try:
        for b, batch in enumerate(loader):
            x, n_clips = batch["x"], batch["n_clips"]  # (sum N, C, T, H, W) uint8, (B,)
            y_video = batch["y"].float()  # (B,)
            y_clip = torch.repeat_interleave(y_video, n_clips)  # (sum N,)
            probs = torch.empty(x.shape[0], dtype=torch.float64)  # (sum N,)
            for start in range(0, x.shape[0], block_size):
                # (n, C, T, H, W) uint8 with n <= block_size: the only clips on the device
                block = x[start : start + block_size].to(device, non_blocking=True)
                clips = prepare_clips(block, None, None, mean, std)  # (n, 3, T, H, W) float
                with ctx():
                    logits = model(clips).float().reshape(-1)  # (n,)
                n_forwards += 1
                max_block = max(max_block, int(block.shape[0]))
                probs[start : start + len(logits)] = torch.sigmoid(logits).double().cpu()
                if loss_fn is not None:
                    target = y_clip[start : start + len(logits)].to(device)  # (n,)
                    loss_sum += float(loss_fn(logits, target).double().sum())
                    loss_n += len(logits)
            per_video = torch.split(probs, n_clips.tolist())
            rows.append(
                pd.DataFrame(
                    {
                        "video_id": batch["video_id"],
                        "study_id": batch["study_id"],
                        "patient_id": batch["patient_id"],
                        "y_true": y_video.numpy().astype(np.float64),
                        "y_prob": [float(p.mean()) for p in per_video],
                        "n_clips": n_clips.numpy().astype(np.int64),
                    }
                )
            )
            if progress is not None:
                progress({"kind": "eval_batch", "batch": b + 1, "batches": _len(loader)})
    finally:
        model.train(was_training)
    cols = ["video_id", "study_id", "patient_id", "y_true", "y_prob", "n_clips"]
    video = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)
    loss = loss_sum / loss_n if loss_n else None
    return VideoPredictions(video[cols], loss, n_forwards, max_block)


def _len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def auroc(levels: dict[str, pd.DataFrame], level: str) -> float:
    """AUROC of one aggregated level (NaN for one class)."""
    df = levels[level]
    y = df["y_true"].to_numpy(dtype=np.int64)[None]  # (1, n)
    p = df["y_prob"].to_numpy(dtype=np.float64)[None]  # (1, n)
    return float(ev.auroc_rank(y, p)[0]) if len(df) else math.nan


# --------------------------------------------------------------------------- writing results
def write_predictions(
    levels_by_split: dict[str, dict[str, pd.DataFrame]], out_dir: Path
) -> list[Path]:
    """``predictions_{split}_{level}.csv`` for every split and level; returns the paths."""
    paths = []
    for split, levels in levels_by_split.items():
        for level, df in levels.items():
            path = Path(out_dir) / f"predictions_{split}_{level}.csv"
            atomic_write_csv(path, df)
            paths.append(path)
    return paths


def write_evaluation(
    cfg: Config,
    video_by_split: dict[str, pd.DataFrame],
    out_dir: Path,
    history_csv: Path | None = None,
    progress: Progress = None,
) -> tuple[dict[str, Any], dict[str, dict[str, pd.DataFrame]], list[Path]]:
    """Metrics, prediction CSVs and plots of per-video predictions of several splits.

    Thresholds are chosen on ``val`` (when in ``video_by_split``) and applied to the others.
    Writes ``metrics.json``, ``predictions_{split}_{video,study}.csv`` and ``plots/*.png``
    (ROC/PR with CI bands, confusion matrices, calibration, and learning curves when
    ``history_csv`` exists). Returns ``(metrics, levels_by_split, paths written)``.
    """
    out_dir = Path(out_dir)
    cb = (lambda msg: progress({"kind": "status", "message": msg})) if progress else None
    metrics = ev.evaluate_predictions(video_by_split, cfg, progress=cb)
    levels_by_split = {split: ev.aggregate_levels(df) for split, df in video_by_split.items()}
    paths = write_predictions(levels_by_split, out_dir)
    atomic_write_json(out_dir / "metrics.json", metrics)
    paths.append(out_dir / "metrics.json")
    if cfg.evaluate.plots:
        from echoclr_cli import plots

        plot_dir = out_dir / "plots"
        e = cfg.evaluate
        paths += plots.plot_evaluation(
            levels_by_split,
            plot_dir,
            metrics.get("thresholds"),
            n_boot=e.bootstrap,
            seed=e.bootstrap_seed,
            ci=e.ci,
        )
        if history_csv is not None and Path(history_csv).exists():
            paths.append(plots.plot_history(history_csv, plot_dir / "history.png"))
    return metrics, levels_by_split, paths


# --------------------------------------------------------------------------- trained runs
@dataclass
class LoadedRun:
    """A fine-tune run rebuilt from its dir: resolved config, model, checkpoint used."""

    run_dir: Path
    cfg: Config
    model: nn.Module
    checkpoint: Path
    epoch: int | None


def load_run_config(run_dir: Path) -> Config:
    """The resolved ``config.yaml`` a run saved (UserError when absent or unreadable)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise UserError(
            f"{run_dir} has no config.yaml: not an echoclr run dir",
            fix="pass the --out dir of `echoclr finetune`",
        )
    try:
        return Config.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValidationError) as e:
        raise UserError(
            f"{path} is not a valid echoclr config ({str(e).splitlines()[0]})",
            fix="re-run the fine-tune",
        ) from None


def run_checkpoint(run_dir: Path) -> Path:
    """``checkpoints/best.pt`` of a run, else ``checkpoints/last.pt``."""
    ck = Path(run_dir) / "checkpoints"
    for name in ("best.pt", "last.pt"):
        if (ck / name).is_file():
            return ck / name
    raise UserError(
        f"{run_dir} has no checkpoints/best.pt or checkpoints/last.pt",
        fix="train the run first (`echoclr finetune`)",
    )


def load_run(run_dir: Path, device: torch.device) -> LoadedRun:
    """Rebuild a fine-tuned classifier from ``config.yaml`` + ``checkpoints/best.pt`` (or last.pt)."""
    from echoclr_cli.models import Classifier, build_backbone

    run_cfg = load_run_config(run_dir)
    path = run_checkpoint(run_dir)
    ck = load_checkpoint(path, map_location="cpu")
    if ck.get("section") not in (None, "finetune"):
        raise UserError(
            f"{path} is a {ck.get('section')} checkpoint, not a fine-tuned classifier",
            fix="evaluate/predict need a run of `echoclr finetune`",
        )
    model = Classifier(
        build_backbone(run_cfg.model.arch, run_cfg.model.width), run_cfg.finetune.dropout
    )
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise UserError(
            f"{path} does not match the model of {run_dir}/config.yaml ({str(e).splitlines()[0]})",
            fix="re-run the fine-tune",
        ) from None
    return LoadedRun(Path(run_dir), run_cfg, model.to(device), path, ck.get("epoch"))


def _device_and_autocast(cfg: Config) -> tuple[torch.device, Callable[[], Any]]:
    device = resolve_device(cfg.runtime.device)
    dtype = resolve_dtype(cfg.runtime.precision, device)

    def autocast():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    return device, autocast


def predict_split_videos(
    run: LoadedRun,
    cfg: Config,
    df: pd.DataFrame,
    data_dir: Path,
    task: str | None,
    progress: Progress = None,
) -> pd.DataFrame:
    """Per-video predictions of a loaded run on manifest rows ``df`` (eval settings of ``cfg``)."""
    device, autocast = _device_and_autocast(cfg)
    ft = run.cfg.finetune
    loader = eval_loader(df, data_dir, task, cfg, ft.clip_len, ft.stride)
    preds = predict_videos(
        run.model,
        loader,
        device,
        cfg.evaluate.block_size,
        input_normalization(run.cfg),
        autocast=autocast,
        progress=progress,
    )
    return preds.video


@dataclass
class EvaluateResult:
    """What ``echoclr evaluate`` computed and wrote."""

    run_dir: Path
    out_dir: Path
    checkpoint: Path
    task: str
    splits: list[str]
    metrics: dict[str, Any]
    table: pd.DataFrame  # split, level, metric, value, ci_low, ci_high, n
    predictions: dict[str, dict[str, pd.DataFrame]]  # split -> level -> frame
    comparison: dict[str, Any] | None = None  # split -> level -> compare_runs dict
    files: list[Path] = field(default_factory=list)


def _run_data_dir(run_dir: Path, data_dir: Path | None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    recorded = _run_facts(run_dir).get("data_dir")
    if recorded:
        return Path(recorded)
    raise UserError(
        f"no dataset given and {run_dir}/finetune.json does not name one", fix="pass --data DATA"
    )


def evaluate_run(
    cfg: Config,
    run_dir: Path,
    data_dir: Path | None,
    splits: Sequence[str],
    compare: Path | None = None,
    out_dir: Path | None = None,
    progress: Progress = None,
) -> EvaluateResult:
    """Evaluate a fine-tuned run on ``splits`` of a dataset (and compare it with another run).

    The model is rebuilt from the run's ``config.yaml`` + ``checkpoints/best.pt`` (fallback
    ``last.pt``); evaluation settings (clips per video, block size, bootstrap, CI, plots) and
    runtime (device, workers) come from ``cfg``. ``val`` is always evaluated too when the dataset
    has it, because the thresholds reported for the other splits are chosen on it. ``data_dir``
    None = the dataset the run was trained on (``finetune.json``). Files (metrics.json,
    predictions CSVs, plots, comparison.json) go to ``out_dir`` (default: the run dir).
    ``compare``: another fine-tune run on the same task; both are evaluated with the same settings
    on the same items and compared per split and level with ``evaluate.compare_runs``
    (paired stratified bootstrap of the AUROC difference A - B, and DeLong's test).
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    device, _ = _device_and_autocast(cfg)
    run = load_run(run_dir, device)
    task = run.cfg.finetune.task
    data_dir = _run_data_dir(run_dir, data_dir)
    df = load_manifest(data_dir, task=task)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise UserError(f"unknown split(s) {unknown}", fix=f"use {', '.join(SPLITS)}")
    present = set(df["split"])
    absent = [s for s in splits if s not in present]
    if absent:
        raise UserError(
            f"{data_dir / 'manifest.csv'} has no labelled '{task}' videos in split(s) {absent} "
            f"(present: {sorted(present)})",
            fix="pick --splits among the present ones",
        )
    todo = (["val"] if "val" in present and "val" not in splits else []) + list(splits)
    video_by_split = {}
    for split in todo:
        if progress:
            progress({"kind": "status", "message": f"predicting {split}"})
        video_by_split[split] = predict_split_videos(
            run, cfg, df[df["split"] == split], data_dir, task, progress
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    hist = run_dir / "history.csv"
    metrics, levels, files = write_evaluation(cfg, video_by_split, out_dir, hist, progress)
    comparison = None
    if compare is not None:
        comparison = _compare(cfg, run, Path(compare), df, data_dir, levels, device, progress)
        atomic_write_json(out_dir / "comparison.json", comparison)
        files.append(out_dir / "comparison.json")
    return EvaluateResult(
        run_dir=run_dir,
        out_dir=out_dir,
        checkpoint=run.checkpoint,
        task=task,
        splits=todo,
        metrics=metrics,
        table=ev.metrics_to_frame(metrics),
        predictions=levels,
        comparison=comparison,
        files=files,
    )


def _compare(
    cfg: Config,
    run: LoadedRun,
    other_dir: Path,
    df: pd.DataFrame,
    data_dir: Path,
    levels: dict[str, dict[str, pd.DataFrame]],
    device: torch.device,
    progress: Progress,
) -> dict[str, Any]:
    other = load_run(other_dir, device)
    if other.cfg.finetune.task != run.cfg.finetune.task:
        raise UserError(
            f"cannot compare runs of different tasks: {run.run_dir} ({run.cfg.finetune.task}) vs "
            f"{other_dir} ({other.cfg.finetune.task})",
            fix="compare two runs of the same --task",
        )
    e = cfg.evaluate
    out: dict[str, Any] = {"run_a": str(run.run_dir), "run_b": str(other_dir), "splits": {}}
    for split, by_level in levels.items():
        if progress:
            progress({"kind": "status", "message": f"predicting {split} with {other_dir}"})
        video_b = predict_split_videos(
            other, cfg, df[df["split"] == split], data_dir, run.cfg.finetune.task, progress
        )
        levels_b = ev.aggregate_levels(video_b)
        out["splits"][split] = {
            level: ev.compare_runs(
                by_level[level],
                levels_b[level],
                n=e.bootstrap,
                seed=e.bootstrap_seed,
                ci=e.ci,
                on="study_id" if level == "study" else "video_id",
            )
            for level in by_level
        }
    return out


# --------------------------------------------------------------------------- predict
@dataclass
class PredictResult:
    """What ``echoclr predict`` wrote."""

    video_csv: Path
    study_csv: Path
    data_dir: Path
    preprocessed: bool  # True when the input was raw files, preprocessed into data_dir
    n_videos: int
    n_studies: int
    video: pd.DataFrame
    study: pd.DataFrame


def study_csv_path(out_csv: Path) -> Path:
    """``preds.csv`` -> ``preds_study.csv`` (the study-level companion file)."""
    out_csv = Path(out_csv)
    return out_csv.with_name(f"{out_csv.stem}_study{out_csv.suffix or '.csv'}")


def predict(
    cfg: Config,
    run_dir: Path,
    input_path: Path,
    out_csv: Path,
    overwrite: bool = False,
    progress: Progress = None,
) -> PredictResult:
    """Probabilities of a fine-tuned run for every video and study of ``input_path``; no labels needed.

    ``input_path`` is a dataset dir (has ``manifest.csv``; every split is predicted) or raw
    DICOM/video files, which are first preprocessed with ``echoclr_cli.preprocess.preprocess``
    (at the run's frame size) into the sibling dir ``<out_csv stem>_data/`` (kept: it holds
    ``skipped.csv`` and ``id_map.csv``, which maps the hashed ids back to the original ones).
    Writes ``out_csv`` (one row per video: ``video_id, study_id, patient_id, split, y_prob,
    n_clips``) and ``<stem>_study.csv`` (one row per study: ``study_id, patient_id, y_prob,
    n_videos``); when the dataset dir has ``id_map.csv``, the original ids are added
    (``original_video, original_study_id`` / ``original_study_id, original_patient_id``).
    Existing output files are refused unless ``overwrite``.
    """
    out_csv = Path(out_csv)
    study_csv = study_csv_path(out_csv)
    for p in (out_csv, study_csv):
        if p.exists() and not overwrite:
            raise UserError(f"{p} already exists", fix="pass --overwrite or another output path")
    device, _ = _device_and_autocast(cfg)
    if Path(run_dir).is_file():  # a model file written by `echoclr export` (+ its contract)
        from echoclr_cli.export import exported_run

        run = exported_run(Path(run_dir), cfg)
    else:
        run = load_run(Path(run_dir), device)
    input_path = Path(input_path)
    preprocessed = False
    if (input_path / "manifest.csv").exists():
        data_dir = input_path
    else:
        data_dir = out_csv.with_name(f"{out_csv.stem}_data")
        _preprocess_for_predict(cfg, run, input_path, data_dir, overwrite, progress)
        preprocessed = True
    df = load_manifest(data_dir)
    video = predict_split_videos(run, cfg, df, data_dir, None, progress)
    split_of = dict(zip(df["video_id"].astype(str), df["split"], strict=True))
    # aggregate() needs labels: a constant stand-in, dropped again below.
    levels = ev.aggregate_levels(video.assign(y_true=-1))
    video_out = levels["video"].drop(columns=["y_true"])
    video_out.insert(3, "split", video_out["video_id"].map(split_of))
    study_out = levels["study"].drop(columns=["y_true"])
    original = _original_ids(data_dir)
    if original:  # preprocess de-identified the ids: give the user's own ids back
        video_out["original_video"] = video_out["video_id"].map(
            lambda v, k="video": original.get(k, {}).get(v)
        )
        video_out["original_study_id"] = video_out["study_id"].map(
            lambda v, k="study": original.get(k, {}).get(v)
        )
        study_out["original_study_id"] = study_out["study_id"].map(
            lambda v, k="study": original.get(k, {}).get(v)
        )
        study_out["original_patient_id"] = study_out["patient_id"].map(
            lambda v, k="patient": original.get(k, {}).get(v)
        )
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out_csv, video_out)
    atomic_write_csv(study_csv, study_out)
    return PredictResult(
        out_csv,
        study_csv,
        data_dir,
        preprocessed,
        len(video_out),
        len(study_out),
        video_out,
        study_out,
    )


def _preprocess_for_predict(
    cfg: Config,
    run: LoadedRun,
    input_path: Path,
    data_dir: Path,
    overwrite: bool,
    progress: Progress,
) -> None:
    """Preprocess raw input into ``data_dir`` at the frame size the run was trained on."""
    if not input_path.exists():
        raise UserError(
            f"input {input_path} does not exist", fix="pass a dataset dir or raw DICOM/video files"
        )
    from echoclr_cli.preprocess import preprocess

    if data_dir.exists() and any(data_dir.iterdir()) and not overwrite:
        raise UserError(
            f"{data_dir} (the preprocessed input of an earlier predict) already exists",
            fix=f"pass {data_dir} as the input to reuse it, or --overwrite",
        )
    size = _run_facts(run.run_dir).get("frame_size") or run.cfg.preprocess.size
    pp = cfg.preprocess.model_copy(
        update={"size": int(size), "input": input_path, "overwrite": True}
    )
    cb = (
        (lambda done, total: progress({"kind": "preprocess", "done": done, "total": total}))
        if progress
        else None
    )
    preprocess(cfg.model_copy(update={"preprocess": pp}), input_path, data_dir, progress=cb)


def _original_ids(data_dir: Path) -> dict[str, dict[str, str]]:
    """``id_map.csv`` of a dataset dir as ``{kind: {hashed: original}}`` (empty when absent)."""
    path = Path(data_dir) / "id_map.csv"
    if not path.exists():
        return {}
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"kind", "original", "hashed"} <= set(df.columns):
        return {}
    return {k: dict(zip(g["hashed"], g["original"], strict=True)) for k, g in df.groupby("kind")}


def _run_facts(run_dir: Path) -> dict[str, Any]:
    """``finetune.json`` of a run (empty when absent)."""
    import json

    path = Path(run_dir) / "finetune.json"
    return json.loads(path.read_text()) if path.exists() else {}
