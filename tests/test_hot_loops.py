"""Evaluation loaders: pinned memory only for CUDA runs, persistent workers for the validation
loader that is reused every epoch."""

import pytest
from helpers import make_dataset

import echoclr_cli.inference.loader as inf
from echoclr_cli.config.schema import Config
from echoclr_cli.inference.loader import eval_loader


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("hot"), n_studies=4)


def _loader(data, cfg, **kw):
    import pandas as pd

    df = pd.read_csv(data / "manifest.csv")
    return eval_loader(df, data, "as", cfg, clip_len=4, stride=1, **kw)


@pytest.mark.parametrize("workers, persistent, expected", [(0, True, False), (1, True, True),
                                                           (1, False, False)])  # fmt: skip
def test_persistent_workers_only_when_asked_and_with_workers(data, workers, persistent, expected):
    cfg = Config()
    cfg.runtime.workers = workers
    assert _loader(data, cfg, persistent=persistent).persistent_workers is expected


@pytest.mark.parametrize("device, cuda, expected", [("auto", True, True), ("cpu", True, False),
                                                     ("auto", False, False)])  # fmt: skip
def test_pin_memory_only_for_cuda_runs(data, monkeypatch, device, cuda, expected):
    monkeypatch.setattr(inf, "cuda_available", lambda: cuda)
    cfg = Config()
    cfg.runtime.device = device
    cfg.runtime.workers = 0
    assert _loader(data, cfg).pin_memory is expected
