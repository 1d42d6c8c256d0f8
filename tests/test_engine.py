import os
import signal

import pandas as pd
import pytest
import torch

from echoclr_cli.errors import Interrupted, Preempted, UserError
from echoclr_cli.models.checkpoint import load_checkpoint
from tests import engine_toy
from tests.engine_toy import ToyTask, run_toy, toy_config
from tests.faults.faultkit import history_without_timing


def weights(path):
    return load_checkpoint(path)["model"]


def assert_bitwise_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fit_writes_run_dir(tmp_path):
    run = tmp_path / "run"
    _, _, res = run_toy(run, epochs=3)
    assert (run / "config.yaml").exists()
    hist = pd.read_csv(run / "history.csv")
    assert list(hist.epoch) == [1, 2, 3]
    assert {"loss", "lr", "clips_per_s", "seconds", "val_loss", "step"} <= set(hist.columns)
    assert hist.step.iloc[-1] == 3 * 6
    assert (run / "checkpoints" / "last.pt").exists()
    assert (run / "checkpoints" / "epoch_2.pt").exists()
    assert (run / "checkpoints" / "best.pt").exists()
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "step",
        "rng",
        "config",
        "version",
    ):
        assert key in ck
    assert ck["epoch"] == 3 and res.best_epoch == 3


def test_resume_at_epoch_boundary_is_bitwise_equal(tmp_path):
    run_toy(tmp_path / "full", epochs=4)
    run_toy(tmp_path / "part", epochs=2)
    run_toy(tmp_path / "part", epochs=4, resume=True)
    assert_bitwise_equal(
        weights(tmp_path / "full/checkpoints/last.pt"),
        weights(tmp_path / "part/checkpoints/last.pt"),
    )
    a = history_without_timing(pd.read_csv(tmp_path / "full/history.csv"))
    b = history_without_timing(pd.read_csv(tmp_path / "part/history.csv"))
    pd.testing.assert_frame_equal(a, b)


def test_sigterm_mid_epoch_saves_and_resume_matches(tmp_path):
    run_toy(tmp_path / "full", epochs=3)
    with pytest.raises(Preempted):
        run_toy(tmp_path / "cut", epochs=3, sigterm_at_step=9)  # epoch 2, batch 3
    ck = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")
    assert ck["epoch"] == 1 and ck["batch_in_epoch"] == 3
    run_toy(tmp_path / "cut", epochs=3, resume=True)
    assert_bitwise_equal(
        weights(tmp_path / "full/checkpoints/last.pt"),
        weights(tmp_path / "cut/checkpoints/last.pt"),
    )


