"""The random-bn init (issue 24): random weights, BatchNorm statistics of the pretraining split.

The weights are the seeded random init's, bit for bit; only the BatchNorm running statistics
change, to the cumulative average over the stated batches (checked against a hand computation
of the stem's BatchNorm input); no gradient and no optimizer step; the sweep resolves the init.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from echoclr_cli.config.load import load_config
from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.models import bn_init
from echoclr_cli.models.backbones import build_backbone
from echoclr_cli.models.weights import RANDOM_BN, init_available, init_backbone
from tests.helpers import TINY_WIDTH, make_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(
        tmp_path_factory.mktemp("rbn"), n_studies=10, videos_per_study=(1, 2), frames=(8, 10),
        size=16,
    )  # fmt: skip


def cfg_with(init: str, batch_size: int = 3) -> Config:
    return load_config(
        profile="demo",
        overrides={
            "model": {"width": TINY_WIDTH},
            "runtime": {"device": "cpu", "seed": 7},
            "finetune": {"init": init, "batch_size": batch_size, "clip_len": 4},
        },
    )


def seeded_backbone(cfg: Config) -> torch.nn.Module:
    torch.manual_seed(cfg.runtime.seed)
    return build_backbone(cfg.model.arch, cfg.model.width)


def split_state(backbone: torch.nn.Module) -> tuple[dict, dict]:
    """(weights and biases, BatchNorm buffers)."""
    params = {k: v.detach().clone() for k, v in backbone.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in backbone.named_buffers()}
    return params, buffers


def test_weights_equal_the_random_init_and_only_bn_statistics_change(data_dir, monkeypatch):
    cfg = cfg_with(RANDOM_BN)
    reference = seeded_backbone(cfg)  # what `--init random` gives with this seed
    ref_params, ref_buffers = split_state(reference)
    steps = []
    monkeypatch.setattr(torch.optim.Optimizer, "step", lambda *a, **k: steps.append(1))

    backbone = seeded_backbone(cfg)
    backbone.eval()  # the mode is restored afterwards
    report = init_backbone(cfg, backbone, data_dir)

    params, buffers = split_state(backbone)
    assert params.keys() == ref_params.keys()
    for k, v in params.items():  # conv and BatchNorm affine weights: bit for bit the random init
        assert torch.equal(v, ref_params[k]), k
    assert all(p.grad is None for p in backbone.parameters())  # no backward pass
    assert steps == []  # no optimizer step
    means = [k for k in buffers if k.endswith("running_mean")]
    assert means and all(not torch.equal(buffers[k], ref_buffers[k]) for k in means)
    assert all(
        not torch.equal(buffers[k], ref_buffers[k]) for k in buffers if k.endswith("running_var")
    )
    assert not backbone.training
    assert all(m.momentum == 0.1 for m in bn_init.batchnorms(backbone))  # restored

    n_train = int((pd.read_csv(data_dir / "manifest.csv")["split"] == "train").sum())
    bn = report.bn_estimate
    assert report.init == report.format == RANDOM_BN and report.source is None
    assert bn["videos"] == n_train and bn["batch_size"] == 3 and bn["momentum"] is None
    assert bn["batches"] == min(n_train // 3, bn_init.RANDOM_BN_BATCHES) >= 2
    assert bn["clips"] == 3 * bn["batches"] and bn["split"] == "train"
    assert buffers["stem.1.num_batches_tracked"].item() == bn["batches"]


def test_statistics_are_the_cumulative_average_over_the_batches(data_dir):
    """The stem BatchNorm's running mean/var = the mean over batches of each batch's channel
    mean / unbiased variance of the stem convolution's output (momentum None)."""
    cfg = cfg_with(RANDOM_BN)
    backbone = seeded_backbone(cfg)
    conv = seeded_backbone(cfg).stem[0]
    batches, _, _ = bn_init.pretraining_batches(cfg, data_dir, torch.device("cpu"))
    means, variances = [], []
    with torch.no_grad():
        for x in list(batches)[: bn_init.RANDOM_BN_BATCHES]:
            y = conv(x).transpose(0, 1).flatten(1)  # (C, N*T*H*W)
            means.append(y.mean(1))
            variances.append(y.var(1, unbiased=True))
    init_backbone(cfg, backbone, data_dir)
    bn = backbone.stem[1]
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bn.running_var, torch.stack(variances).mean(0), rtol=1e-4, atol=1e-6)


def test_at_most_the_stated_number_of_batches(data_dir, monkeypatch):
    monkeypatch.setattr(bn_init, "RANDOM_BN_BATCHES", 2)
    cfg = cfg_with(RANDOM_BN, batch_size=2)
    report = init_backbone(cfg, seeded_backbone(cfg), data_dir)
    assert report.bn_estimate["batches"] == 2 and report.bn_estimate["clips"] == 4


def test_needs_the_dataset_and_a_pretraining_split(data_dir):
    cfg = cfg_with(RANDOM_BN)
    with pytest.raises(UserError, match="random-bn"):
        init_backbone(cfg, seeded_backbone(cfg), None)
    cfg.pretrain.split = "nosuchsplit"
    with pytest.raises(UserError, match="nosuchsplit"):
        init_backbone(cfg, seeded_backbone(cfg), data_dir)
    assert init_available(RANDOM_BN, cfg).ok


def test_sweep_resolves_random_bn_only_when_named(data_dir, tmp_path):
    from echoclr_cli.finetune.run import init_model
    from echoclr_cli.sweep.grid import INIT_ORDER
    from echoclr_cli.sweep.inits import resolve_inits

    cfg = Config()
    cfg.sweep.pretrain_dir = tmp_path / "pretrain"
    cfg.sweep.inits = [RANDOM_BN, "random"]
    out, notes, todo = resolve_inits(cfg, data_dir)
    assert out == [("random", "random"), (RANDOM_BN, RANDOM_BN)] and todo == []
    assert "BatchNorm" in notes[RANDOM_BN]
    assert INIT_ORDER.index(RANDOM_BN) == 1
    cfg.sweep.inits = ["auto"]
    assert RANDOM_BN not in dict(resolve_inits(cfg, data_dir)[0])
    assert init_model(RANDOM_BN) is None  # the model does not follow it (like random)


def test_demo_sweep_runs_random_bn_beside_the_others(tmp_path):
    from echoclr_cli.demo import demo_config

    cfg = demo_config(load_config(profile="demo"), tmp_path)
    assert cfg.sweep.inits[:2] == ["random", RANDOM_BN]
