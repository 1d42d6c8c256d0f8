"""Checkpoints: plain contents (weights_only without any allow-list), exact RNG round trips,
previous-format files, and a pickle payload refused at every load path (issue 11 point 1).

The payload is an object whose unpickling opens (creates) a marker file: if any load path ran
it, the marker would appear. ``test_payload_is_live`` shows it does run under a plain
``torch.load(weights_only=False)``, so the other tests can fail.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_dataset, tiny_finetune_config

from echoclr_cli.config.load import save_config
from echoclr_cli.errors import UserError
from echoclr_cli.models.checkpoint import capture_rng, load_checkpoint, restore_rng, safe_load
from tests.engine_toy import run_toy

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this object calls ``open(marker, "w")``: the marker file appears."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_evil(path: Path, marker: Path, **extra) -> Path:
    """A file shaped like our checkpoint (``format``, ``model``) carrying the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "echoclr-checkpoint", "model": {}, "x": Payload(marker), **extra}, path)
    return path


def assert_refused(err: str | Exception, path: Path, marker: Path) -> None:
    text = str(err)
    assert "refusing to load" in text and str(path) in text, text
    assert "\n" not in text.strip(), text  # one line
    assert not marker.exists(), "the payload ran"


def test_payload_is_live(tmp_path):
    marker = tmp_path / "ran"
    path = write_evil(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)  # what the old engine did
    assert marker.exists()


# --------------------------------------------------------------------------- contents
def test_our_checkpoint_loads_with_plain_weights_only(tmp_path):
    run_toy(tmp_path / "run", epochs=1)
    ck = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)  # no allow-list
    rng = ck["rng"]
    assert torch.is_tensor(rng["numpy"]["keys"]) and torch.is_tensor(rng["python"]["state"])
    assert isinstance(rng["numpy"]["kind"], str)


def test_rng_round_trip_is_exact_including_cached_gaussians():
    gen = torch.Generator().manual_seed(3)
    random.seed(1)
    random.gauss(0, 1)  # leaves gauss_next set
    np.random.seed(2)
    np.random.standard_normal(1)  # leaves a cached gaussian
    state = capture_rng(gen)
    want = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(),
            torch.rand(3).tolist(), torch.rand(3, generator=gen).tolist())  # fmt: skip
    restore_rng(state, gen)
    got = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(),
           torch.rand(3).tolist(), torch.rand(3, generator=gen).tolist())  # fmt: skip
    assert got == want


def _to_previous_format(path: Path) -> None:
    """Rewrite a checkpoint as the previous version wrote it: numpy / python RNG tuples."""
    ck = torch.load(path, weights_only=True)
    n, p = ck["rng"]["numpy"], ck["rng"]["python"]
    keys = n["keys"].numpy().astype(np.uint32)
    ck["rng"]["numpy"] = (n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"])
    ck["rng"]["python"] = (p["version"], tuple(p["state"].tolist()), p["gauss_next"])
    torch.save(ck, path)


def test_previous_format_checkpoint_loads_and_resumes_bitwise(tmp_path):
    run_toy(tmp_path / "full", epochs=3)
    run_toy(tmp_path / "old", epochs=2)
    last = tmp_path / "old/checkpoints/last.pt"
    _to_previous_format(last)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(last, weights_only=True)  # needs the scoped numpy allow-list
    assert torch.is_tensor(load_checkpoint(last)["rng"]["numpy"]["keys"])
    run_toy(tmp_path / "old", epochs=3, resume=True)
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")["model"]
    b = load_checkpoint(last)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_numpy_allow_list_is_narrow(tmp_path):
    """Object arrays (which could hold anything) are not among the allowed numpy types."""
    marker = tmp_path / "ran"
    path = tmp_path / "objarr.pt"
    torch.save({"model": {}, "rng": {"numpy": np.array([Payload(marker)], dtype=object)}}, path)
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    assert_refused(e.value, path, marker)


def test_truncated_file_is_one_line_naming_it(tmp_path):
    run_toy(tmp_path / "run", epochs=1)
    path = tmp_path / "run/checkpoints/last.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="cannot read checkpoint .*last.pt"):
        safe_load(path)


# --------------------------------------------------------------------------- every load path
def test_resume_refuses_payload(tmp_path):
    run = tmp_path / "run"
    run_toy(run, epochs=1)
    marker = tmp_path / "ran"
    last = write_evil(run / "checkpoints/last.pt", marker)
    with pytest.raises(UserError) as e:
        run_toy(run, epochs=2, resume=True)
    assert_refused(e.value, last, marker)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("unsafe"), n_studies=8, frames=(8, 10), size=16)