@pytest.mark.parametrize("sync_every", [1, 4, 25])
def test_nonfinite_loss_stops_naming_step_and_keeps_finite_checkpoints(tmp_path, sync_every):
    """Checked on the device and synced every ``sync_every`` steps (4: the bad step 8 = epoch 2
    batch 2 sits inside a window; 25: only at the epoch end): still the first bad step."""
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"epoch 2, step 8 \(batch 2\)"):
        run_toy(run, epochs=3, nan_at_step=8, cfg=toy_config(sync_every=sync_every))
    ck = load_checkpoint(run / "checkpoints/last.pt")
    assert ck["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ck["model"].values() if t.is_floating_point())


def test_nonfinite_tolerance_skips(tmp_path):
    from torch.utils.data import DataLoader

    from echoclr_cli.training.engine import Engine
    from tests.engine_toy import ToyData, ToySampler, ToyTask

    engine = Engine(toy_config(), tmp_path / "r", section="pretrain")
    task = ToyTask(engine, nan_at_step=3)
    data = ToyData()
    sampler = ToySampler(len(data), 8)
    loader = DataLoader(data, batch_size=8, sampler=sampler)
    opt = torch.optim.SGD(task.model.parameters(), lr=0.1)
    res = engine.fit(task, loader, opt, epochs=1, sampler=sampler, nonfinite_tolerance=1)
    assert res.steps == 5  # 6 batches, one skipped
    assert engine.state.nonfinite == 1


def test_existing_run_dir_refused_never_deleted(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        run_toy(run, epochs=1)
    from echoclr_cli.models.checkpoint import prepare_run_dir

    prepare_run_dir(run, resume=False, overwrite=True)
    assert (run / "notes.txt").read_text() == "mine"


def test_resume_refuses_changed_config_allows_more_epochs(tmp_path):
    run = tmp_path / "run"
    run_toy(run, epochs=1)
    cfg = toy_config(seed=5)
    with pytest.raises(UserError, match="runtime.seed"):
        run_toy(run, epochs=2, resume=True, cfg=cfg)
    cfg = toy_config()
    cfg.pretrain.epochs = 99  # the allowed change
    run_toy(run, epochs=2, resume=True, cfg=cfg)
    assert load_checkpoint(run / "checkpoints/last.pt")["epoch"] == 2


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        run_toy(tmp_path / "none", epochs=1, resume=True)


def test_crash_during_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    from echoclr_cli.training.engine import Engine

    run = tmp_path / "run"
    engine, task, _ = run_toy(run, epochs=1)
    before = weights(run / "checkpoints/last.pt")

    class Poison:
        def __reduce__(self):
            raise RuntimeError("crash mid-write")

    orig = Engine.checkpoint_dict
    monkeypatch.setattr(
        Engine, "checkpoint_dict", lambda self, *a: {**orig(self, *a), "zz_poison": Poison()}
    )
    opt = torch.optim.Adam(task.model.parameters())
    with pytest.raises(RuntimeError, match="crash mid-write"):
        engine.save("last.pt", task.model, opt, None)
    assert_bitwise_equal(before, weights(run / "checkpoints/last.pt"))
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")] == []


def test_sync_every_changes_no_number(tmp_path):
    """Sums kept on the device between syncs add exactly what per-step host floats add."""
    for n in (1, 4, 25):
        run_toy(tmp_path / f"s{n}", epochs=3, cfg=toy_config(sync_every=n))
    ref = weights(tmp_path / "s1/checkpoints/last.pt")
    h_ref = history_without_timing(pd.read_csv(tmp_path / "s1/history.csv"))
    for n in (4, 25):
        assert_bitwise_equal(ref, weights(tmp_path / f"s{n}/checkpoints/last.pt"))
        h = history_without_timing(pd.read_csv(tmp_path / f"s{n}/history.csv"))
        pd.testing.assert_frame_equal(h_ref, h, check_exact=True)


def test_sigterm_mid_window_resume_matches(tmp_path):
    cfg = toy_config(sync_every=4)
    run_toy(tmp_path / "full", epochs=3, cfg=cfg)
    with pytest.raises(Preempted):
        run_toy(tmp_path / "cut", epochs=3, sigterm_at_step=9, cfg=cfg)  # epoch 2, batch 3
    run_toy(tmp_path / "cut", epochs=3, resume=True, cfg=cfg)
    assert_bitwise_equal(
        weights(tmp_path / "full/checkpoints/last.pt"),
        weights(tmp_path / "cut/checkpoints/last.pt"),
    )
    a = history_without_timing(pd.read_csv(tmp_path / "full/history.csv"))
    b = history_without_timing(pd.read_csv(tmp_path / "cut/history.csv"))
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_step_events_every_sync(tmp_path):
    from torch.utils.data import DataLoader

    from echoclr_cli.events import Step
    from echoclr_cli.training.engine import Engine
    from tests.engine_toy import ToyData, ToySampler, ToyTask

    events = []
    engine = Engine(toy_config(sync_every=4), tmp_path / "r", section="pretrain",
                    progress=events.append)  # fmt: skip
    task = ToyTask(engine)
    data = ToyData()
    sampler = ToySampler(len(data), 8)
    loader = DataLoader(data, batch_size=8, sampler=sampler)
    opt = torch.optim.SGD(task.model.parameters(), lr=0.1)
    engine.fit(task, loader, opt, epochs=2, sampler=sampler)
    steps = [(e.epoch, e.batch) for e in events if isinstance(e, Step)]
    assert steps == [(1, 4), (1, 6), (2, 4), (2, 6)]  # every 4 steps and at the epoch end


# --------------------------------------------------------------------------- Ctrl-C (SIGINT)
class SigintTask(ToyTask):
    """The toy task sending itself ``times`` SIGINTs (Ctrl-C) during global step ``at``."""

    at, times = 9, 1  # step 9 = epoch 2, batch 3 (6 batches per epoch)

    def train_step(self, batch, engine):
        out = super().train_step(batch, engine)
        if engine.state.step + 1 == self.at:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)
        return out


@pytest.fixture
def sigint_task(monkeypatch):
    """A fresh subclass per test (tests set ``at`` / ``times``), used by ``run_toy``."""
    task = type("Task", (SigintTask,), {})
    monkeypatch.setattr(engine_toy, "ToyTask", task)
    return task


def test_ctrl_c_mid_epoch_saves_like_sigterm_and_resume_matches(tmp_path, sigint_task):
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in a background job
    sigint_task.at = -1
    run_toy(tmp_path / "full", epochs=3)
    sigint_task.at = 9
    with pytest.raises(Interrupted) as e:
        run_toy(tmp_path / "cut", epochs=3)
    assert str(e.value) == "interrupted: checkpoint saved at epoch 2 step 9; re-run with --resume"
    assert e.value.code == 130
    ck = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")
    assert ck["epoch"] == 1 and ck["batch_in_epoch"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # the handler given back
    sigint_task.at = -1  # the resumed run is not interrupted
    run_toy(tmp_path / "cut", epochs=3, resume=True)
    assert_bitwise_equal(
        weights(tmp_path / "full/checkpoints/last.pt"),
        weights(tmp_path / "cut/checkpoints/last.pt"),
    )


def test_second_ctrl_c_during_the_checkpoint_write_waits_for_it(tmp_path, sigint_task, monkeypatch):
    """The write the first Ctrl-C asked for completes (a second Ctrl-C arrives inside it)."""
    import echoclr_cli.training.engine as engine_mod

    real = engine_mod.save_checkpoint
    writes = []

    def ctrl_c_inside(path, obj):
        writes.append(path.name)
        if obj["batch_in_epoch"]:  # the interrupt's own write (epoch ends write at batch 0)
            os.kill(os.getpid(), signal.SIGINT)
        return real(path, obj)

    monkeypatch.setattr(engine_mod, "save_checkpoint", ctrl_c_inside)
    with pytest.raises(Interrupted, match="checkpoint saved at epoch 2 step 9"):
        run_toy(tmp_path / "cut", epochs=3)
    ck = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")  # complete, the new one
    assert ck["epoch"] == 1 and ck["batch_in_epoch"] == 3 and ck["step"] == 9
    assert [p.name for p in (tmp_path / "cut/checkpoints").iterdir() if p.suffix == ".tmp"] == []


def test_second_ctrl_c_before_the_write_stops_at_once_keeping_the_last_checkpoint(
    tmp_path, sigint_task
):
    sigint_task.times = 2
    with pytest.raises(Interrupted) as e:
        run_toy(tmp_path / "cut", epochs=3)
    assert str(e.value) == (
        "interrupted: stopped at once (second Ctrl-C); the checkpoint of epoch 1 step 6 is "
        "intact; re-run with --resume"
    )
    ck = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")
    assert ck["epoch"] == 1 and ck["batch_in_epoch"] == 0
    sigint_task.at = -1
    run_toy(tmp_path / "cut", epochs=3, resume=True)
    assert load_checkpoint(tmp_path / "cut/checkpoints/last.pt")["epoch"] == 3


def test_ctrl_c_in_the_cli_exits_130_with_one_line_and_resume_continues(tmp_path, monkeypatch):
    """A real ``echoclr pretrain`` in process: Ctrl-C at step 2 -> last.pt, one line, exit 130."""
    from typer.testing import CliRunner

    from echoclr_cli.cli import app
    from echoclr_cli.training.engine import Engine
    from tests.helpers import make_dataset

    data = make_dataset(tmp_path, n_studies=8)
    real = Engine._train_one

    def step(self, *args):
        n = real(self, *args)
        if self.state.step == 2 and not self.resume:
            os.kill(os.getpid(), signal.SIGINT)
        return n

    monkeypatch.setattr(Engine, "_train_one", step)
    args = ["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "2",
            "--device", "cpu", "--profile", "demo", "--set", "model.width=0.125",
            "--set", "runtime.workers=0", "--batch-size", "4", "--set", "pretrain.method=simclr"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 130, res.output
    lines = [ln for ln in res.output.splitlines() if "interrupted" in ln]
    assert lines == [
        "warning: interrupted: checkpoint saved at epoch 1 step 2; re-run with --resume"
    ]
    assert "Traceback" not in res.output
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["step"] == 2
    res = CliRunner().invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["epoch"] == 2
