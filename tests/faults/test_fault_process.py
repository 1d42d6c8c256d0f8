"""FAULTS.md 21, 22, 23 and 26 with real processes and real signals: ``python -m echoclr_cli``
is killed with SIGKILL (at a random point, or in the middle of writing a checkpoint) or
preempted with SIGTERM, then continued with ``--resume`` / re-run.

Engine-level versions on a toy task (in process): tests/test_engine.py; sweep bookkeeping with
fake runs: tests/test_sweep.py."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from faultkit import (
    TINY,
    assert_bitwise_equal,
    finetune_args,
    history,
    kill9,
    pretrain_args,
    run,
    spawn,
    weights,
)

from echoclr_cli.models.checkpoint import load_checkpoint
from tests.helpers import make_dataset

EPOCHS = 5


@pytest.fixture
def data(tmp_path) -> Path:
    return make_dataset(tmp_path, n_studies=12)


def wait_for_checkpoint(proc, run_dir: Path, timeout: float = 90) -> None:
    """Poll until checkpoints/last.pt exists (atomic: it is then a complete epoch >= 1)."""
    last = run_dir / "checkpoints" / "last.pt"
    end = time.monotonic() + timeout
    while not last.exists():
        assert proc.poll() is None, f"ended (rc {proc.returncode}) early:\n{proc.stdout.read()}"
        assert time.monotonic() < end, "no checkpoint in time"
        time.sleep(0.01)


def kill_and_resume(args: list[str], full_args: list[str], cut: Path, full: Path) -> None:
    """Run ``full_args`` uninterrupted while ``args`` is killed -9 at a random point after its
    first checkpoint, then resumed; final weights and history must be identical."""
    reference = spawn(full_args)
    proc = spawn(args)
    wait_for_checkpoint(proc, cut)
    epoch_s = float(pd.read_csv(cut / "history.csv")["seconds"].iloc[0])
    delay = random.uniform(0.0, 2 * epoch_s)  # somewhere in the next ~2 of EPOCHS - 1 epochs
    time.sleep(delay)
    rc = kill9(proc)
    assert rc == -signal.SIGKILL, f"the run ended (rc {rc}) before the kill at +{delay:.2f} s"
    assert reference.wait(timeout=120) == 0, reference.stdout.read()
    killed_at = load_checkpoint(cut / "checkpoints" / "last.pt")["epoch"]
    assert 1 <= killed_at < EPOCHS
    res = run([*args, "--resume"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert_bitwise_equal(weights(full), weights(cut))
    pd.testing.assert_frame_equal(history(full), history(cut))


# --------------------------------------------------------------------------- 23
def test_fault_23_kill9_pretrain_then_resume_is_bitwise_equal(data, tmp_path):
    cut, full = tmp_path / "cut", tmp_path / "full"
    kill_and_resume(pretrain_args(data, cut, EPOCHS), pretrain_args(data, full, EPOCHS), cut, full)


@pytest.mark.slow
def test_fault_23_kill9_finetune_then_resume_is_bitwise_equal(data, tmp_path):
    cut, full = tmp_path / "cut", tmp_path / "full"
    kill_and_resume(finetune_args(data, cut, EPOCHS), finetune_args(data, full, EPOCHS), cut, full)
    a = pd.read_csv(full / "predictions_test_video.csv")
    b = pd.read_csv(cut / "predictions_test_video.csv")
    pd.testing.assert_frame_equal(a, b)


# --------------------------------------------------------------------------- 22
def test_fault_22_sigterm_checkpoints_exits_143_and_resumes(data, tmp_path):
    out = tmp_path / "run"
    args = pretrain_args(data, out, 200)
    proc = spawn(args)
    wait_for_checkpoint(proc, out)
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = proc.wait(timeout=30)
    took = time.monotonic() - t0
    output = proc.stdout.read()
    assert rc == 143, output
    print(f"SIGTERM -> exit 143 in {took:.2f} s")
    assert took < 5, f"SIGTERM -> exit took {took:.1f} s"
    assert "preempted" in output and "--resume" in output and "Traceback" not in output
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    epochs = ck["epoch"] + 1  # finish the interrupted epoch
    res = run([*pretrain_args(data, out, epochs), "--resume"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == epochs
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == list(range(1, epochs + 1))


# --------------------------------------------------------------------------- 21
KILL_MID_WRITE = """
import os, signal, sys
import echoclr_cli.models.checkpoint as checkpoint

