"""Backbones match torchvision at width 1, shapes on tiny clips, heads, weight loading."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.video import mc3_18, r2plus1d_18, r3d_18

from echoclr_cli.errors import UserError
from echoclr_cli.models.backbones import (
    Classifier,
    SSLModel,
    build_backbone,
    n_permutations,
    permutations,
    scaled,
)

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "arch,ref", [("r3d_18", r3d_18), ("r2plus1d_18", r2plus1d_18), ("mc3_18", mc3_18)]
)
def test_width_one_matches_torchvision(arch, ref):
    ours = build_backbone(arch, 1.0).state_dict()
    theirs = {k: v for k, v in ref().state_dict().items() if not k.startswith("fc.")}
    assert list(ours) == list(theirs)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in theirs.items()
    }
    assert build_backbone(arch, 1.0).out_dim == 512


def test_torchvision_weights_give_the_same_features():
    tv = r3d_18()
    model = build_backbone("r3d_18", 1.0)
    missing, unexpected = model.load_state_dict(tv.state_dict(), strict=False)
    assert missing == [] and unexpected == ["fc.weight", "fc.bias"]
    tv.fc = torch.nn.Identity()
    tv.eval(), model.eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), tv(x), atol=1e-5)


@pytest.mark.parametrize("arch", ["r3d_18", "r2plus1d_18", "mc3_18"])
def test_shapes_small_width(arch):
    bb = build_backbone(arch, 0.125)
    assert bb.out_dim == 64
    h = bb(torch.randn(2, 3, 4, 32, 32))
    assert h.shape == (2, 64)


def test_width_channel_rule():
    assert scaled(64, 1.0) == 64 and scaled(64, 0.25) == 16 and scaled(64, 0.05) == 8
    assert scaled(512, 0.3) == 154
    bb = build_backbone("r3d_18", 0.3)
    assert bb.stem[0].out_channels == 19 and bb.out_dim == 154
    with pytest.raises(UserError):
        build_backbone("resnet50", 1.0)


def test_ssl_model_heads():
    m = SSLModel(build_backbone("r3d_18", 0.125), proj_hidden=32, proj_dim=16, reorder_classes=24)
    h, z, logits = m(torch.randn(3, 3, 4, 32, 32))
    assert h.shape == (3, 64) and z.shape == (3, 16) and logits.shape == (3, 24)
    assert m.projector[0].bias is None and m.projector[2].bias is None
    assert all(k.startswith(("backbone.", "projector.", "reorder_head.")) for k in m.state_dict())
    plain = SSLModel(build_backbone("r3d_18", 0.125), 32, 16)
    assert plain(torch.randn(2, 3, 4, 32, 32))[2] is None and plain.reorder_head is None
    # width 1 default head dims: Linear(512,256)-ReLU-Linear(256,128)
    full = SSLModel(build_backbone("r3d_18", 1.0))
    assert full.projector[0].weight.shape == (256, 512) and full.projector[2].weight.shape == (
        128,
        256,
    )


def test_permutations_order():
    assert n_permutations(4) == 24 and n_permutations(5) == 120
    perms = permutations(3)
    assert perms[0] == (0, 1, 2) and perms[-1] == (2, 1, 0) and len(perms) == 6


def test_classifier_dropout_before_linear():
    torch.manual_seed(0)
    m = Classifier(build_backbone("r3d_18", 0.125), dropout=0.5)
    names = [n for n, _ in m.named_children()]
    assert names == ["backbone", "dropout", "head"]
    x = torch.randn(2, 3, 4, 32, 32)
    seen = {}
    m.head.register_forward_hook(lambda mod, inp, out: seen.update(inp=inp[0].detach()))
    m.train()
    out = m(x)
    assert out.shape == (2,)
    # dropout acts on the head's *inputs* (each feature kept x2 or zeroed), never on the logits
    torch.manual_seed(1)
    feat = m.backbone(x).detach()
    torch.manual_seed(1)
    out = m(x)
    kept = seen["inp"] != 0
    assert (~kept).any() and kept.any()
    assert torch.allclose(seen["inp"][kept], 2 * feat[kept], atol=1e-5)
    assert torch.allclose(out, m.head(seen["inp"]).squeeze(1).detach(), atol=1e-6)
    m.eval()
    with torch.no_grad():
        feat = m.backbone(x)
        assert torch.allclose(m(x), m.head(feat).squeeze(1))
