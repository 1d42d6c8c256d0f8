"""`echoclr export`: a run's classifier (or encoder) as TorchScript or ONNX, with its contract.

The exported graph takes **raw pixel intensities** and does the model's own input preparation,
so a user elsewhere cannot forget it: input ``float32 (batch, 3, T, H, W)`` with values as in
the uint8 frames (grey frames repeated to 3 channels) -> per-clip min-max scaling to [0, 1]
(a constant clip becomes 0) -> channel mean/std normalisation when the run used one -> model.
Output: the classifier's logit ``(batch,)`` (probability = sigmoid(logit), a video's
probability is the mean over its clips) or the encoder's features ``(batch, F)``. Batch is
dynamic; T, H, W are the run's clip length and frame size.

The contract ``<file>.json`` (written beside the model) records all of this plus class names,
echoclr version, a hash of the run's config and the checkpoint's sha256; it holds no paths or
ids. ``inference.exported`` reads a file back as a module that ``echoclr predict`` and the view
filter run like a trained run.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from echoclr_cli import __version__, rundir
from echoclr_cli.config.load import config_to_dict
from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError, require_extra
from echoclr_cli.inference.exported import (
    CONTRACT_FORMAT,
    FORMATS,
    contract_path,
    open_model_file,
    torch_deprecations,
)
from echoclr_cli.inference.run import load_classifier, load_encoder
from echoclr_cli.io import atomic_write, atomic_write_json, replace_own_files, sha256_file
from echoclr_cli.models import weights

SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}
MINMAX_EPS = 1e-6  # as echoclr_cli.data.augment
ONNX_OPSET = 17


# --------------------------------------------------------------------------- the exported graph
class Prepared(nn.Module):
    """Raw-intensity clips -> per-clip min-max -> (mean/std) -> ``inner``."""

    def __init__(self, inner: nn.Module, mean=None, std=None) -> None:
        super().__init__()
        self.inner = inner
        self.normalize = mean is not None
        m = torch.tensor(mean if mean is not None else [0.0] * 3).view(1, 3, 1, 1, 1)
        s = torch.tensor(std if std is not None else [1.0] * 3).view(1, 3, 1, 1, 1)
        self.register_buffer("mean", m.float())
        self.register_buffer("std", s.float())

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, T, H, W) float32 intensities -> logits (B,) or features (B, F)."""
        flat = x.reshape(x.shape[0], -1)  # (B, N)
        lo = flat.amin(dim=1).view(-1, 1, 1, 1, 1)  # (B, 1, 1, 1, 1)
        span = flat.amax(dim=1).view(-1, 1, 1, 1, 1) - lo
        scale = torch.where(span > MINMAX_EPS, 1.0 / span.clamp_min(MINMAX_EPS), span * 0.0)
        x = (x - lo) * scale
        if self.normalize:
            x = (x - self.mean) / self.std
        return self.inner(x)


