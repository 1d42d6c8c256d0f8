"""`torchrun --nproc_per_node 2 -m echoclr_cli pretrain` end to end on CPU (gloo)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import make_dataset

from echoclr_cli.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_two_processes_pretrain(tmp_path):
    data = make_dataset(tmp_path, n_studies=12)
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, ECHOCLR_FORCE_CPU="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "echoclr_cli", "pretrain",
        "--method", "mi-simclr", "--data", str(data), "--out", str(out), "--epochs", "2",
        "--batch-size", "4", "--device", "cpu", "--profile", "demo", "--set", "model.width=0.125",
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    hist = pd.read_csv(out / "history.csv")
    assert list(hist.epoch) == [1, 2]
    # Embeddings gathered across 2 ranks: 2 x 4 pairs = 16 clips -> 15 candidates per anchor.
    # A near-untrained model sits near ln(15); a per-rank loss would sit near ln(7).
    assert abs(hist.nt_xent.iloc[0] - math.log(15)) < 0.5
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ck["world_size"] == 2 and ck["epoch"] == 2
    assert res.stdout.count("pretraining done") == 1  # only rank 0 prints
