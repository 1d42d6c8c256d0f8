"""`echoclr export`: TorchScript / ONNX parity with the eager model, contract, predict on the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from explain_fixtures import make_runs
from typer.testing import CliRunner

from echoclr_cli import cli
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.data.clips import read_clip
from echoclr_cli.data.store import load_video
from echoclr_cli.errors import UserError
from echoclr_cli.inference.export import export_run
from echoclr_cli.inference.exported import contract_path, exported_run, load_exported
from echoclr_cli.inference.run import load_classifier
from echoclr_cli.models.weights import input_normalization

pytest.importorskip("onnxruntime")
TOL = 1e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("export"))


def real_clips(runs, n: int = 3) -> torch.Tensor:
    """uint8 (n, C, T, H, W) clips of the dataset's first videos."""
    df = pd.read_csv(runs.data / "manifest.csv")
    clips = []
    for path in df["path"][:n]:
        video = load_video(runs.data / path)
        clips.append(read_clip(video, 0, runs.cfg.finetune.clip_len, 1))
    return torch.from_numpy(np.stack(clips))


def eager_logits(runs, x_uint8: torch.Tensor) -> np.ndarray:
    run = load_classifier(runs.finetune)
    mean, std = input_normalization(run.cfg) or (None, None)
    with torch.no_grad():
        return run.model(prepare_clips(x_uint8, None, None, mean, std)).numpy()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_parity_dynamic_batch_and_contract(runs, tmp_path, fmt):
    out = tmp_path / f"model.{fmt}"
    res = export_run(runs.cfg, run_dir=runs.finetune, fmt=fmt, out=out)
    assert out.is_file() and res.contract_path == contract_path(out)
    c = json.loads(res.contract_path.read_text())
    assert c["input"]["shape"] == ["batch", 3, 4, 32, 32] and c["input"]["dtype"] == "float32"
    assert c["clip_len"] == 4 and c["class_names"] == ["no lvh", "lvh"]
    assert c["preprocessing_in_model"]["normalization"] is None  # random init: no mean/std
    assert len(c["config_hash"]) == 16 and c["echoclr_version"]
    assert str(runs.finetune) not in res.contract_path.read_text()  # no paths in the contract
    model, contract = load_exported(out, trust_model_code=fmt == "torchscript")
    assert contract == c
    for n in (1, 3):  # dynamic batch (exported with a batch of 1)
        x = real_clips(runs, n)
        raw = x.float().expand(-1, 3, -1, -1, -1)  # intensities, grey repeated to 3 channels
        got = model(raw).numpy()
        assert got.shape == (n,)
        np.testing.assert_allclose(got, eager_logits(runs, x), atol=TOL, rtol=0)


def test_export_applies_kinetics_normalisation_in_the_graph(runs, tmp_path):
    # A run fine-tuned from Kinetics weights normalises its inputs: the graph must do it too.
    import yaml

    cfg_path = runs.finetune / "config.yaml"
    saved = cfg_path.read_text()
    d = yaml.safe_load(saved)
    d["finetune"]["normalize"] = "kinetics"
    cfg_path.write_text(yaml.safe_dump(d))
    try:
        res = export_run(runs.cfg, run_dir=runs.finetune, fmt="torchscript", out=tmp_path / "k.pt")
        assert res.contract["preprocessing_in_model"]["normalization"]["mean"][0] == 0.43216
        model, _ = load_exported(tmp_path / "k.pt", trust_model_code=True)
        x = real_clips(runs, 2)
        np.testing.assert_allclose(
            model(x.float().expand(-1, 3, -1, -1, -1)).numpy(),
            eager_logits(runs, x),
            atol=TOL,
            rtol=0,
        )
    finally:
        cfg_path.write_text(saved)