def _config_hash(cfg: Config) -> str:
    text = json.dumps(config_to_dict(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ExportResult:
    path: Path
    contract_path: Path
    contract: dict[str, Any]
    max_abs_diff: float  # exported vs eager on the check clips


def export_run(
    cfg: Config,
    *,
    run_dir: Path,
    fmt: str,
    out: Path,
    encoder: bool = False,
    frame_size: int | None = None,
    overwrite: bool = False,
    check_batch: int = 2,
    tolerance: float = 1e-4,
) -> ExportResult:
    """Export a run's classifier (``encoder``: its backbone) and write the contract beside it.

    The file is written to a staging folder, loaded back and compared with the eager model on
    ``check_batch`` random clips; a difference above ``tolerance`` is an error (nothing
    half-valid is left). Then ``io.replace_own_files`` moves the model and its contract into
    place: it replaces this export's own earlier files only, never another file.
    ``frame_size`` defaults to the run's (``finetune.json``, else its ``preprocess.size``; a
    pretrain run records no frame size of its own).
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'", fix=f"use {' or '.join(FORMATS)}")
    if fmt == "onnx":  # writing needs onnx, the parity check onnxruntime: both before any work
        for module in ("onnx", "onnxruntime"):
            require_extra(module, "export --format onnx", alternative="--format torchscript")
    out = Path(out)
    cpath = contract_path(out)
    for p in (out, cpath):
        if p.exists() and not overwrite:
            raise UserError(f"{p} already exists", fix="pass --overwrite or another --out")
    run_dir = Path(run_dir)
    if encoder:
        enc = load_encoder(cfg, run_dir)
        run_cfg = rundir.read_run_config(run_dir)
        inner: nn.Module = enc.backbone
        norm, clip_len, ck = enc.normalization, enc.clip_len, Path(str(enc.checkpoint))
        output = {"name": "features", "shape": ["batch", int(enc.backbone.out_dim)]}
        classes = None
    else:
        run = load_classifier(run_dir)
        run_cfg = run.cfg
        inner, norm, ck = run.model, weights.input_normalization(run_cfg), run.checkpoint
        clip_len = run_cfg.finetune.clip_len
        classes = list(run.task.classes)  # in output order
        output = (
            {
                "name": "logits",
                "shape": ["batch", run.task.n_outputs],
                "probability": "softmax(logits); a video's probabilities are the mean over its clips",
            }
            if run.task.is_multiclass
            else {
                "name": "logit",
                "shape": ["batch"],
                "probability": "sigmoid(logit); a video's probability is the mean over its clips",
            }
        )
    size = int(frame_size) if frame_size else rundir.run_frame_size(run_dir)
    model = Prepared(inner.cpu().eval(), *(norm or (None, None))).eval()
    shape = [1, 3, clip_len, size, size]
    example = torch.rand(check_batch, *shape[1:]) * 255.0
    contract = {
        "format": CONTRACT_FORMAT,
        "file": out.name,
        "model_format": fmt,
        "what": "encoder" if encoder else "classifier",
        "input": {
            "name": "clips",
            "shape": ["batch", 3, clip_len, size, size],
            "dtype": "float32",
            "layout": "NCTHW",
            "values": "raw pixel intensities (uint8 frames as float, 0..255); grey frames "
            "repeated to 3 channels",
        },
        "preprocessing_in_model": {
            "scaling": "per-clip min-max to [0, 1] over C,T,H,W (constant clip -> 0)",
            "normalization": {"mean": list(norm[0]), "std": list(norm[1])} if norm else None,
        },
        "clip_len": clip_len,
        "stride": run_cfg.finetune.stride if not encoder else enc.stride,
        "frame_size": size,
        "output": output,
        "task": None if encoder else run_cfg.finetune.task,
        "class_names": classes,
        "arch": run_cfg.model.arch,
        "width": run_cfg.model.width,
        "echoclr_version": __version__,
        "config_hash": _config_hash(run_cfg),
        "checkpoint": ck.name,
        "checkpoint_sha256": sha256_file(ck),
        "opset": ONNX_OPSET if fmt == "onnx" else None,
    }

    def fill(stage: Path) -> float:
        """The model and its contract in the staging folder, once the parity check passed."""
        staged = stage / out.name
        if fmt == "torchscript":
            with torch_deprecations():
                traced = torch.jit.trace(model, example[:1], check_trace=False)
                atomic_write(staged, lambda f: torch.jit.save(traced, f))
        else:
            _export_onnx(model, example[:1], staged)
        fn, _ = open_model_file(staged, fmt)  # the file this call has just written
        with torch.no_grad():
            eager = model(example).numpy()
        got = fn(example).numpy()
        diff = float(np.max(np.abs(got - eager))) if eager.size else 0.0
        if not math.isfinite(diff) or diff > tolerance:
            raise UserError(
                f"exported {fmt} model differs from the eager model by {diff:.2e} (> {tolerance})",
                fix="report this with the run's config (the exporter lost precision)",
            )
        contract["parity_max_abs_diff"] = diff
        atomic_write_json(stage / cpath.name, contract)
        return diff

    # only this export's own earlier files (.echoclr-files.json) are replaced, nothing else
    diff, _ = replace_own_files(out.parent, f"export:{out.name}", fill, overwrite=overwrite)
    return ExportResult(out, cpath, contract, diff)


def _export_onnx(model: nn.Module, example: Tensor, out: Path) -> None:
    require_extra("onnx", "export --format onnx", alternative="--format torchscript")
    tmp = out.with_name(out.name + ".tmp")
    with torch_deprecations():  # the TorchScript-based exporter is deprecated upstream
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["clips"],
            output_names=["output"],
            dynamic_axes={"clips": {0: "batch"}, "output": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    tmp.replace(out)
