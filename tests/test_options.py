"""Options added for the CPU demo budget: each one changes behaviour (tested here)."""

import pytest
from helpers import make_dataset

import echoclr_cli.finetune.fit as fit_mod
from echoclr_cli.config.load import deep_merge, load_config
from echoclr_cli.config.schema import Config
from echoclr_cli.finetune.run import run_finetune
from echoclr_cli.sweep import run_config


def tiny(**sections) -> Config:
    base = {
        "model": {"width": 0.125},
        "runtime": {"device": "cpu", "workers": 0},
        "finetune": {"epochs": 1, "batch_size": 4, "clip_len": 4, "patience": 0},
        "evaluate": {"bootstrap": 0, "plots": False, "clips_per_video": 3, "splits": ["test"]},
    }
    return load_config(profile="demo", overrides=deep_merge(base, sections))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("opt"), n_studies=12)


@pytest.mark.parametrize("val_clips, expected", [(None, 3), (1, 1)])
def test_val_clips_only_changes_per_epoch_validation(
    data, tmp_path, monkeypatch, val_clips, expected
):
    seen = []
    real = fit_mod.eval_loader

    def spy(*args, **kwargs):
        loader = real(*args, **kwargs)
        seen.append(loader.dataset.clips_per_video)
        return loader

    monkeypatch.setattr(fit_mod, "eval_loader", spy)  # per-epoch validation and final evaluation
    res = run_finetune(tiny(finetune={"val_clips": val_clips}), data, tmp_path / "run")
    assert seen[0] == expected  # the per-epoch validation loader
    assert set(seen[1:]) <= {3}  # the final evaluation always uses evaluate.clips_per_video
    assert len(seen) == (2 if val_clips is None else 3)  # val re-read with 3 clips when it differs
    assert res.metrics["test"]["study"]["auroc"]["n"] > 0


@pytest.mark.parametrize("run_plots", [True, False])
def test_sweep_run_plots_controls_per_run_figures(run_plots):
    from echoclr_cli.sweep import RunSpec

    cfg = Config()
    cfg.sweep.run_plots = run_plots
    spec = RunSpec(0, "as", "random", "random", 0.1, 1e-3, 0, 2, "r", "pending", 0.0,
                   {"finetune": {"task": "as"}})  # fmt: skip
    rc = run_config(cfg, spec, "data")
    assert rc.evaluate.plots is run_plots
    cfg.evaluate.plots = False  # the sweep-level switch turns everything off
    assert run_config(cfg, spec, "data").evaluate.plots is False
