"""FAULTS.md 19, 24, 25 and 27 through the real CLI (in process): changed config / data on
resume, non-finite losses and weights, a corrupt video in a DataLoader worker, a full disk.

Engine-level versions on a toy task: tests/test_engine.py."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from faultkit import assert_one_line_error, cli, pretrain_args

from echoclr_cli.models.checkpoint import load_checkpoint
from tests.helpers import make_dataset


@pytest.fixture
def data(tmp_path) -> Path:
    return make_dataset(tmp_path, n_studies=12)


def finite(path: Path) -> bool:
    ck = load_checkpoint(path)
    return all(torch.isfinite(t).all() for t in ck["model"].values() if t.is_floating_point())


# --------------------------------------------------------------------------- 19
def test_fault_19_resume_with_changed_config_or_data_refused(data, tmp_path):
    run = tmp_path / "run"
    assert cli(*pretrain_args(data, run)).exit_code == 0
    res = cli(*pretrain_args(data, run, 2), "--resume", "--set", "pretrain.temperature=0.2")
    assert res.exit_code == 1
    assert_one_line_error(res.output, "changed in: pretrain.temperature")

    manifest = pd.read_csv(data / "manifest.csv")
    manifest.loc[0, "source_hash"] = "changed"
    manifest.to_csv(data / "manifest.csv", index=False)
    res = cli(*pretrain_args(data, run, 2), "--resume")
    assert res.exit_code == 1
    assert_one_line_error(res.output, "dataset changed", "last.pt")
    assert load_checkpoint(run / "checkpoints/last.pt")["epoch"] == 1  # untouched

    res = cli(*pretrain_args(data, run, 2), "--resume", "--force")
    assert res.exit_code == 0, res.output
    assert load_checkpoint(run / "checkpoints/last.pt")["epoch"] == 2


# --------------------------------------------------------------------------- 24
@pytest.fixture
def nan_at_step_2(monkeypatch):
    """The contrastive loss of the 2nd step is NaN (a poisoned batch)."""
    import echoclr_cli.pretrain.task as pretrain

    real, calls = pretrain.nt_xent, []

    def poisoned(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(pretrain, "nt_xent", poisoned)


ONE_STEP = ("--set", "pretrain.max_steps_per_epoch=1")


def test_fault_24_nonfinite_loss_stops_naming_step(data, tmp_path, nan_at_step_2):
    run = tmp_path / "run"
    res = cli(*pretrain_args(data, run, 3), *ONE_STEP)
    assert res.exit_code == 1
    assert_one_line_error(res.output, "non-finite loss", "epoch 2, step 2")
    ck = load_checkpoint(run / "checkpoints/last.pt")
    assert ck["epoch"] == 1 and finite(run / "checkpoints/last.pt")


def test_fault_24_nonfinite_tolerance_skips_the_step(data, tmp_path, nan_at_step_2):
    run = tmp_path / "run"
    two_steps = ("--set", "pretrain.max_steps_per_epoch=2")
    res = cli(*pretrain_args(data, run, 3), *two_steps, "--set", "pretrain.nonfinite_tolerance=1")
    assert res.exit_code == 0, res.output
    hist = pd.read_csv(run / "history.csv")
    assert list(hist["step"]) == [1, 3, 5]  # the NaN step took no optimizer step
    assert np.isfinite(hist["loss"].to_numpy()).all() and finite(run / "checkpoints/last.pt")


def test_fault_24_checkpoints_never_hold_nonfinite_weights(data, tmp_path, monkeypatch):
    """A finite loss but weights that blow up to inf (lr far too high): the epoch's checkpoint
    is refused, the previous last.pt stays finite and loads."""
    import echoclr_cli.pretrain.run as pretrain

    real = pretrain.build_optimizer

    def exploding(params, cfg):
        opt = real(params, cfg)
        step = opt.step

        def blow_up(*a, **k):
            out = step(*a, **k)
            if (
                opt.state
                and min(s.get("step", torch.tensor(0)).item() for s in opt.state.values()) >= 2
            ):
                with torch.no_grad():
                    next(iter(opt.param_groups[0]["params"])).fill_(float("inf"))
            return out

        opt.step = blow_up
        return opt

    monkeypatch.setattr(pretrain, "build_optimizer", exploding)
    run = tmp_path / "run"
    res = cli(*pretrain_args(data, run, 3), *ONE_STEP)
    assert res.exit_code == 1
    assert_one_line_error(res.output, "refusing to write", "last.pt", "non-finite")
    assert load_checkpoint(run / "checkpoints/last.pt")["epoch"] == 1
    assert finite(run / "checkpoints/last.pt")


# --------------------------------------------------------------------------- 25
@pytest.mark.parametrize("corruption", ["truncated", "empty"])
def test_fault_25_worker_dies_on_bad_sample_names_the_file(data, tmp_path, corruption):
    df = pd.read_csv(data / "manifest.csv")
    bad = data / df.loc[df["split"] == "train", "path"].iloc[0]
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2] if corruption == "truncated" else b"")
    res = cli(*pretrain_args(data, tmp_path / "run"), "--set", "runtime.workers=1")
    assert res.exit_code == 1
    assert_one_line_error(res.output, str(bad), "DataLoader worker")
    assert "cannot read video" in res.output
    lines = [ln for ln in res.output.splitlines() if str(bad) in ln or "worker" in ln]
    assert len(lines) <= 2, res.output  # message (+ wrapped fix), not a worker traceback


# --------------------------------------------------------------------------- 27
def test_fault_27_disk_full_clear_error_earlier_outputs_intact(data, tmp_path, monkeypatch):
    """ENOSPC in the middle of writing the 2nd epoch's last.pt (real io.atomic_write, a writer
    that fails after half the bytes)."""
    import echoclr_cli.io as io
    import echoclr_cli.models.checkpoint as checkpoint

    saves: list[Path] = []

    def full_disk(path, writer, mode="wb"):
        saves.append(Path(path))
        if Path(path).name != "last.pt" or sum(p.name == "last.pt" for p in saves) < 2:
            return io.atomic_write(path, writer, mode)

        def half_then_enospc(f):
            writer(f)
            f.truncate(f.tell() // 2)
            raise OSError(errno.ENOSPC, "No space left on device")

        return io.atomic_write(path, half_then_enospc, mode)

    monkeypatch.setattr(checkpoint, "atomic_write", full_disk)
    run = tmp_path / "run"
    res = cli(*pretrain_args(data, run, 3))
    assert res.exit_code == 1
    assert_one_line_error(res.output, "disk full while writing", "last.pt", "intact")
    assert load_checkpoint(run / "checkpoints/last.pt")["epoch"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]  # no temp file
    assert len(pd.read_csv(run / "history.csv")) == 2  # written before the failed checkpoint


def _mount_tmpfs(path: Path, size_kb: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                       capture_output=True)  # fmt: skip
    return r.returncode == 0


def test_fault_27_disk_full_on_a_real_tiny_filesystem(data, tmp_path):
    """A tmpfs that holds one checkpoint but not a second beside it (needs root; else skipped)."""
    probe = tmp_path / "probe"
    assert cli(*pretrain_args(data, probe)).exit_code == 0
    size_kb = int((probe / "checkpoints/last.pt").stat().st_size * 1.5 / 1024) + 64
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, size_kb):
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        run = disk / "run"
        res = cli(*pretrain_args(data, run, 3))
        assert res.exit_code == 1
        assert_one_line_error(res.output, "disk full while writing", "last.pt")
        assert load_checkpoint(run / "checkpoints/last.pt")["epoch"] == 1
        assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.pt"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)
