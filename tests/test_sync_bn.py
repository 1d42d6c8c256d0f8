"""GlobalBatchNorm (runtime.sync_bn on CPU / gloo): 2 processes on the two halves of a batch
normalise, backpropagate and update running statistics exactly as one process on the batch."""

import os

import pytest
import torch
import torch.distributed as dist
from helpers import spawn_workers
from torch import nn

from echoclr_cli.models.sync_bn import GlobalBatchNorm, convert_sync_batchnorm


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(3, 4, 3), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 2, 1))


def _batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, 4, 8, 8, generator=g) * 3 + 2


def _reference():
    m = _model()
    m.train()
    x = _batch()
    y = m(x)
    (y.square().mean()).backward()
    bn = m[1]
    return y.detach(), m[0].weight.grad.clone(), bn.running_mean.clone(), bn.running_var.clone()


def _worker(rank: int, port: int, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        m = convert_sync_batchnorm(_model(), torch.device("cpu"))
        ddp = nn.parallel.DistributedDataParallel(m)
        x = _batch()[rank * 3 : (rank + 1) * 3]
        y = ddp(x)
        # mean over the global batch = mean of the per-rank means (equal halves); DDP averages
        # gradients over ranks, so the per-rank loss is the half-batch mean
        (y.square().mean()).backward()
        bn = m[1]
        # numpy arrays travel by value; a tensor would be shared through a file descriptor that
        # vanishes when this process exits before the parent reads it (seen under load)
        arrays = (y.detach(), m[0].weight.grad, bn.running_mean, bn.running_var)
        q.put((rank, tuple(a.detach().numpy().copy() for a in arrays)))
        dist.barrier()  # no rank tears gloo down while a peer still has an op in flight
    finally:
        dist.destroy_process_group()


def test_convert_keeps_parameters_and_state_dict_keys():
    m = _model()
    before = m.state_dict().keys()
    weight = m[1].weight
    c = convert_sync_batchnorm(m, torch.device("cpu"))
    assert isinstance(c[1], GlobalBatchNorm)
    assert c[1].weight is weight  # an optimizer built before stays valid
    assert list(c.state_dict().keys()) == list(before)
    plain = _model()
    plain.load_state_dict(c.state_dict())


def test_single_process_is_plain_batchnorm():
    ref = _model()
    c = convert_sync_batchnorm(_model(), torch.device("cpu"))
    x = _batch()
    assert torch.equal(ref(x), c(x))  # no process group: nn.BatchNorm's own path
    ref.eval()
    c.eval()
    assert torch.equal(ref(x), c(x))


def test_two_processes_equal_one_process_on_the_global_batch():
    y_ref, grad_ref, rm_ref, rv_ref = _reference()
    got = spawn_workers(_worker, timeout=120)
    out = [(r, *(torch.from_numpy(a) for a in o)) for r, o in enumerate(got)]
    y = torch.cat([o[1] for o in out])
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
    for o in out:
        torch.testing.assert_close(o[2], grad_ref, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(o[3], rm_ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(o[4], rv_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dims", [2, 3, 5])
def test_rejects_nothing_it_can_normalise(dims):
    bn = GlobalBatchNorm(3)
    x = torch.randn(*([4, 3] + [2] * (dims - 2)))
    assert bn(x).shape == x.shape
    with pytest.raises(ValueError, match="at least 2D"):
        bn(torch.randn(3))
