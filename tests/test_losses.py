"""NT-Xent against an independent loop implementation and analytic values; order loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from echoclr_cli.pretrain.losses import nt_xent, order_accuracy, order_loss


def reference_nt_xent(z1: np.ndarray, z2: np.ndarray, t: float, groups=None) -> float:
    """Plain-loop SimCLR loss in float64 (numpy)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    b = len(z1)
    g = None if groups is None else np.concatenate([groups, groups])
    total = 0.0
    for i in range(2 * b):
        pos = (i + b) % (2 * b)
        denom = 0.0
        for j in range(2 * b):
            if j == i:
                continue
            if g is not None and j != pos and g[j] == g[i]:
                continue
            denom += math.exp(z[i] @ z[j] / t)
        total += -(z[i] @ z[pos] / t) + math.log(denom)
    return total / (2 * b)


@pytest.mark.parametrize(
    "b,d,t", [(1, 3, 0.05), (2, 4, 0.5), (5, 8, 0.05), (16, 32, 0.1), (7, 3, 1.0)]
)
def test_nt_xent_matches_reference(b, d, t):
    rng = np.random.default_rng(b * 100 + d)
    z1, z2 = rng.normal(size=(b, d)), rng.normal(size=(b, d))
    got = nt_xent(torch.tensor(z1), torch.tensor(z2), temperature=t)
    assert got.dtype == torch.float64
    assert abs(got.item() - reference_nt_xent(z1, z2, t)) < 1e-6


def test_nt_xent_orthogonal_analytic():
    # z1_i = z2_i = e_i: positive similarity 1, the 2B-2 negatives 0
    for b, t in [(3, 0.05), (8, 0.2), (10, 1.0)]:
        e = torch.eye(b, dtype=torch.float64)
        expected = math.log(2 * b - 2 + math.exp(1 / t)) - 1 / t
        assert abs(nt_xent(e, e.clone(), temperature=t).item() - expected) < 1e-9


def test_nt_xent_antipodal_and_scale_invariance():
    # positives opposite (cos -1), others orthogonal: loss = log(2B-2 + e^{-1/t}) + 1/t
    b, t = 4, 0.5
    e = torch.eye(b, dtype=torch.float64)
    expected = math.log(2 * b - 2 + math.exp(-1 / t)) + 1 / t
    assert abs(nt_xent(e, -e, temperature=t).item() - expected) < 1e-9
    rng = np.random.default_rng(1)
    z1, z2 = torch.tensor(rng.normal(size=(6, 5))), torch.tensor(rng.normal(size=(6, 5)))
    assert torch.allclose(nt_xent(z1, z2), nt_xent(3 * z1, 0.1 * z2))


def test_nt_xent_symmetric_and_float32():
    rng = np.random.default_rng(2)
    z1, z2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    a = nt_xent(torch.tensor(z1), torch.tensor(z2), 0.1)
    b = nt_xent(torch.tensor(z2), torch.tensor(z1), 0.1)
    assert abs(a.item() - b.item()) < 1e-12
    f32 = nt_xent(torch.tensor(z1, dtype=torch.float32), torch.tensor(z2, dtype=torch.float32), 0.1)
    assert f32.dtype == torch.float32 and abs(f32.item() - a.item()) < 1e-4
    half = nt_xent(
        torch.tensor(z1, dtype=torch.bfloat16), torch.tensor(z2, dtype=torch.bfloat16), 0.1
    )
    assert half.dtype == torch.float32  # low-precision inputs are promoted


def test_nt_xent_groups_remove_same_study_negatives():
    rng = np.random.default_rng(3)
    z1, z2 = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    groups = np.array([0, 0, 1, 2, 2, 2])
    got = nt_xent(torch.tensor(z1), torch.tensor(z2), 0.2, groups=torch.tensor(groups))
    assert abs(got.item() - reference_nt_xent(z1, z2, 0.2, groups)) < 1e-6
    # all-distinct groups = no masking
    distinct = nt_xent(torch.tensor(z1), torch.tensor(z2), 0.2, groups=torch.arange(6))
    assert abs(distinct.item() - reference_nt_xent(z1, z2, 0.2)) < 1e-9


def test_nt_xent_gradient_flows_and_rejects_bad_shapes():
    z1 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    nt_xent(z1, z2, 0.1).backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3), (z1, z2))
    with pytest.raises(ValueError):
        nt_xent(torch.randn(4, 3), torch.randn(3, 3))


def test_order_loss_and_accuracy():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    target = torch.tensor([0, 2])
    lp = torch.log_softmax(logits, 1)
    expected = -(lp[0, 0] + lp[1, 2]) / 2
    assert torch.allclose(order_loss(logits, target), expected)
    assert order_accuracy(logits, target).item() == 0.5
    # uniform logits over K! classes -> log(K!)
    assert abs(order_loss(torch.zeros(5, 24), torch.arange(5)).item() - math.log(24)) < 1e-6


# --------------------------------------------------------------------------- fp32 under autocast
class _MatmulDtypes:
    """Records the dtypes of every matrix product run inside (after autocast's casts)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        seen = self.seen = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if func.__name__.split(".")[0] in ("mm", "bmm", "addmm", "matmul"):
                    seen.append(out.dtype)
                return out

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def test_losses_run_in_fp32_under_cpu_autocast():
    """Inside a bf16 autocast (the engine's on the GPU) the similarity matmul of NT-Xent must
    run in float32; a bare ``anchors @ cands.T`` there runs in bf16 (the control)."""
    from echoclr_cli.finetune.losses import classification_loss
    from echoclr_cli.pretrain import losses

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with _MatmulDtypes() as control:
            losses._nt_xent(z1, z2, 0.05, False, None)  # the loss body without the fp32 guard
        with _MatmulDtypes() as rec:
            loss = losses.nt_xent(z1, z2, 0.05)
        ro = losses.order_loss(torch.randn(4, 24, generator=g).bfloat16(), torch.arange(4))
        bce = classification_loss(torch.randn(4).bfloat16(), torch.ones(4), 2.0, 0.0)
    assert control.seen and torch.bfloat16 in control.seen  # the test can see a bf16 matmul
    assert rec.seen and all(d == torch.float32 for d in rec.seen), rec.seen
    assert loss.dtype == ro.dtype == bce.dtype == torch.float32
    assert torch.isclose(loss, nt_xent(z1, z2, 0.05), atol=1e-6)  # = the loss without autocast
