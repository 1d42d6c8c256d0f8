"""`torchrun -m echoclr_cli pretrain` end to end on CPU (gloo): one node with 2 processes, and two
nodes simulated on localhost with a c10d rendezvous."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import free_port, make_dataset

from echoclr_cli.models.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def _env(**extra: str) -> dict[str, str]:
    """Environment of the CPU child processes, with this checkout first on the path."""
    env = dict(os.environ, ECHOCLR_FORCE_CPU="1", OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _sync_bn_pretrain(data: Path, out: Path, batch: int, *more: str) -> list[str]:
    """Arguments of a one-epoch MI-SimCLR pretraining, no augmentation, runtime.sync_bn=true."""
    return [
        "-m", "echoclr_cli", "pretrain", "--method", "mi-simclr", "--data", str(data),
        "--out", str(out), "--epochs", "1", "--batch-size", str(batch), "--device", "cpu",
        "--profile", "demo", "--set", "model.width=0.125",
        "--set", "pretrain.augment.enabled=false", "--set", "runtime.sync_bn=true", *more,
    ]  # fmt: skip


@pytest.mark.slow
def test_torchrun_two_processes_pretrain(tmp_path):
    data = make_dataset(tmp_path, n_studies=12)
    out = tmp_path / "run"
    env = _env()
    cmd = [
        TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "echoclr_cli", "pretrain",
        "--method", "mi-simclr", "--data", str(data), "--out", str(out), "--epochs", "2",
        "--batch-size", "8", "--device", "cpu", "--profile", "demo", "--set", "model.width=0.125",
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    hist = pd.read_csv(out / "history.csv")
    assert list(hist.epoch) == [1, 2]
    # Global batch 8 = 2 ranks x 4 pairs, embeddings gathered: 16 clips -> 15 candidates per anchor.
    # A near-untrained model sits near ln(15); a per-rank loss would sit near ln(7).
    assert abs(hist.nt_xent.iloc[0] - math.log(15)) < 0.5
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ck["world_size"] == 2 and ck["epoch"] == 2
    assert res.stdout.count("pretraining done") == 1  # only rank 0 prints


def _mi_simclr_pairs(data: Path) -> int:
    """Training pairs of MI-SimCLR: every 2 videos of a train study (1 for a single video)."""
    m = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    per_study = m[m["split"] == "train"].groupby("study_id").size()
    return int(sum(math.comb(k, 2) if k > 1 else 1 for k in per_study))


@pytest.mark.slow
def test_two_nodes_c10d_same_loss_as_one_process_on_the_global_batch(tmp_path):
    """Two nodes simulated on localhost: two torchrun launchers (--nnodes 2, 1 process each)
    meeting at a c10d rendezvous, gloo, with runtime.sync_bn=true. MI-SimCLR on P train pairs,
    no augmentation, and a batch_size above P: the plan lowers each process's batch to the pairs
    it has, so each of the 2 processes sees P/2 pairs and the single process P pairs: one step
    per epoch on the same global batch whatever pretrain.batch_size means (per process or global).
    The first-epoch loss (before any update) must match:
    - exactly a single-node 2-process run (torchrun --standalone): multi-node changes nothing;
    - one process on the P pairs within 1e-5: with sync_bn every BatchNorm normalises with the
      statistics of the global batch (GlobalBatchNorm on CPU: torch's SyncBatchNorm is GPU only).
      Without sync_bn (the default, as the published nn.DataParallel) DDP normalises each
      process's half batch with its own statistics and the loss differs: measured 3.489 vs 3.328
      at P = 16 (8 pairs per process). Both sit near ln(2P - 1) = 3.43 (all 2P clips are
      candidates); a per-process NT-Xent (no gather) would sit near ln(P - 1) = 2.71."""
    data = make_dataset(tmp_path, n_studies=20)
    p = _mi_simclr_pairs(data)
    assert p >= 8 and p % 2 == 0, p  # even: the 2 processes split the global batch exactly
    env = _env(GLOO_SOCKET_IFNAME="lo")

    def args(out: Path) -> list[str]:
        return _sync_bn_pretrain(data, out, 4 * p)

    # two "nodes": same command on both, the rendezvous assigns the ranks (no --node-rank)
    port = free_port()
    node = [
        TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "echoclr-test",
        *args(tmp_path / "two_nodes"),
    ]  # fmt: skip
    procs = [
        subprocess.Popen(node, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]  # fmt: skip
    logs = [pr.communicate(timeout=300)[0] for pr in procs]
    for pr, log in zip(procs, logs, strict=True):
        assert pr.returncode == 0, log
    assert sum(log.count("pretraining done") for log in logs) == 1  # only global rank 0 prints
    one_node = [TORCHRUN, "--standalone", "--nproc_per_node", "2", *args(tmp_path / "one_node")]
    single = [sys.executable, *args(tmp_path / "single")]
    for cmd in (one_node, single):
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr

    hist = {
        k: pd.read_csv(tmp_path / k / "history.csv") for k in ("two_nodes", "one_node", "single")
    }
    ck = load_checkpoint(tmp_path / "two_nodes" / "checkpoints" / "last.pt")
    assert ck["world_size"] == 2
    assert load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")["world_size"] == 1
    for h in hist.values():
        assert list(h.step) == [1]  # one step: the whole train split is the global batch
    two, one, single_loss = (hist[k].nt_xent.iloc[0] for k in ("two_nodes", "one_node", "single"))
    assert abs(two - one) < 1e-6, (two, one)
    print(f"P={p}: two nodes {two:.6f}, one node {one:.6f}, one process {single_loss:.6f}")
    assert abs(two - single_loss) < 1e-5, (two, single_loss)  # BatchNorm over the global batch
    assert abs(two - math.log(2 * p - 1)) < 0.2 and abs(single_loss - math.log(2 * p - 1)) < 0.2


@pytest.mark.slow
def test_global_batch_same_loss_one_and_two_processes(tmp_path):
    """pretrain.batch_size is the GLOBAL batch: with batch P (all train pairs), one process takes
    P pairs per step and each of two processes P/2, one step per epoch either way, and the
    first-epoch loss (before any update) is the same: the NT-Xent spans the global batch through
    the gather and, with runtime.sync_bn=true, BatchNorm uses the global batch's statistics.
    The views are encoded separately (pretrain.view_forward=separate, the paper's default)."""
    import json

    data = make_dataset(tmp_path, n_studies=20)
    p = _mi_simclr_pairs(data)
    assert p >= 8 and p % 2 == 0, p
    env = _env(GLOO_SOCKET_IFNAME="lo")

    def args(out: Path) -> list[str]:
        return _sync_bn_pretrain(data, out, p, "--set", "pretrain.view_forward=separate")

    two = [TORCHRUN, "--standalone", "--nproc_per_node", "2", *args(tmp_path / "two")]
    one = [sys.executable, *args(tmp_path / "one")]
    for cmd in (two, one):
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
    facts = {k: json.loads((tmp_path / k / "metrics.json").read_text()) for k in ("one", "two")}
    assert facts["one"]["batch_size"] == p and facts["two"]["batch_size"] == p // 2
    assert facts["one"]["global_batch"] == facts["two"]["global_batch"] == p
    assert not facts["one"]["notes"] and not facts["two"]["notes"]  # nothing lowered
    hist = {k: pd.read_csv(tmp_path / k / "history.csv") for k in ("one", "two")}
    assert list(hist["one"].step) == list(hist["two"].step) == [1]
    l1, l2 = hist["one"].nt_xent.iloc[0], hist["two"].nt_xent.iloc[0]
    assert abs(l1 - l2) < 1e-5, (l1, l2)
    assert abs(l1 - math.log(2 * p - 1)) < 0.2
