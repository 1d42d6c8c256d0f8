"""Shared pieces of the fault-injection suite (FAULTS.md 1-27): tiny CLI arguments, an in-process
CLI runner, a real-process runner (for signals), and checkpoint comparisons."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from typer.testing import CliRunner

from echoclr_cli.models.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TIMING_COLUMNS = ("seconds", "clips_per_s")  # history.csv columns measured, not computed


def history_without_timing(df: pd.DataFrame) -> pd.DataFrame:
    """History columns that must be identical between a resumed and an uninterrupted run."""
    return df.drop(columns=[c for c in TIMING_COLUMNS if c in df.columns])


# The demo profile on CPU, shrunk to seconds: 1/8-width r3d_18, one thread, no workers.
TINY = [
    "--device", "cpu", "--profile", "demo",
    "--set", "model.width=0.125", "--set", "runtime.threads=1", "--set", "runtime.workers=0",
]  # fmt: skip
PRETRAIN = [*TINY, "--batch-size", "4", "--set", "pretrain.method=simclr",
            "--set", "pretrain.checkpoint_every=100"]  # fmt: skip
FINETUNE = [
    *TINY, "--batch-size", "4", "--set", "finetune.clip_len=4", "--set", "finetune.patience=0",
    "--set", "evaluate.bootstrap=0", "--set", "evaluate.clips_per_video=1",
    "--set", "evaluate.plots=false",
]  # fmt: skip


def cli(*args: str | Path):
    """Run the CLI in this process (typer's CliRunner); returns the click Result."""
    from echoclr_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def pretrain_args(data: Path, out: Path, epochs: int = 1, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(data), "--out", str(out), "--epochs", str(epochs),
            *PRETRAIN, *extra]  # fmt: skip


def finetune_args(data: Path, out: Path, epochs: int = 1, *extra: str) -> list[str]:
    return ["finetune", "--data", str(data), "--out", str(out), "--epochs", str(epochs),
            "--task", "as", *FINETUNE, *extra]  # fmt: skip


def env() -> dict[str, str]:
    e = dict(os.environ, ECHOCLR_FORCE_CPU="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def spawn(args: list[str], code: str | None = None) -> subprocess.Popen:
    """``python -m echoclr_cli ARGS`` (or ``python -c CODE ARGS``) as a real process."""
    head = ["-c", code, *args] if code else ["-m", "echoclr_cli", *args]
    return subprocess.Popen(
        [sys.executable, *head], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "echoclr_cli", *args], cwd=ROOT, env=env(), capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def history_rows(run_dir: Path) -> int:
    """Epochs in history.csv (0 while absent); read without pandas so polling is cheap."""
    try:
        return max(0, len((run_dir / "history.csv").read_text().strip().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def wait_for_epochs(proc: subprocess.Popen, run_dir: Path, n: int, timeout: float = 60) -> None:
    """Poll until ``n`` epochs are on disk (history.csv is written just before last.pt)."""
    end = time.monotonic() + timeout
    while history_rows(run_dir) < n:
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before epoch {n}:\n"
                                 + (proc.stdout.read() if proc.stdout else ""))  # fmt: skip
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"no epoch {n} within {timeout} s")
        time.sleep(0.01)


def kill9(proc: subprocess.Popen) -> int:
    os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=30)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"tensor {k} differs"


def history(run_dir: Path) -> pd.DataFrame:
    return history_without_timing(pd.read_csv(run_dir / "history.csv"))


def assert_one_line_error(output: str, *names: str) -> None:
    """A user error: no traceback, names every given file/key."""
    assert "Traceback" not in output and "Caught " not in output, output
    for name in names:
        assert name in output, f"{name!r} not in:\n{output}"
