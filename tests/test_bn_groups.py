"""BatchNorm in groups of ``pretrain.bn_group_size`` clips (issue 24, point 2): the published
pretraining normalised each 392-clip view in the two 196-clip replicas of DataParallel.

Group BatchNorm equals plain BatchNorm run on each group separately (outputs, gradients, running
statistics of group 0 as DataParallel's replica 0), and 1 process equals 2 processes (gloo on
CPU) in the outputs, gradients, running statistics and the NT-Xent loss of the SSL model, for
groups inside one process and groups that span both.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from helpers import make_dataset, spawn_workers
from torch import nn

from echoclr_cli.config.schema import Config
from echoclr_cli.data.datasets import EpochSampler
from echoclr_cli.models.backbones import SSLModel, build_backbone
from echoclr_cli.models.sync_bn import GroupBatchNorm, convert_group_batchnorm, group_bounds
from echoclr_cli.pretrain.losses import nt_xent
from echoclr_cli.pretrain.plan import bn_group_size, bn_groups
from echoclr_cli.pretrain.run import run_pretrain
from echoclr_cli.training.engine import Engine


def _x(n: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 2, 4, 4, generator=g) * 3 + 2


def _bn() -> nn.BatchNorm3d:
    torch.manual_seed(0)
    bn = nn.BatchNorm3d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn


def test_group_bounds():
    assert group_bounds(392, 196) == [(0, 196), (196, 392)]
    assert group_bounds(8, 3) == [(0, 3), (3, 6), (6, 8)]
    assert group_bounds(7, 3) == [(0, 3), (3, 7)]  # a one-clip remainder joins the last group
    assert group_bounds(32, 196) == [(0, 32)]  # a batch below the group size: one group
    assert group_bounds(8, 0) == [(0, 8)]  # 0 = the whole batch (as before)


@pytest.mark.parametrize("size", [2, 3, 4])
def test_group_bn_equals_plain_bn_on_each_group(size):
    x = _x().requires_grad_()
    gbn = convert_group_batchnorm(_bn(), size)
    assert isinstance(gbn, GroupBatchNorm) and gbn.group_size == size
    y = gbn(x)
    (y * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
    xr = x.detach().clone().requires_grad_()
    bounds = group_bounds(len(xr), size)
    copies = [_bn() for _ in bounds]  # plain BatchNorm, one copy per group (DataParallel replicas)
    yr = torch.cat([bn(xr[s:e]) for bn, (s, e) in zip(copies, bounds, strict=True)])
    (yr * torch.arange(yr.numel()).view_as(yr).sin()).sum().backward()
    weight_grad = sum(bn.weight.grad for bn in copies)  # replicas' gradients summed
    ref = copies[0]  # replica 0 keeps its running statistics
    torch.testing.assert_close(y, yr, rtol=0, atol=1e-6)
    torch.testing.assert_close(x.grad, xr.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(gbn.weight.grad, weight_grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gbn.running_mean, ref.running_mean, rtol=0, atol=1e-7)
    torch.testing.assert_close(gbn.running_var, ref.running_var, rtol=0, atol=1e-7)
    assert int(gbn.num_batches_tracked) == 1


def test_group_bn_differs_from_whole_batch_and_keeps_state_dict():
    x = _x()
    plain, gbn = _bn(), convert_group_batchnorm(_bn(), 4)
    assert not torch.allclose(plain(x), gbn(x), atol=1e-3)  # the grouping is real
    assert list(gbn.state_dict()) == list(_bn().state_dict())  # checkpoints load into r3d_18
    whole = convert_group_batchnorm(_bn(), 0)
    assert torch.equal(whole(x), _bn()(x))  # 0 = the whole batch, as before
    gbn.eval(), plain.eval()
    plain.load_state_dict(gbn.state_dict())
    assert torch.equal(plain(x), gbn(x))  # eval: the running statistics, plain BatchNorm


# ------------------------------------------------------------------- 1 process == 2 processes
B, CASES = 8, (2, 3, 8)  # groups inside one process (2), across both (3: 0-2, 3-5, 6-7), all (8)


def _views():
    g = torch.Generator().manual_seed(2)
    v = torch.rand(2, B, 3, 4, 16, 16, generator=g, dtype=torch.float64)
    return v[0], v[1]


def _ssl(size: int) -> SSLModel:
    torch.manual_seed(0)
    model = SSLModel(build_backbone("r3d_18", 0.125), 16, 8).double()  # float64: exact compare
    return convert_group_batchnorm(model, size)


def _step(model: nn.Module, v1, v2, gather: bool):
    """One SSL forward/backward: views encoded separately (paper), NT-Xent; returns the numbers
    compared: loss, the stem's gradient, the first BatchNorm's running stats."""
    b = v1.shape[0]
    _, z, _ = model(torch.cat([v1, v2]), views=2)
    loss = nt_xent(z[:b], z[b:], 0.5, gather=gather)
    loss.backward()
    m = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    stem, bn = m.backbone.stem[0], m.backbone.stem[1]
    return loss.item(), stem.weight.grad.numpy().copy(), bn.running_mean.numpy().copy()


def _worker(rank: int, port: int, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        v1, v2 = _views()
        half = slice(rank * B // 2, (rank + 1) * B // 2)
        out = {}
        for size in CASES:
            ddp = nn.parallel.DistributedDataParallel(_ssl(size))
            out[size] = _step(ddp, v1[half], v2[half], gather=True)
        q.put((rank, out))
        dist.barrier()  # no rank tears gloo down while a peer still has an op in flight
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns 2 processes (about 10 s on 2 loaded cores)
def test_one_process_equals_two_processes():
    v1, v2 = _views()
    ref = {size: _step(_ssl(size), v1, v2, gather=False) for size in CASES}
    assert abs(ref[2][0] - ref[8][0]) > 1e-4  # the group size changes the loss
    got = spawn_workers(_worker)
    for size in CASES:
        loss, grad, running_mean = ref[size]
        # each rank's loss is that of its own anchors: the global loss is their mean
        assert (got[0][size][0] + got[1][size][0]) / 2 == pytest.approx(loss, rel=1e-10), size
        for rank in (0, 1):
            r_grad = got[rank][size][1]
            torch.testing.assert_close(
                torch.from_numpy(r_grad), torch.from_numpy(grad), rtol=1e-8, atol=1e-10
            )
        # running statistics: global group 0 (rank 0), broadcast by DDP at the next forward
        torch.testing.assert_close(torch.from_numpy(got[0][size][2]),
                                   torch.from_numpy(running_mean), rtol=0, atol=1e-12)  # fmt: skip


# ------------------------------------------------------------------- the pretraining wiring
def _cfg(**pretrain) -> Config:
    return Config.model_validate({"pretrain": pretrain, "runtime": {"sync_bn": False}})


def test_plan_states_the_groups():
    assert bn_groups(_cfg(), batch=392) == [
        "BatchNorm in groups of 196 clips per view (pretrain.bn_group_size, the published 2-GPU "
        "replicas): 2 group(s) of 196 clips in the 392-clip view on 1 process(es)"
    ]
    assert "2 group(s) of 196 clips in the 392-clip view on 4" in bn_groups(_cfg(), 98, 4)[0]
    assert bn_groups(_cfg(), batch=32) == []  # one group: the whole batch, nothing to say
    assert bn_groups(_cfg(bn_group_size=0), batch=392) == []
    sync = Config.model_validate({"runtime": {"sync_bn": True}})
    assert bn_group_size(sync, 1) == 196  # sync_bn acts on several processes only
    assert bn_group_size(sync, 2) == 0 and "not applied" in bn_groups(sync, 196, 2)[0]
    assert bn_groups(sync, 16, 2) == []  # 32 clips < 196: one group either way, nothing to say


def test_sampler_ranks_hold_contiguous_blocks_of_the_global_batch():
    """drop_last (pretraining): rank r's batch of a step is block r of the one-process batch, so
    the groups along the global batch hold the same clips on 1 and 2 processes."""
    one = [i for _, i in EpochSampler(23, True, 5, drop_last=True, batch_size=8)]
    two = [
        [
            i
            for _, i in EpochSampler(
                23, True, 5, rank=r, world_size=2, drop_last=True, batch_size=4
            )
        ]
        for r in (0, 1)
    ]
    assert len(one) == 16 and all(len(t) == 8 for t in two)
    for step in range(2):
        assert (
            one[8 * step : 8 * step + 8]
            == two[0][4 * step : 4 * step + 4] + two[1][4 * step : 4 * step + 4]
        )


class _Stop(Exception):
    pass


def test_pretraining_trains_group_batchnorm(tmp_path, monkeypatch):
    """run_pretrain hands the engine a model whose BatchNorm layers are GroupBatchNorm of
    pretrain.bn_group_size (and plain BatchNorm with 0)."""
    seen = []

    def fake_fit(self, task, *a, **kw):
        seen.append(task.model)
        raise _Stop

    monkeypatch.setattr(Engine, "fit", fake_fit)
    data = make_dataset(tmp_path / "data", n_studies=8)
    for size in (3, 0):
        cfg = Config.model_validate({
            "model": {"width": 0.125},
            "runtime": {"device": "cpu", "workers": 0},
            "pretrain": {"method": "simclr", "batch_size": 6, "bn_group_size": size, "epochs": 1},
        })  # fmt: skip
        with pytest.raises(_Stop):
            run_pretrain(cfg, data, tmp_path / f"run{size}")
        bns = [m for m in seen[-1].modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert bns and all(isinstance(m, GroupBatchNorm) == (size > 0) for m in bns)
        assert all(m.group_size == 3 for m in bns if isinstance(m, GroupBatchNorm))


@pytest.mark.slow  # 2 torchrun launches and 2 single-process runs of the CLI
def test_torchrun_two_processes_same_loss_as_one_process(tmp_path):
    """The real path without sync_bn: `torchrun` with 2 processes and one process on the same
    global batch of P pairs give the same first-epoch loss, with groups of P/2 clips (one per
    process: no communication) and with the default 196 (one group spanning both processes).
    Before the groups, 2 processes normalised each half on its own and the loss differed."""
    import subprocess
    import sys

    import pandas as pd
    from test_torchrun import ROOT, TORCHRUN, _env, _mi_simclr_pairs

    data = make_dataset(tmp_path, n_studies=20)
    p = _mi_simclr_pairs(data)
    assert p >= 8 and p % 2 == 0, p
    env = _env(GLOO_SOCKET_IFNAME="lo")
    losses = {}
    for size in (p // 2, 196):
        for name, launch in (("one", [sys.executable]),
                             ("two", [TORCHRUN, "--standalone", "--nproc_per_node", "2"])):  # fmt: skip
            out = tmp_path / f"{name}{size}"
            cmd = [*launch, "-m", "echoclr_cli", "pretrain", "--method", "mi-simclr",
                   "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", str(p),
                   "--device", "cpu", "--profile", "demo", "--set", "model.width=0.125",
                   "--set", "pretrain.augment.enabled=false",
                   "--set", f"pretrain.bn_group_size={size}"]  # fmt: skip
            res = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
            )
            assert res.returncode == 0, res.stdout + res.stderr
            losses[name, size] = pd.read_csv(out / "history.csv").nt_xent.iloc[0]
    print(losses)
    for size in (p // 2, 196):
        assert abs(losses["one", size] - losses["two", size]) < 1e-5, (size, losses)
    assert abs(losses["one", p // 2] - losses["one", 196]) > 1e-4  # the groups are real
