"""`echoclr demo` orchestration: every stage runs once, then is skipped when its output is complete."""

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

import echoclr_cli.preprocess.run as pre_mod
import echoclr_cli.pretrain.run as pt_mod
import echoclr_cli.sweep as sweep_mod
import echoclr_cli.synth.archive as synth_mod
from echoclr_cli.cli import app
from echoclr_cli.config.load import load_config
from echoclr_cli.demo import run_demo


def write_pretrain_run(run_dir: Path, epochs_done: int) -> None:
    """What the engine leaves after ``epochs_done`` epochs: last.pt and history.csv."""
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"checkpoint")
    epochs = list(range(1, epochs_done + 1))
    pd.DataFrame({"epoch": epochs, "loss": [1.0] * epochs_done}).to_csv(
        run_dir / "history.csv", index=False
    )


def fake_stages(monkeypatch, calls):
    def synthesize(cfg, out, progress=None):
        calls.append(("synth", out))
        out.mkdir(parents=True)
        (out / "synth.json").write_text("{}")

    def preprocess(cfg, inp, out, progress=None):
        calls.append(("preprocess", inp, out))

    def run_pretrain(cfg, data, out, resume=False, progress=None):
        calls.append(("pretrain", cfg.pretrain.method, resume))
        write_pretrain_run(out, cfg.pretrain.epochs)

    class Result:
        dry_run = False
        trained: list = []
        failed: list = []
        out_dir = None
        tables: dict = {}
        figures: list = []

    def run_sweep(*, cfg, data_dir, out_dir, progress=None):
        calls.append(("sweep", tuple(cfg.sweep.inits), out_dir))
        return Result()

    monkeypatch.setattr(synth_mod, "synthesize", synthesize)
    monkeypatch.setattr(pre_mod, "preprocess", preprocess)
    monkeypatch.setattr(pt_mod, "run_pretrain", run_pretrain)
    monkeypatch.setattr(sweep_mod, "run_sweep", run_sweep)


def test_demo_runs_each_stage_then_skips_finished_ones(tmp_path, monkeypatch):
    calls = []
    fake_stages(monkeypatch, calls)
    cfg = load_config(profile="demo")
    res = run_demo(cfg=cfg, root=tmp_path / "demo")
    assert [c[0] for c in calls] == ["synth", "preprocess", *["pretrain"] * 3, "sweep"]
    assert [c[1:] for c in calls[2:5]] == [(m, False) for m in ("simclr", "mi-simclr", "echoclr")]
    assert calls[5][1] == ("random", "random-bn", "simclr", "mi-simclr", "echoclr")
    assert calls[5][2] == tmp_path / "demo/runs/sweep"
    assert res.stages_skipped == []
    calls.clear()
    res = run_demo(cfg=cfg, root=tmp_path / "demo")
    assert [c[0] for c in calls] == ["preprocess", "sweep"]  # both idempotent by themselves
    assert res.stages_skipped == [
        "synth",
        "pretrain simclr",
        "pretrain mi-simclr",
        "pretrain echoclr",
    ]


def test_demo_resumes_an_interrupted_pretraining(tmp_path, monkeypatch):
    calls = []
    fake_stages(monkeypatch, calls)
    cfg = load_config(profile="demo")
    write_pretrain_run(tmp_path / "demo/runs/pretrain/echoclr", 3)  # killed after epoch 3
    run_demo(cfg=cfg, root=tmp_path / "demo")
    assert ("pretrain", "echoclr", True) in calls and ("pretrain", "mi-simclr", False) in calls


def test_demo_cli_wires_root(tmp_path, monkeypatch):
    calls = []
    fake_stages(monkeypatch, calls)
    res = CliRunner().invoke(app, ["demo", "--root", str(tmp_path / "d"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert calls[0] == ("synth", tmp_path / "d/raw")
    first = res.output.splitlines()[0]
    assert first.startswith("profile demo (auto: CPU) | frames 64x64 | width 0.25 | pretrain clip ")
