"""A model file written by ``echoclr export`` read back: the file as a callable module, its
contract ``<file>.json``, and the Task the contract describes.

``echoclr predict`` runs an exported binary classifier like a trained run (:func:`exported_run`);
the view filter (``preprocess --view-model``) runs an exported K-class one.

A model file is data, not code (issue 23). Its format is read from its bytes, never from its
name or contract (:func:`sniff_format`): ONNX runs in onnxruntime on CPU, after every tensor
stored outside the file was checked to lie inside the model's own folder
(:func:`check_onnx_external_data`). A TorchScript file (a zip with ``code/`` or
``constants.pkl`` entries) carries code that runs on load and on every forward (it can read and
write files), so it is refused in one line unless the caller passes ``trust_model_code``
(``--trust-model-code``), and then a :class:`ModelCodeWarning` names the file. A pickle
(``torch.save``) file is never loaded here: weights come from a run dir (``weights_only``).
Warnings are never switched off around a load.
"""

from __future__ import annotations

import contextlib
import json
import warnings
import zipfile
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


TRUST_FLAG = "--trust-model-code"
PICKLE_MAGIC = 0x80  # the first byte of a pickle (protocol 2+): legacy torch.save files
# torch's own notices that torch.jit and the TorchScript-based ONNX exporter are deprecated
# upstream (they work in 2.x): the only warnings filtered around a load or an export
TORCH_DEPRECATIONS = (
    (FutureWarning, r"`torch\.jit\.\w+` is deprecated"),
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export"),
    (DeprecationWarning, r"The feature will be removed"),
)


class ModelCodeWarning(UserWarning):
    """A model file whose code runs (TorchScript loaded with ``--trust-model-code``)."""


@contextlib.contextmanager
def torch_deprecations():
    """Hide torch's deprecation notices of torch.jit / the legacy ONNX exporter, and only
    them (:data:`TORCH_DEPRECATIONS`): every other warning, ours included, still shows."""
    with warnings.catch_warnings():
        for category, message in TORCH_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def sniff_format(path: Path) -> str:
    """What a model file is, from its bytes (nothing is unpickled or run): ``torchscript`` (a zip
    with ``code/`` or ``constants.pkl`` entries), ``pickle`` (a ``torch.save`` zip, or a raw
    pickle), else ``onnx`` (protobuf has no magic number: onnxruntime then parses it)."""
    path = Path(path)
    names: list[str] | None = None
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile:  # not a zip: only onnxruntime (or nothing) reads it
        names = None
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise UserError(
            f"cannot read model file {path} ({why})", fix="pass a readable file"
        ) from None
    if names is not None:
        parts = [n.split("/") for n in names]
        if any("code" in p[:-1] or p[-1] == "constants.pkl" for p in parts):
            return "torchscript"
        return "pickle"
    if head[:1] == bytes([PICKLE_MAGIC]):
        return "pickle"
    return "onnx"


def check_model_file(
    path: Path, declared: str | None = None, *, trust_model_code: bool = False
) -> str:
    """The format of a model file (:func:`sniff_format`) when it may be loaded; a one-line
    UserError naming the file otherwise: a pickle file, a TorchScript file without
    ``trust_model_code``, a file whose bytes differ from the format its contract ``declared``.
    A trusted TorchScript file is announced with a :class:`ModelCodeWarning` naming it."""
    fmt = sniff_format(path)
    if fmt == "pickle":
        raise UserError(
            f"{path} is a pickle (torch.save) file: unpickling it could run code, so it is "
            "not loaded as a model",
            fix="pass the run dir (its weights are read weights-only) or an ONNX export",
        )
    if fmt == "torchscript" and not trust_model_code:
        raise UserError(
            f"{path} is a TorchScript file: loading it runs the code inside it, which can "
            "read and write your files (refused)",
            fix=f"use an ONNX export (`echoclr export --format onnx`) or a run dir, or pass "
            f"{TRUST_FLAG} if you trust whoever made the file",
        )
    if declared is not None and declared != fmt:
        raise UserError(
            f"{path} is a {fmt} file but its contract says {declared}",
            fix="re-export the model (`echoclr export`)",
        )
    if fmt == "torchscript":
        msg = f"{TRUST_FLAG}: running the code inside the TorchScript file {path} as you"
        warnings.warn(ModelCodeWarning(msg), stacklevel=2)
    return fmt