real, saves = checkpoint.atomic_write, []

class KillAfterBytes:
    # The file object torch.save writes into; SIGKILL once 64 KiB are on disk.
    def __init__(self, f):
        self.f, self.n = f, 0
    def write(self, b):
        out = self.f.write(b)
        self.n += len(b)
        if self.n > 65536:
            self.f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    def __getattr__(self, name):
        return getattr(self.f, name)

def atomic_write(path, writer, mode="wb"):
    saves.append(path.name)
    if path.name == "last.pt" and saves.count("last.pt") == 2:
        return real(path, lambda f: writer(KillAfterBytes(f)), mode)
    return real(path, writer, mode)

checkpoint.atomic_write = atomic_write
from echoclr_cli.cli import app
app(sys.argv[1:], prog_name="echoclr")
"""


def test_fault_21_kill9_during_checkpoint_write_keeps_previous(data, tmp_path):
    out = tmp_path / "run"
    args = pretrain_args(data, out, 3)
    proc = spawn(args, code=KILL_MID_WRITE)
    rc = proc.wait(timeout=120)
    assert rc == -signal.SIGKILL, proc.stdout.read()
    ckdir = out / "checkpoints"
    partial = [p for p in ckdir.iterdir() if p.name != "last.pt"]
    assert len(partial) == 1 and partial[0].name.startswith(".last.pt.")  # never under the name
    assert partial[0].stat().st_size > 65536  # the kill really came mid-write
    assert load_checkpoint(ckdir / "last.pt")["epoch"] == 1  # the previous checkpoint loads
    res = run([*args, "--resume"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert load_checkpoint(ckdir / "last.pt")["epoch"] == 3


# --------------------------------------------------------------------------- 26
SWEEP = [
    "--inits", "random", "--tasks", "as", "--ratios", "0.5,1.0", "--seeds", "0",
    "--lrs", "0.001", "--low-ratio-lrs", "0.001", *TINY,
    "--set", "finetune.epochs=2", "--set", "finetune.batch_size=4", "--set", "finetune.clip_len=4",
    "--set", "evaluate.bootstrap=0", "--set", "evaluate.clips_per_video=1",
    "--set", "evaluate.plots=false",
]  # fmt: skip


@pytest.mark.slow
def test_fault_26_sweep_killed_and_rerun_equals_uninterrupted(data, tmp_path):
    cut, full = tmp_path / "cut", tmp_path / "full"
    reference = spawn(["sweep", "--data", str(data), "--out", str(full), *SWEEP])
    proc = spawn(["sweep", "--data", str(data), "--out", str(cut), *SWEEP])
    end = time.monotonic() + 120
    while not list(cut.glob("runs/*/*/*/metrics.json")):  # the first run is done
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < end
        time.sleep(0.02)
    assert kill9(proc) == -signal.SIGKILL
    assert reference.wait(timeout=300) == 0, reference.stdout.read()
    done = {p: p.stat().st_mtime_ns for p in cut.glob("runs/*/*/*/metrics.json")}
    assert 1 <= len(done) < 2  # killed with work left
    res = run(["sweep", "--data", str(data), "--out", str(cut), *SWEEP], timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # not trained again
    a = pd.read_csv(full / "results.csv")
    b = pd.read_csv(cut / "results.csv")
    timing = [c for c in a.columns if "second" in c]
    pd.testing.assert_frame_equal(a.drop(columns=timing), b.drop(columns=timing))
