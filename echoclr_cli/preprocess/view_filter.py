"""View filter in preprocessing: a view classifier picks the videos of one view (e.g. PLAX).

``echoclr preprocess --input RAW --output DATA --view-model MODEL --keep-view plax
[--view-min P]`` = the usual preprocess (every cine decoded once, journaled) followed by
:func:`apply_view_filter` over the stored videos:

1. the view model runs on every video of the full manifest (``preprocess.view_clips`` evenly
   spaced clips per video, batched by ``evaluate.batch_size`` / ``evaluate.block_size``, on the
   GPU when there is one); a video's class probabilities are the mean softmax of its clips;
2. the predictions are cached in ``DATA/view_predictions.csv`` (``video_id, model_key,
   view_pred, prob_<class>...``; ``model_key`` = first 16 hex digits of the model file's SHA-256),
   so re-running with another ``--keep-view`` or ``--view-min`` neither decodes nor predicts again;
3. the manifest keeps the videos whose top class is the kept view (and, with ``--view-min P``,
   whose kept-view probability is >= P); it gains ``view_pred`` (top class, a categorical column)
   and ``view_prob`` (the kept view's probability, as the published ``plax_prob``), next to any
   view column the labels already carry. Every other video is listed in ``skipped.csv`` with
   reason ``view_filter`` and its top class.

MODEL: an echoclr multi-class run dir (``echoclr finetune --task view``), or an ONNX file with a
JSON file ``<file>.json`` beside it: the contract ``echoclr export`` writes (``class_names``,
``clip_len``, ``stride``, ``frame_size``), or a minimal
``{"classes": [...], "clip_len": N, "stride": S, "frame_size": PX}`` for a model from elsewhere
that takes ``(B, 3, T, H, W)`` float clips scaled to [0, 1] and returns ``(B, K)`` logits in the
class order. A TorchScript file runs the code inside it, so it is refused unless
``trust_model_code`` (``--trust-model-code``; a warning names the file); a pickle is never
loaded (``inference.exported.check_model_file``). No model is ever downloaded. Bad MODEL /
``--keep-view`` input is refused with one line before anything is decoded
(:func:`load_view_model`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from echoclr_cli import rundir
from echoclr_cli.data import privacy
from echoclr_cli.data.manifest import load_manifest
from echoclr_cli.errors import UserError
from echoclr_cli.inference.exported import (
    ExportedModel,
    contract_path,
    contract_task,
    load_exported,
    load_model_file,
)
from echoclr_cli.inference.loader import eval_loader
from echoclr_cli.inference.run import Task, load_run, read_task
from echoclr_cli.io import atomic_write_csv, atomic_write_json, read_csv, sha256_file
from echoclr_cli.models.weights import input_normalization
from echoclr_cli.preprocess import outputs
from echoclr_cli.preprocess.run import preprocess
from echoclr_cli.runtime import resolve_device

CACHE = "view_predictions.csv"
REASON = "view_filter"


@dataclass
class ViewModel:
    """A loaded view classifier and how to feed it."""

    model: nn.Module
    task: Task  # K-class: its classes are the views, in the model's output order
    clip_len: int
    stride: int
    frame_size: int | None
    normalization: tuple[Any, Any] | None
    key: str  # identifies the weights in the prediction cache
    source: str

    @property
    def classes(self) -> list[str]:
        return list(self.task.classes)


def _file_model(path: Path, trust_model_code: bool = False) -> ViewModel:
    cpath = contract_path(path)
    if not cpath.is_file():
        raise UserError(
            f"view model {path} has no class list beside it ({cpath.name} missing)",
            fix=f'write {cpath.name} with {{"classes": [...], "clip_len": N, "stride": 1, '
            '"frame_size": 112}, or use the .json `echoclr export` wrote',
        )
    try:
        info = json.loads(cpath.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{cpath} is not valid JSON ({e})", fix="fix or re-export it") from None
    if not isinstance(info, dict):
        raise UserError(f"{cpath} is not a JSON object", fix="write the class list as documented")
    if "format" in info:  # an echoclr export contract
        model, contract = load_exported(path, trust_model_code=trust_model_code)
        task = contract_task(contract)
        if task is None or not task.is_multiclass:
            shape = (contract.get("output") or {}).get("shape") or []
            raise UserError(
                f"{path} is not a multi-class classifier export (output {shape})",
                fix="export a run of `echoclr finetune --task view`",
            )
        classes = list(task.classes)
    else:
        classes = info.get("classes")
        fn, _ = load_model_file(path, trust_model_code=trust_model_code)  # format from its bytes
        model, contract = ExportedModel(fn, info), info
    if not isinstance(classes, list) or len(classes) < 2:
        raise UserError(
            f"{cpath} has no class list (a 'classes' / 'class_names' list of >= 2 names)",
            fix='add "classes": [...] in the order of the model\'s outputs',
        )
    for key in ("clip_len",):
        if not isinstance(contract.get(key), int):
            raise UserError(f"{cpath} lacks an integer '{key}'", fix="add it to the JSON file")
    return ViewModel(
        model=model,
        task=Task.multiclass(contract.get("task") or "", classes),
        clip_len=int(contract["clip_len"]),
        stride=int(contract.get("stride") or 1),
        frame_size=int(contract["frame_size"]) if contract.get("frame_size") else None,
        normalization=None,  # an export normalises inside its graph
        key=sha256_file(path)[:16],
        source=str(path),
    )


def load_view_model(
    cfg, path: Path, keep_view: str | None, *, trust_model_code: bool = False
) -> ViewModel:
    """Load MODEL and check ``keep_view`` is one of its classes (one line otherwise); a
    TorchScript file only with ``trust_model_code``."""
    path = Path(path)
    if not keep_view:
        raise UserError("--view-model needs --keep-view VIEW", fix="e.g. --keep-view plax")
    if path.is_dir():
        if not read_task(path).is_multiclass:
            raise UserError(
                f"view model {path} is not a multi-class fine-tune run (its task.json, or "
                "classes.json before it, names no K-class task)",
                fix="train one with `echoclr finetune --task view`, or pass an exported file",
            )
        run = load_run(path, torch.device("cpu"))
        size = rundir.read_finetune_facts(path).get("frame_size")
        vm = ViewModel(
            model=run.model.eval(),
            task=run.task,
            clip_len=run.cfg.finetune.clip_len,
            stride=run.cfg.finetune.stride,
            frame_size=int(size) if size else None,
            normalization=input_normalization(run.cfg),
            key=sha256_file(run.checkpoint)[:16],
            source=str(path),
        )
    elif path.is_file():
        vm = _file_model(path, trust_model_code)
    else:
        raise UserError(f"view model {path} not found", fix="pass a run dir or a model file")
    if keep_view not in vm.classes:
        raise UserError(
            f"--keep-view {keep_view}: the view model {path} has classes {vm.classes}",
            fix="pick --keep-view among them",
        )
    return vm


def predict_views(cfg, vm: ViewModel, df: pd.DataFrame, data_dir: Path) -> pd.DataFrame:
    """``video_id, view_pred, prob_<class>...`` of manifest rows ``df`` (mean softmax of clips)."""
    device = resolve_device(cfg.runtime.device)
    model = vm.model.to(device)
    loader = eval_loader(df, data_dir, None, cfg, vm.clip_len, vm.stride,
                         clips_per_video=cfg.preprocess.view_clips)  # fmt: skip
    video = vm.task.predict(model, loader, device, cfg.evaluate.block_size, vm.normalization)
    cols = [f"prob_{c}" for c in vm.classes]
    out = video[["video_id", *cols]].copy()
    names = np.asarray(vm.classes, dtype=object)
    out.insert(1, "view_pred", names[out[cols].to_numpy().argmax(axis=1)] if len(out) else [])
    return out


@dataclass
class ViewFilterResult:
    kept: int
    filtered: int
    predicted: int  # videos the model ran on in this call (0 when all were cached)
    by_pred: dict[str, int] = field(default_factory=dict)


def apply_view_filter(cfg, data_dir: Path, vm: ViewModel, keep_view: str,
                      view_min: float | None = None) -> ViewFilterResult:  # fmt: skip
    """Predict (or reuse cached predictions), filter manifest.csv and list the rest in
    skipped.csv (reason ``view_filter``); update dataset.json and report.json counts."""
    data_dir = Path(data_dir)
    path = data_dir / "manifest.csv"
    df = read_csv(path, dtype=str, keep_default_na=False)
    size = json.loads((data_dir / "dataset.json").read_text()).get("size")
    if vm.frame_size and size and int(size) != vm.frame_size:
        raise UserError(
            f"the view model {vm.source} takes {vm.frame_size} px frames, {data_dir} has {size} px",
            fix=f"preprocess with --size {vm.frame_size}",
        )
    cache_path = data_dir / CACHE
    cache = read_csv(cache_path, dtype=str, keep_default_na=False) if cache_path.exists() else None
    cols = [f"prob_{c}" for c in vm.classes]
    have = pd.DataFrame(columns=["video_id", "view_pred", *cols])
    if cache is not None and set(cols) <= set(cache.columns):
        have = cache[cache["model_key"] == vm.key][["video_id", "view_pred", *cols]]
    todo = df[~df["video_id"].isin(set(have["video_id"]))]
    if len(todo):
        rows = load_manifest(data_dir, check_files=True, allow_failed=True)
        new = predict_views(cfg, vm, rows[rows["video_id"].isin(set(todo["video_id"]))], data_dir)
        new = new.astype({c: str for c in cols})
        have = pd.concat([have, new], ignore_index=True)
        keep_old = cache[cache["model_key"] != vm.key] if cache is not None else None
        mine = have.assign(model_key=vm.key)
        all_rows = pd.concat([keep_old, mine], ignore_index=True) if keep_old is not None else mine
        atomic_write_csv(cache_path, all_rows)
    pred = have.set_index("video_id")
    df["view_pred"] = df["video_id"].map(pred["view_pred"])
    prob = pd.to_numeric(df["video_id"].map(pred[f"prob_{keep_view}"]))
    df["view_prob"] = prob.round(6)
    keep = df["view_pred"] == keep_view
    if view_min is not None:
        keep &= prob >= view_min
    kept, dropped = df[keep], df[~keep]
    atomic_write_csv(path, kept)

    # skipped.csv (public reference) + private/skipped_paths.csv
    salt, _ = privacy.resolve_salt(data_dir, None)
    original = privacy.read_id_map(data_dir).get("video", {})
    pub = read_csv(data_dir / "skipped.csv", dtype=str, keep_default_na=False)
    priv_path = data_dir / privacy.PRIVATE / privacy.SKIPPED_PATHS
    priv = (read_csv(priv_path, dtype=str, keep_default_na=False) if priv_path.exists()
            else pd.DataFrame(columns=["file", "path", "detail_private"]))  # fmt: skip
    new_pub, new_priv = [], []
    for vid, top, p in zip(dropped["video_id"], dropped["view_pred"], prob[~keep], strict=True):
        rel = original.get(vid, vid)
        ref = privacy.file_ref(salt, rel)
        why = f"top class {top}; p({keep_view}) = {p:.3f}"
        if view_min is not None:
            why += f" (min {view_min})"
        new_pub.append({"file": ref, "reason": REASON, "detail": f"{why}; video {vid}"})
        new_priv.append({"file": ref, "path": rel, "detail_private": why})
    atomic_write_csv(
        data_dir / "skipped.csv", pd.concat([pub, pd.DataFrame(new_pub)], ignore_index=True)
    )
    privacy.write_private_csv(data_dir, privacy.SKIPPED_PATHS,
                              pd.concat([priv, pd.DataFrame(new_priv)], ignore_index=True))  # fmt: skip

    meta = json.loads((data_dir / "dataset.json").read_text())
    cats = [c for c in meta.get("categorical_columns") or [] if c != "view_pred"]
    meta["categorical_columns"] = [*cats, "view_pred"]
    meta["n_videos"] = len(kept)
    meta["view_filter"] = {"keep_view": keep_view, "view_min": view_min, "model_key": vm.key,
                           "classes": vm.classes, "kept": len(kept), "filtered": len(dropped)}  # fmt: skip
    if kept.empty:
        meta["status"] = "failed"
        meta["reason"] = (
            f"the view filter kept no video ({len(dropped)} filtered, top classes "
            f"{dict(Counter(df['view_pred']))})"
        )
    atomic_write_json(data_dir / "dataset.json", meta)
    rep_path = data_dir / "report.json"
    if rep_path.exists():
        rep = json.loads(rep_path.read_text())
        by = dict(rep.get("skipped_by_reason") or {})
        by[REASON] = by.get(REASON, 0) + len(dropped)
        rep.update(skipped_by_reason=dict(sorted(by.items())), n_videos=len(kept),
                   n_skipped=int(rep.get("n_skipped", 0)) + len(dropped),
                   view_filter=meta["view_filter"])  # fmt: skip
        atomic_write_json(rep_path, rep)
    if kept.empty:
        raise UserError(
            f"{data_dir}: {meta['reason']}; skipped.csv lists them (reason {REASON})",
            fix="check --keep-view and --view-min against the view model's classes",
        )
    return ViewFilterResult(
        kept=len(kept), filtered=len(dropped), predicted=len(todo),
        by_pred=dict(sorted(Counter(df["view_pred"]).items())),
    )  # fmt: skip


def preprocess_with_view_filter(cfg, input_dir, output_dir, progress=None, *,
                                trust_model_code: bool = False):  # fmt: skip
    """``preprocess`` then :func:`apply_view_filter` (the model is checked before decoding;
    a TorchScript one only with ``trust_model_code``)."""
    pc = cfg.preprocess
    if pc.view_model is None:
        if pc.keep_view:
            raise UserError("--keep-view needs --view-model MODEL", fix="pass the view model")
        return preprocess(cfg, input_dir, output_dir, progress), None
    vm = load_view_model(cfg, pc.view_model, pc.keep_view, trust_model_code=trust_model_code)
    res = preprocess(cfg, input_dir, output_dir, progress)
    vf = apply_view_filter(cfg, Path(output_dir), vm, pc.keep_view, pc.keep_view_min)
    res.n_videos = vf.kept
    res.skipped_by_reason = dict(sorted({**res.skipped_by_reason,
                                         REASON: res.skipped_by_reason.get(REASON, 0) + vf.filtered}.items()))  # fmt: skip
    res.n_skipped += vf.filtered
    kept = read_csv(Path(output_dir) / "manifest.csv", dtype=str, keep_default_na=False)
    res.split_sizes = outputs.split_sizes(kept)
    return res, vf