def test_finetune_init_refuses_payload(data, tmp_path):
    from echoclr_cli.finetune.run import run_finetune

    marker = tmp_path / "ran"
    evil = write_evil(tmp_path / "ssl/checkpoints/last.pt", marker)
    cfg = tiny_finetune_config(epochs=1, finetune={"init": str(tmp_path / "ssl")})
    with pytest.raises(UserError) as e:
        run_finetune(cfg, data, tmp_path / "run")
    assert_refused(e.value, evil, marker)
    assert not (tmp_path / "run").exists()  # refused before the run dir is made


def test_finetune_best_reload_refuses_payload(data, tmp_path, monkeypatch):
    from echoclr_cli.finetune.run import run_finetune
    from echoclr_cli.training import engine as engine_mod

    marker = tmp_path / "ran"
    fit = engine_mod.Engine.fit

    def fit_then_swap(self, *a, **kw):  # a file swapped on disk between training and reload
        out = fit(self, *a, **kw)
        write_evil(self.ckpt_dir / "best.pt", marker)
        write_evil(self.ckpt_dir / "last.pt", marker)
        return out

    monkeypatch.setattr(engine_mod.Engine, "fit", fit_then_swap)
    cfg = tiny_finetune_config(epochs=1, finetune={"monitor": "val_loss"})
    with pytest.raises(UserError) as e:
        run_finetune(cfg, data, tmp_path / "run")
    assert_refused(e.value, tmp_path / "run/checkpoints/best.pt", marker)
    assert (tmp_path / "run/history.csv").is_file()  # it trained, then refused the reload


def test_demo_reads_pretrain_progress_without_unpickling(tmp_path):
    """The demo (and the sweep) decide whether a pretrain run is complete from history.csv and
    config.yaml (rundir.run_progress): a payload last.pt is never loaded there."""
    from echoclr_cli.rundir import run_progress

    marker = tmp_path / "ran"
    write_evil(tmp_path / "pre/checkpoints/last.pt", marker)
    cfg = tiny_finetune_config(epochs=1)
    cfg.pretrain.epochs = 2
    save_config(cfg, tmp_path / "pre/config.yaml")
    pd.DataFrame({"epoch": [1, 2], "loss": [1.0, 0.9]}).to_csv(
        tmp_path / "pre/history.csv", index=False
    )
    prog = run_progress(tmp_path / "pre")
    assert prog.finished and prog.epochs_done == 2
    assert not marker.exists()


def test_sweep_refuses_payload_init(data, tmp_path):
    """A sweep fine-tunes through run_finetune: an SSL init carrying a payload fails its runs
    with the refusal (recorded in the run's error file) and never runs it."""
    from echoclr_cli.sweep import run_sweep
    from echoclr_cli.sweep.state import ERROR_FILE

    marker = tmp_path / "ran"
    root = tmp_path / "pretrain"
    evil = write_evil(root / "evil/checkpoints/last.pt", marker)
    cfg = tiny_finetune_config(epochs=1)
    cfg.pretrain.epochs = 1  # a finished pretrain run (history has its one epoch)
    save_config(cfg, root / "evil/config.yaml")
    pd.DataFrame({"epoch": [1], "loss": [1.0]}).to_csv(root / "evil/history.csv", index=False)
    cfg.sweep.tasks = ["as"]
    cfg.sweep.inits = ["evil"]
    cfg.sweep.ratios = [1.0]
    cfg.sweep.lrs = [1e-3]
    cfg.sweep.seeds = [0]
    cfg.sweep.pretrain_dir = root
    res = run_sweep(cfg=cfg, data_dir=data, out_dir=tmp_path / "sweep")
    assert len(res.failed) == 1
    assert_refused(res.failed[0][1], evil, marker)
    errors = list((tmp_path / "sweep").rglob(ERROR_FILE))
    assert len(errors) == 1 and str(evil) in errors[0].read_text()


def _crafted_run(tmp_path: Path, marker: Path) -> tuple[Path, Path]:
    """A fine-tune run dir as `echoclr evaluate/predict` reads it, with a payload best.pt."""
    run = tmp_path / "run"
    cfg = tiny_finetune_config(epochs=1, finetune={"task": "as"})
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    best = write_evil(run / "checkpoints/best.pt", marker, section="finetune")
    return run, best


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_cli_evaluate_and_predict_refuse_payload(data, tmp_path, command):
    marker = tmp_path / "ran"
    run, best = _crafted_run(tmp_path, marker)
    args = [str(run), "--data", str(data)]
    if command == "predict":
        args = [str(run), "--input", str(data), "--out", str(tmp_path / "pred.csv")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "ECHOCLR_FORCE_CPU": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "echoclr_cli", command, *args, "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "refusing to load checkpoint" in out and best.name in out, out
    assert "Traceback" not in out
    assert not marker.exists(), "the payload ran"
