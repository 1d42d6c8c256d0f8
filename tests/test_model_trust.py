"""Model files are data, not code (issue 23, case 2).

The attack: a TorchScript file given to ``echoclr predict`` or ``preprocess --view-model``
wrote a file on load (a ``.pth`` file, which ``site`` runs as code on the next Python start)
and, on forward, copied ``private/salt.json`` to another file. TorchScript can do this:
``torch.from_file(name, shared=True)`` maps a file read-write, and a scripted ``__setstate__``
runs inside ``torch.jit.load``. So a TorchScript file is refused (one line naming the file and
``--trust-model-code``) and nothing of it runs; with the flag it loads and a warning names it.
A pickle is never loaded as a model; ONNX external data must stay in the model's folder.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.inference import export as export_mod
from echoclr_cli.inference import exported
from echoclr_cli.inference.exported import (
    ModelCodeWarning,
    check_model_file,
    load_exported,
    load_model_file,
    sniff_format,
)
from echoclr_cli.inference.predict import predict
from echoclr_cli.preprocess import view_filter as vfm

SALT = b'{"salt": "0123456789abcdef0123456789abcdef"}\n'


class Hostile(nn.Module):
    """Writes ``on_load`` in ``__setstate__`` (inside ``torch.jit.load``) and copies ``src`` to
    ``dst`` on every forward, then answers like a harmless classifier."""

    def __init__(self, on_load: str, src: str, dst: str, n: int, out: int):
        super().__init__()
        self.on_load, self.src, self.dst, self.n, self.out = on_load, src, dst, n, out
        self.buf = torch.zeros(1, dtype=torch.uint8)

    def forward(self, x):
        got = torch.from_file(self.src, shared=False, size=self.n, dtype=torch.uint8)
        put = torch.from_file(self.dst, shared=True, size=self.n, dtype=torch.uint8)
        put.copy_(got)
        logits = torch.zeros(x.shape[0], self.out) + put[0].float() * 0
        return logits.squeeze(1) if self.out == 1 else logits

    @torch.jit.export
    def __getstate__(self):
        return (self.on_load, self.src, self.dst, self.n, self.out, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, str, str, int, int, bool]):
        self.on_load, self.src, self.dst = state[0], state[1], state[2]
        self.n, self.out, self.training = state[3], state[4], state[5]
        code = torch.from_file(self.on_load, shared=True, size=8, dtype=torch.uint8)
        code.fill_(35)  # "########": a comment line in a .pth file; an attacker writes `import ...`
        self.buf = code


def hostile_file(tmp_path: Path, out: int = 1) -> tuple[Path, Path, Path, Path]:
    """(model file, the .pth it writes on load, the salt, the copy forward makes)."""
    salt = tmp_path / "data" / "private" / "salt.json"
    salt.parent.mkdir(parents=True)
    salt.write_bytes(SALT)
    pth, copy = tmp_path / "site" / "echoclr_attack.pth", tmp_path / "stolen_salt.json"
    pth.parent.mkdir()
    model = tmp_path / "models" / "view.pt"
    model.parent.mkdir()
    with warnings.catch_warnings():  # torch.jit's own deprecation notices while building it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(
            torch.jit.script(Hostile(str(pth), str(salt), str(copy), len(SALT), out)), str(model)
        )
    return model, pth, salt, copy


def binary_contract(model: Path, fmt: str = "torchscript") -> None:
    """The contract `echoclr export` writes beside a binary classifier."""
    contract = {
        "format": "echoclr-export", "file": model.name, "model_format": fmt,
        "what": "classifier", "clip_len": 4, "stride": 1, "frame_size": 32,
        "output": {"name": "logit", "shape": ["batch"]}, "task": "label", "class_names": None,
    }  # fmt: skip
    Path(str(model) + ".json").write_text(json.dumps(contract))


def view_json(model: Path) -> None:
    info = {"classes": ["plax", "a4c"], "clip_len": 4, "stride": 1, "frame_size": 32}
    Path(str(model) + ".json").write_text(json.dumps(info))


def nothing_ran(pth: Path, copy: Path) -> None:
    assert not pth.exists(), "the TorchScript file's __setstate__ ran"
    assert not copy.exists(), "the TorchScript file's forward ran"


def refusal(e: pytest.ExceptionInfo, model: Path) -> None:
    text = str(e.value)
    assert "\n" not in text and str(model) in text and "--trust-model-code" in text


# --------------------------------------------------------------------------- the attack
def test_predict_refuses_a_torchscript_file_and_runs_none_of_it(tmp_path):
    model, pth, _, copy = hostile_file(tmp_path)
    binary_contract(model)
    out = tmp_path / "preds.csv"
    with pytest.raises(UserError, match="TorchScript") as e:
        predict(Config(), model, tmp_path / "data", out)
    refusal(e, model)
    nothing_ran(pth, copy)
    assert not out.exists()


def test_view_model_refuses_a_torchscript_file_before_any_work(tmp_path):
    model, pth, _, copy = hostile_file(tmp_path, out=2)
    view_json(model)
    cfg = Config()
    cfg.preprocess.view_model, cfg.preprocess.keep_view = model, "plax"
    with pytest.raises(UserError, match="TorchScript") as e:
        vfm.preprocess_with_view_filter(cfg, tmp_path / "raw", tmp_path / "out")
    refusal(e, model)
    nothing_ran(pth, copy)
    assert not (tmp_path / "out").exists()


def test_a_contract_naming_onnx_does_not_smuggle_torchscript_in(tmp_path):
    model, pth, _, copy = hostile_file(tmp_path)
    binary_contract(model, fmt="onnx")  # the bytes decide, not the contract
    with pytest.raises(UserError, match="TorchScript"):
        load_exported(model)
    nothing_ran(pth, copy)


def test_trust_model_code_loads_it_and_warns_naming_the_file(tmp_path):
    """What the flag means: the file's code runs (here it writes and copies files)."""
    model, pth, salt, copy = hostile_file(tmp_path)
    binary_contract(model)
    with pytest.warns(ModelCodeWarning, match=str(model)):
        loaded, _ = load_exported(model, trust_model_code=True)
    assert pth.exists()  # __setstate__ ran inside torch.jit.load
    loaded(torch.zeros(1, 3, 4, 32, 32))
    assert copy.read_bytes() == salt.read_bytes()  # forward copied the salt


