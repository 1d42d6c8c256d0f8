import pandas as pd
import pytest
import torch

from echoclr_cli.checkpoint import load_checkpoint
from echoclr_cli.engine import history_without_timing
from echoclr_cli.errors import Preempted, UserError
from tests.engine_toy import run_toy, toy_config


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

    from echoclr_cli.engine import Engine
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
    from echoclr_cli.checkpoint import prepare_run_dir

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
    from echoclr_cli.engine import Engine

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

    from echoclr_cli.engine import Engine
    from echoclr_cli.events import Step
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
