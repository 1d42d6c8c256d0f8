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
ids. :func:`load_exported` reads a file back (TorchScript with ``torch.jit.load``, ONNX with
onnxruntime on CPU) as a module that ``echoclr predict`` runs like a trained run.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
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
from echoclr_cli.inference.evaluate import LoadedRun
from echoclr_cli.io import atomic_write, atomic_write_json, sha256_file
from echoclr_cli.models import weights

FORMATS = ("torchscript", "onnx")
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}
CONTRACT_FORMAT = "echoclr-export"
MINMAX_EPS = 1e-6  # as echoclr_cli.data.augment
ONNX_OPSET = 17


# --------------------------------------------------------------------------- loading a classifier
def load_classifier(run_dir: Path, device: torch.device | str = "cpu") -> LoadedRun:
    """A fine-tuned classifier from ``config.yaml`` + best.pt (else last.pt), ``weights_only``.

    A run without a classifier head (a pretrain run) is refused with one line.
    """
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
    from echoclr_cli.finetune.multiclass import run_model

    model = run_model(run_dir, run_cfg)  # K outputs for a multi-class run (classes.json)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(
            f"{path} does not match the model of {run_dir}/config.yaml ({str(e).splitlines()[0]})",
            fix="re-run the fine-tune",
        ) from None
    epoch = obj.get("epoch") if isinstance(obj, dict) else None
    return LoadedRun(run_dir, run_cfg, model.to(device).eval(), path, epoch)


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


def run_frame_size(run_dir: Path, run_cfg: Config) -> int:
    """Frame size the run was trained on (``finetune.json``, else ``preprocess.size``)."""
    facts_path = Path(run_dir) / "finetune.json"
    if facts_path.exists():
        size = json.loads(facts_path.read_text()).get("frame_size")
        if size:
            return int(size)
    return int(run_cfg.preprocess.size)


@dataclass
class ExportResult:
    path: Path
    contract_path: Path
    contract: dict[str, Any]
    max_abs_diff: float  # exported vs eager on the check clips


def contract_path(path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


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

    After writing, the file is loaded back and compared with the eager model on ``check_batch``
    random clips; a difference above ``tolerance`` is an error (nothing half-valid is left).
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
        from echoclr_cli.analysis.embed import load_encoder

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
        task = run_cfg.finetune.task
        output = {
            "name": "logit",
            "shape": ["batch"],
            "probability": "sigmoid(logit); a video's probability is the mean over its clips",
        }
        classes = [f"no {task}", task]
        from echoclr_cli.finetune.multiclass import is_multiclass_run, read_classes

        if is_multiclass_run(run_dir):  # K logits, softmax; class_names in output order
            classes = read_classes(run_dir)
            output = {
                "name": "logits",
                "shape": ["batch", len(classes)],
                "probability": "softmax(logits); a video's probabilities are the mean over its clips",
            }
    size = int(frame_size) if frame_size else run_frame_size(run_dir, run_cfg)
    model = Prepared(inner.cpu().eval(), *(norm or (None, None))).eval()
    shape = [1, 3, clip_len, size, size]
    example = torch.rand(check_batch, *shape[1:]) * 255.0
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but works in 2.x
            traced = torch.jit.trace(model, example[:1], check_trace=False)
            atomic_write(out, lambda f: torch.jit.save(traced, f))
    else:
        _export_onnx(model, example[:1], out)
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
    fn, _ = _load(out, fmt)
    with torch.no_grad():
        eager = model(example).numpy()
    got = fn(example).numpy()
    diff = float(np.max(np.abs(got - eager))) if eager.size else 0.0
    if not math.isfinite(diff) or diff > tolerance:
        out.unlink(missing_ok=True)
        raise UserError(
            f"exported {fmt} model differs from the eager model by {diff:.2e} (> {tolerance})",
            fix="report this with the run's config (the exporter lost precision)",
        )
    contract["parity_max_abs_diff"] = diff
    atomic_write_json(cpath, contract)
    return ExportResult(out, cpath, contract, diff)


def _export_onnx(model: nn.Module, example: Tensor, out: Path) -> None:
    require_extra("onnx", "export --format onnx", alternative="--format torchscript")
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated upstream
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


# --------------------------------------------------------------------------- loading an export
class ExportedModel(nn.Module):
    """An exported file as a module: ``(B, 3, T, H, W)`` float clips -> output tensor.

    Runs on CPU (the inputs are moved there and the outputs back to the input's device).
    """

    def __init__(self, fn, contract: dict[str, Any]) -> None:
        super().__init__()
        self.fn = fn
        self.contract = contract

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x.detach().float().cpu()).to(x.device)


def _load(path: Path, fmt: str):
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated upstream, works in 2.x
            ts = torch.jit.load(str(path), map_location="cpu").eval()

        def run_ts(x: Tensor) -> Tensor:
            with torch.no_grad():
                return ts(x)

        return run_ts, ts
    ort = require_extra("onnxruntime", f"the ONNX model {path}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run_onnx(x: Tensor) -> Tensor:
        (y,) = sess.run(None, {"clips": x.numpy().astype(np.float32)})
        return torch.from_numpy(y)

    return run_onnx, sess


def load_exported(path: Path) -> tuple[ExportedModel, dict[str, Any]]:
    """An exported file and its contract: ``(callable module, contract dict)``."""
    path = Path(path)
    cpath = contract_path(path)
    if not path.is_file():
        raise UserError(
            f"exported model {path} not found", fix="pass the file `echoclr export` wrote"
        )
    if not cpath.is_file():
        raise UserError(
            f"{path} has no contract {cpath.name} beside it",
            fix="keep the .json that `echoclr export` wrote next to the model",
        )
    try:
        contract = json.loads(cpath.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cpath} is not valid JSON ({e})", fix="re-export the model") from None
    if contract.get("format") != CONTRACT_FORMAT or contract.get("model_format") not in FORMATS:
        raise UserError(f"{cpath} is not an echoclr export contract", fix="re-export the model")
    fn, _ = _load(path, contract["model_format"])
    return ExportedModel(fn, contract), contract


def exported_run(path: Path, cfg: Config) -> LoadedRun:
    """An exported classifier as a :class:`LoadedRun` for ``echoclr predict``.

    The run config is ``cfg`` with the contract's clip length, stride and frame size, and no
    extra normalisation (the graph normalises itself; its min-max is idempotent on the
    already min-max scaled clips ``predict`` feeds it).
    """
    model, contract = load_exported(path)
    if contract.get("what") != "classifier":
        raise UserError(
            f"{path} is an exported encoder (features), not a classifier",
            fix="export the fine-tuned run without --encoder to predict with it",
        )
    if len(contract.get("output", {}).get("shape", [])) > 1:  # [batch, K]: a multi-class model
        raise UserError(
            f"{path} is an exported multi-class model ({len(contract.get('class_names', []))} "
            "classes); `echoclr predict` takes an exported binary classifier",
            fix="predict with the run dir (one probability column per class), or use the file "
            "as `echoclr preprocess --view-model`",
        )
    run_cfg = cfg.model_copy(deep=True)
    run_cfg.finetune.clip_len = int(contract["clip_len"])
    run_cfg.finetune.stride = int(contract["stride"])
    run_cfg.finetune.normalize = "none"
    run_cfg.finetune.task = contract.get("task") or run_cfg.finetune.task
    run_cfg.preprocess.size = int(contract["frame_size"])
    return LoadedRun(Path(path).parent, run_cfg, model, Path(path), None)