def test_a_pickle_is_never_loaded_as_a_model(tmp_path):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pickle_ran",))

    path = tmp_path / "model.pt"
    torch.save({"model": Payload()}, path)
    assert sniff_format(path) == "pickle"
    with pytest.raises(UserError, match="pickle"):
        load_model_file(path, trust_model_code=True)  # not even with the flag
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UserError, match="pickle"):
        check_model_file(legacy)
    assert not (tmp_path / "pickle_ran").exists()


def test_no_blanket_warning_filter_around_a_load():
    for module in (exported, export_mod):
        source = inspect.getsource(module)
        assert 'simplefilter("ignore")' not in source, module.__name__


# --------------------------------------------------------------------------- ONNX
def _onnx_with_external(folder: Path, location: str) -> Path:
    """An ONNX model ``clips + w`` whose initializer ``w`` lives in the file ``location``."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    x = helper.make_tensor_value_info("clips", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Add", ["clips", "w"], ["output"])], "g", [x],
                              [y], [w])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_onnx_external_data_outside_the_model_folder_is_refused(tmp_path):
    secret = tmp_path / "private" / "secret.bin"
    secret.parent.mkdir()
    np.arange(4, dtype=np.float32).tofile(secret)
    for location in ("../private/secret.bin", str(secret)):
        path = _onnx_with_external(tmp_path / "m", location)
        with pytest.raises(UserError, match="outside the model's folder"):
            load_model_file(path)
    (tmp_path / "m" / "link.bin").symlink_to(secret)  # a link inside that leads out
    path = _onnx_with_external(tmp_path / "m", "link.bin")
    with pytest.raises(UserError, match="outside the model's folder"):
        load_model_file(path)


def test_onnx_external_data_inside_the_folder_loads(tmp_path):
    path = _onnx_with_external(tmp_path / "m", "w.bin")
    np.arange(4, dtype=np.float32).tofile(tmp_path / "m" / "w.bin")
    assert sniff_format(path) == "onnx"
    run, _ = load_model_file(path)
    assert np.allclose(run(torch.ones(4)).numpy(), [1, 2, 3, 4])


def test_a_file_that_is_not_a_model_is_one_line(tmp_path):
    pytest.importorskip("onnx")
    path = tmp_path / "notes.onnx"
    path.write_bytes(b"\x00\xffnot protobuf at all" * 10)
    with pytest.raises(UserError) as e:
        load_model_file(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
