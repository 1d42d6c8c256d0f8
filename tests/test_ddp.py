"""2-process CPU (gloo) NT-Xent with gather == 1 process on the global batch: loss and gradients."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port

from echoclr_cli.pretrain.losses import nt_xent

B_GLOBAL, DIM_IN, DIM_OUT, TEMP, WORLD = 6, 5, 4, 0.1, 2


def _data():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(B_GLOBAL, DIM_IN, generator=g, dtype=torch.float64)
    b = torch.randn(B_GLOBAL, DIM_IN, generator=g, dtype=torch.float64)
    groups = torch.tensor([0, 0, 1, 1, 1, 2])  # same-study pairs across the two ranks
    return a, b, groups


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(DIM_IN, DIM_OUT).double()


def _single(use_groups: bool):
    a, b, groups = _data()
    model = _model()
    loss = nt_xent(model(a), model(b), TEMP, groups=groups if use_groups else None)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        a, b, groups = _data()
        per = B_GLOBAL // WORLD
        sl = slice(rank * per, (rank + 1) * per)
        results = {}
        for use_groups in (False, True):
            model = torch.nn.parallel.DistributedDataParallel(_model())
            loss = nt_xent(
                model(a[sl]),
                model(b[sl]),
                TEMP,
                gather=True,
                groups=groups[sl] if use_groups else None,
            )
            loss.backward()  # DDP averages the gradients over ranks
            results[use_groups] = (loss.item(), [p.grad.clone() for p in model.parameters()])
            del model  # the DDP reducer goes before the process group does
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears gloo down while a peer still has an op in flight
    finally:
        dist.destroy_process_group()
    # Exit without C++ static destructors: under load, gloo's threads being destroyed at
    # interpreter exit once aborted a rank ("terminate called without an active exception")
    # after its results were saved. The results are on disk; nothing else is left to run.
    os._exit(0)


def test_gather_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for use_groups in (False, True):
        loss, grads = _single(use_groups)
        losses = [r[use_groups][0] for r in ranks]
        assert abs(sum(losses) / WORLD - loss) < 1e-10  # mean over ranks = global loss
        for r in ranks:
            for g_ddp, g_one in zip(r[use_groups][1], grads, strict=True):
                assert torch.allclose(g_ddp, g_one, atol=1e-10), (g_ddp, g_one)