ORT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import onnxruntime as ort

    model, clips, out = sys.argv[1:4]
    contract = json.load(open(model + ".json"))
    x = np.load(clips).astype(np.float32)  # uint8 (B, C, T, H, W) as float intensities
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    assert list(x.shape[1:]) == contract["input"]["shape"][1:]
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {contract["input"]["name"]: x})
    np.save(out, y)
    assert "torch" not in sys.modules, "torch was imported"
    print("ok")
    """
)


def test_onnx_runs_in_onnxruntime_without_torch(runs, tmp_path):
    model = tmp_path / "model.onnx"
    export_run(runs.cfg, run_dir=runs.finetune, fmt="onnx", out=model)
    x = real_clips(runs, 3)
    np.save(tmp_path / "clips.npy", x.numpy())
    script = tmp_path / "ort_only.py"
    script.write_text(ORT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not even echoclr
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(model),
            str(tmp_path / "clips.npy"),
            str(tmp_path / "y.npy"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), eager_logits(runs, x), atol=TOL, rtol=0)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_predict_accepts_the_exported_file(runs, tmp_path, fmt):
    from echoclr_cli.inference.predict import predict

    out = tmp_path / f"model.{fmt}"
    export_run(runs.cfg, run_dir=runs.finetune, fmt=fmt, out=out)
    a = predict(runs.cfg, runs.finetune, runs.data, tmp_path / "run.csv")
    b = predict(runs.cfg, out, runs.data, tmp_path / "exported.csv",
                trust_model_code=fmt == "torchscript")  # fmt: skip
    assert list(a.video["video_id"]) == list(b.video["video_id"])
    np.testing.assert_allclose(b.video["y_prob"], a.video["y_prob"], atol=TOL, rtol=0)
    np.testing.assert_allclose(b.study["y_prob"], a.study["y_prob"], atol=TOL, rtol=0)


def test_export_encoder_of_a_pretrain_run(runs, tmp_path):
    res = export_run(
        runs.cfg,
        run_dir=runs.pretrain,
        fmt="onnx",
        out=tmp_path / "enc.onnx",
        encoder=True,
        frame_size=32,
    )
    assert res.contract["what"] == "encoder" and res.contract["class_names"] is None
    model, contract = load_exported(tmp_path / "enc.onnx")
    x = real_clips(runs, 2).float().expand(-1, 3, -1, -1, -1)
    assert model(x).shape == (2, contract["output"]["shape"][1])
    with pytest.raises(UserError, match="encoder"):  # predict needs a classifier
        exported_run(tmp_path / "enc.onnx", runs.cfg)


def test_export_refuses_a_run_without_classifier_head(runs, tmp_path):
    with pytest.raises(UserError, match="no classifier head"):
        export_run(runs.cfg, run_dir=runs.pretrain, fmt="onnx", out=tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_existing_file_unless_overwrite(runs, tmp_path):
    out = tmp_path / "m.pt"
    export_run(runs.cfg, run_dir=runs.finetune, fmt="torchscript", out=out)
    with pytest.raises(UserError, match="already exists"):
        export_run(runs.cfg, run_dir=runs.finetune, fmt="torchscript", out=out)
    export_run(runs.cfg, run_dir=runs.finetune, fmt="torchscript", out=out, overwrite=True)


def test_load_exported_needs_its_contract(runs, tmp_path):
    out = tmp_path / "m.pt"
    export_run(runs.cfg, run_dir=runs.finetune, fmt="torchscript", out=out)
    contract_path(out).unlink()
    with pytest.raises(UserError, match="no contract"):
        load_exported(out)


def test_cli_export_one_line_errors(runs, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli.app, ["export", str(runs.pretrain), "--format", "onnx"])
    assert res.exit_code == 1 and "no classifier head" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(cli.app, ["export", str(runs.finetune), "--format", "tflite"])
    assert res.exit_code == 1 and "unknown export format" in res.output
    out = tmp_path / "cli.onnx"
    res = runner.invoke(cli.app, ["export", str(runs.finetune), "--format", "onnx", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file() and contract_path(out).is_file()
    res = runner.invoke(
        cli.app,
        [
            "export",
            str(runs.pretrain),
            "--encoder",
            "--format",
            "torchscript",
            "--frame-size",
            "32",
            "-o",
            str(tmp_path / "e.pt"),
        ],
    )
    assert res.exit_code == 0, res.output