def load_model_file(path: Path, fmt: str | None = None, *, trust_model_code: bool = False):
    """``(run, session)``: a function of a CPU float tensor -> output tensor, and the loaded
    TorchScript module or ONNX session. ``fmt``: the format a contract declares (checked
    against the file's bytes); TorchScript only with ``trust_model_code`` (:func:`check_model_file`)."""
    path = Path(path)
    return open_model_file(path, check_model_file(path, fmt, trust_model_code=trust_model_code))


def open_model_file(path: Path, fmt: str):
    """:func:`load_model_file` without the checks: only for a file this process has just
    written itself (``echoclr export``'s parity check); everything else goes through
    :func:`load_model_file`."""
    if fmt == "torchscript":
        with torch_deprecations():
            ts = torch.jit.load(str(path), map_location="cpu").eval()

        def run_ts(x: Tensor) -> Tensor:
            with torch.no_grad():
                return ts(x)

        return run_ts, ts
    sess = onnx_session(path)

    def run_onnx(x: Tensor) -> Tensor:
        (y,) = sess.run(None, {"clips": x.numpy().astype(np.float32)})
        return torch.from_numpy(y)

    return run_onnx, sess


def onnx_session(path: Path):
    """An onnxruntime CPU session of an ONNX file whose external data stays in its folder."""
    ort = require_extra("onnxruntime", f"the ONNX model {path}")
    check_onnx_external_data(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own errors (not ONNX, bad graph, bad external data)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is not a model onnxruntime can load ({first})",
            fix="pass an ONNX file (`echoclr export --format onnx`) or a run dir",
        ) from None


def check_onnx_external_data(path: Path) -> None:
    """Refuse (one line) an ONNX file with a tensor stored outside the model's folder: an
    absolute ``location``, ``..``, or a link that resolves elsewhere. The model is parsed
    without its external data (``onnx``), so nothing outside is read."""
    onnx = require_extra("onnx", f"the ONNX model {path}")
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not protobuf
        raise UserError(
            f"{path} is not an ONNX model (nor TorchScript)",
            fix="pass an ONNX file (`echoclr export --format onnx`) or a run dir",
        ) from None
    folder = path.resolve().parent
    for tensor in _onnx_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        where = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = (folder / where).resolve()
        if not where or Path(where).is_absolute() or not target.is_relative_to(folder):
            raise UserError(
                f"{path}: tensor '{tensor.name}' is stored outside the model's folder "
                f"({where!r}); refused",
                fix="keep the model's external data files in the model's own folder",
            )


def _onnx_tensors(graph):
    """Every tensor of an ONNX graph: initializers, sparse ones, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _onnx_tensors(attr.g)
            for g in attr.graphs:
                yield from _onnx_tensors(g)


def load_exported(
    path: Path, *, trust_model_code: bool = False
) -> tuple[ExportedModel, dict[str, Any]]:
    """An exported file and its contract: ``(callable module, contract dict)``; a TorchScript
    file only with ``trust_model_code`` (:func:`check_model_file`)."""
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
    fn, _ = load_model_file(path, contract["model_format"], trust_model_code=trust_model_code)
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


def exported_run(path: Path, cfg: Config, *, trust_model_code: bool = False) -> LoadedRun:
    """An exported binary classifier as a :class:`LoadedRun` for ``echoclr predict``.

    The run config is ``cfg`` with the contract's clip length, stride and frame size, and no
    extra normalisation (the graph normalises itself; its min-max is idempotent on the
    already min-max scaled clips ``predict`` feeds it). A TorchScript file needs
    ``trust_model_code``.
    """
    model, contract = load_exported(path, trust_model_code=trust_model_code)
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
