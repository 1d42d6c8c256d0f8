"""A model file written by ``echoclr export`` read back: the file as a callable module, its
contract ``<file>.json``, and the Task the contract describes.

``echoclr predict`` runs an exported binary classifier like a trained run (:func:`exported_run`);
the view filter (``preprocess --view-model``) runs an exported K-class one. TorchScript is loaded
with ``torch.jit.load``, ONNX with onnxruntime on CPU.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError, require_extra
from echoclr_cli.inference.run import LoadedRun, Task

FORMATS = ("torchscript", "onnx")
CONTRACT_FORMAT = "echoclr-export"


def contract_path(path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


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


def load_model_file(path: Path, fmt: str):
    """``(run, session)``: a function of a CPU float tensor -> output tensor, and the loaded
    TorchScript module or ONNX session."""
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
    fn, _ = load_model_file(path, contract["model_format"])
    return ExportedModel(fn, contract), contract


def contract_task(contract: dict[str, Any]) -> Task | None:
    """The Task of an exported classifier (None for an encoder): K-class when its output is
    ``(batch, K)`` (``class_names`` in output order), binary when it is ``(batch,)``."""
    if contract.get("what") != "classifier":
        return None
    column = contract.get("task") or ""
    if len((contract.get("output") or {}).get("shape") or []) > 1:
        return Task.multiclass(column, contract.get("class_names") or [])
    return Task.binary(column)


def exported_run(path: Path, cfg: Config) -> LoadedRun:
    """An exported binary classifier as a :class:`LoadedRun` for ``echoclr predict``.

    The run config is ``cfg`` with the contract's clip length, stride and frame size, and no
    extra normalisation (the graph normalises itself; its min-max is idempotent on the
    already min-max scaled clips ``predict`` feeds it).
    """
    model, contract = load_exported(path)
    task = contract_task(contract)
    if task is None:
        raise UserError(
            f"{path} is an exported encoder (features), not a classifier",
            fix="export the fine-tuned run without --encoder to predict with it",
        )
    if task.is_multiclass:
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
    task = Task.binary(run_cfg.finetune.task)
    return LoadedRun(Path(path).parent, run_cfg, model, Path(path), None, task)
