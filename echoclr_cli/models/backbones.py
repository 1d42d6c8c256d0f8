"""Backbones and heads: torchvision video ResNets (optionally narrower), SSL and classifier heads.

Every backbone keeps torchvision's module names (``stem``, ``layer1``..``layer4``, ``fc``) so
torchvision Kinetics-400 weights and published EchoCLR checkpoints load by name. ``fc`` is an
``nn.Identity``: a backbone maps a clip ``(B, 3, T, H, W)`` to features ``(B, out_dim)``.

``width`` multiplies every channel count (``round(c * width)``, at least 8). ``width=1.0`` builds
exactly torchvision's ``r3d_18`` / ``r2plus1d_18`` / ``mc3_18`` (same state_dict keys and shapes);
smaller widths make the CPU demo profile run in minutes.
"""

from __future__ import annotations

import contextlib
import itertools
import math

import torch
from torch import Tensor, nn
from torchvision.models.video.resnet import (
    BasicBlock,
    Conv2Plus1D,
    Conv3DNoTemporal,
    Conv3DSimple,
    VideoResNet,
)

from echoclr_cli.errors import UserError

ARCHS = ("r3d_18", "r2plus1d_18", "mc3_18")
BASE_WIDTHS = (64, 128, 256, 512)
R2PLUS1D_STEM_MID = 45  # torchvision's R(2+1)D stem hidden channels


def scaled(channels: int, width: float) -> int:
    """Channel count of a layer at ``width``: ``round(channels * width)``, minimum 8."""
    return max(8, int(round(channels * width)))


def _stem(arch: str, out: int, width: float) -> nn.Sequential:
    """torchvision's BasicStem / R2Plus1dStem with ``out`` output channels."""
    if arch == "r2plus1d_18":
        mid = scaled(R2PLUS1D_STEM_MID, width)
        return nn.Sequential(
            nn.Conv3d(
                3, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False
            ),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(
                mid, out, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False
            ),
            nn.BatchNorm3d(out),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv3d(3, out, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(out),
        nn.ReLU(inplace=True),
    )


class WidthVideoResNet(VideoResNet):
    """torchvision ``VideoResNet`` (BasicBlock, [2,2,2,2]) with scaled channel counts.

    torchvision's constructor hard-codes 64/128/256/512 channels, so this re-runs the same
    construction (same ``_make_layer``, same init) with ``widths``. ``fc`` is an Identity and
    ``out_dim`` the feature size.
    """

    def __init__(self, arch: str, width: float = 1.0) -> None:
        nn.Module.__init__(self)
        conv_makers = {
            "r3d_18": [Conv3DSimple] * 4,
            "mc3_18": [Conv3DSimple] + [Conv3DNoTemporal] * 3,
            "r2plus1d_18": [Conv2Plus1D] * 4,
        }[arch]
        widths = [scaled(c, width) for c in BASE_WIDTHS]
        self.arch = arch
        self.width = width
        self.inplanes = widths[0]
        self.stem = _stem(arch, widths[0], width)
        self.layer1 = self._make_layer(BasicBlock, conv_makers[0], widths[0], 2, stride=1)
        self.layer2 = self._make_layer(BasicBlock, conv_makers[1], widths[1], 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, conv_makers[2], widths[2], 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, conv_makers[3], widths[3], 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Identity()
        self.out_dim = widths[3] * BasicBlock.expansion
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def build_backbone(arch: str = "r3d_18", width: float = 1.0) -> WidthVideoResNet:
    """Video ResNet-18 backbone, ``(B, 3, T, H, W) -> (B, out_dim)``; fc is Identity."""
    if arch not in ARCHS:
        raise UserError(f"unknown model.arch '{arch}'", fix=f"use one of {', '.join(ARCHS)}")
    if not (0 < width <= 4):
        raise UserError(f"model.width must be in (0, 4], got {width}", fix="use e.g. 1.0 or 0.25")
    return WidthVideoResNet(arch, width)


def n_permutations(k: int) -> int:
    """Number of frame orders of ``k`` frames (classes of the reordering head)."""
    return math.factorial(k)


def permutations(k: int) -> list[tuple[int, ...]]:
    """All orders of ``k`` frames; a permutation's index in this list is its class label."""
    return list(itertools.permutations(range(k)))


REORDER_HEADS = ("linear", "frames")  # pretrain.reorder_head: published | ours (FrameOrderHead)
FRAMES_HEAD_HIDDEN = 256
FRAMES_HEAD_GRID = 8  # each frame's map is averaged onto a GRID x GRID grid


class FrameOrderHead(nn.Module):
    """Frame-order head on each frame's own ``layer1`` map (``per_frame_layer1``), averaged onto a
    ``grid`` x ``grid`` grid G. For each pair of frames i < j and each channel, three numbers of
    the difference D = G_j - G_i: the mean of ``|D|`` (how far apart two frames are, the cue of
    a pixel-difference rule; the same for a clip and its reversal) and D's first moments along
    y and x (where the map gained against where it lost: which way things moved, so a clip and
    its reversal differ). C*3*T(T-1)/2 features, then BatchNorm - Linear - ReLU - Linear to the
    K! orders. Not the published head (a linear layer on the pooled features):
    ``pretrain.reorder_head=frames``.
    """

    def __init__(
        self,
        channels: int,
        frames: int,
        classes: int,
        hidden: int = FRAMES_HEAD_HIDDEN,
        grid: int = FRAMES_HEAD_GRID,
    ):
        super().__init__()
        self.frames = frames
        self.grid = grid
        self.pairs = list(itertools.combinations(range(frames), 2))
        n_in = channels * 3 * len(self.pairs)
        coords = torch.linspace(-1.0, 1.0, grid)
        self.register_buffer("ycoord", coords.view(grid, 1), persistent=False)
        self.register_buffer("xcoord", coords.view(1, grid), persistent=False)
        self.mlp = nn.Sequential(
            nn.BatchNorm1d(n_in),
            nn.Linear(n_in, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, classes),
        )

    def features(self, f: Tensor) -> Tensor:
        """f: (N, C, T, H, W) per-frame maps -> (N, C*3*P): per frame pair, mean |D| and D's y and
        x moments (D = G_j - G_i on the grid)."""
        if f.shape[2] != self.frames:
            raise ValueError(f"the frames head needs {self.frames} time steps, got {f.shape[2]}")
        g = nn.functional.adaptive_avg_pool3d(f, (self.frames, self.grid, self.grid))  # (N,C,T,g,g)
        d = torch.stack([g[:, :, j] - g[:, :, i] for i, j in self.pairs], dim=2)  # (N,C,P,g,g)
        dims = (3, 4)
        feats = (d.abs().mean(dims), (d * self.ycoord).mean(dims), (d * self.xcoord).mean(dims))
        return torch.cat(feats, dim=2).flatten(1)  # (N, C*3P)

    def forward(self, f: Tensor) -> Tensor:
        """f: (N, C, T, H, W) per-frame maps with T == frames -> logits (N, K!)."""
        return self.mlp(self.features(f))


@contextlib.contextmanager
def _running_stats_kept(*modules: nn.Module):
    """BatchNorm layers of ``modules`` normalise with batch statistics as usual but leave their
    running statistics unchanged (momentum 0) inside the block."""
    bns = [
        m
        for mod in modules
        for m in mod.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom


@contextlib.contextmanager
def _centre_taps(stack: nn.Module):
    """Inside the block, each Conv3d of ``stack`` whose temporal kernel is centred (kernel 2p+1,
    padding p, stride 1, dilation 1) has no temporal padding, and the block gets its weight's
    centre tap (name -> (O, I, 1, kh, kw), a view of the parameter, so gradients reach it) to
    call ``stack`` with. On a 1-frame input such a conv only ever multiplies the other taps by
    the zero padding. The paddings are restored after."""
    taps, saved = {}, []
    for name, m in stack.named_modules():
        if isinstance(m, nn.Conv3d) and m.kernel_size[0] > 1:
            (k, *_), (p, *hw) = m.kernel_size, m.padding
            if k == 2 * p + 1 and m.stride[0] == 1 and m.dilation[0] == 1:
                taps[f"{name}.weight"] = m.weight[:, :, p : p + 1]
                saved.append((m, m.padding))
                m.padding = (0, *hw)
    try:
        yield taps
    finally:
        for m, pad in saved:
            m.padding = pad


def per_frame_layer1(backbone: WidthVideoResNet, x: Tensor) -> Tensor:
    """``layer1``'s map of every frame on its own: x (N, 3, T, H, W) -> (N, C1, T, H/2, W/2).

    The frames go through the stem and ``layer1`` as a batch of 1-frame clips, so the 3-frame
    temporal kernels see only their centre tap: no frame is mixed with its (shuffled)
    neighbours. On the whole clip the stem and ``layer1`` already span all 4 frames, and the
    pairwise differences of their maps no longer tell which frames are neighbours
    (docs/BENCHMARKS.md, issue 24). Same weights as the clip's forward pass; the BatchNorm
    running statistics are left to the clip's pass. The convolutions run on the centre tap
    alone (``_centre_taps``): the same result as the full kernel on a zero-padded frame,
    without the taps that multiply the padding.
    """
    n, c, t, h, w = x.shape
    xf = x.transpose(1, 2).reshape(n * t, c, 1, h, w)
    stack = nn.Sequential(backbone.stem, backbone.layer1)
    with _centre_taps(stack) as taps, _running_stats_kept(stack):
        f = torch.func.functional_call(stack, taps, (xf,), strict=False)  # (N*T, C1, 1, ..)
    return f.reshape(n, t, f.shape[1], *f.shape[3:]).transpose(1, 2)


class SSLModel(nn.Module):
    """Backbone + projection head (+ frame-reordering head for EchoCLR).

    ``projector``: Linear(out_dim, hidden, no bias) - ReLU - Linear(hidden, proj_dim, no bias).
    ``reorder_head``: None, or for ``reorder_head="linear"`` (published) Linear(out_dim, K!) on
    the pooled features; for ``"frames"`` a ``FrameOrderHead`` on ``layer1``'s map of each of the
    ``reorder_frames`` frames on its own (``per_frame_layer1``).
    """

    def __init__(
        self,
        backbone: WidthVideoResNet,
        proj_hidden: int = 256,
        proj_dim: int = 128,
        reorder_classes: int = 0,
        reorder_head: str = "linear",
        reorder_frames: int = 4,
    ) -> None:
        super().__init__()
        if reorder_head not in REORDER_HEADS:
            raise UserError(
                f"unknown pretrain.reorder_head '{reorder_head}'",
                fix=f"use one of {', '.join(REORDER_HEADS)}",
            )
        self.backbone = backbone
        feat = backbone.out_dim
        self.projector = nn.Sequential(
            nn.Linear(feat, proj_hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(proj_hidden, proj_dim, bias=False),
        )
        self.reorder_from_frames = bool(reorder_classes) and reorder_head == "frames"
        self.reorder_head: nn.Module | None = None
        if self.reorder_from_frames:
            c1 = backbone.layer1[-1].conv2[1].num_features  # layer1's output channels
            self.reorder_head = FrameOrderHead(c1, reorder_frames, reorder_classes)
        elif reorder_classes:
            self.reorder_head = nn.Linear(feat, reorder_classes)

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(h, order logits or None) of one backbone call."""
        if self.reorder_from_frames:
            return self.backbone(x), self.reorder_head(per_frame_layer1(self.backbone, x))
        h = self.backbone(x)  # (N, F)
        return h, self.reorder_head(h) if self.reorder_head is not None else None

    def forward(self, x: Tensor, views: int = 1) -> tuple[Tensor, Tensor, Tensor | None]:
        """x: (N, 3, T, H, W) -> (h (N, F), z (N, proj_dim), order logits (N, K!) or None).

        ``views`` > 1: x holds that many equal chunks (the views of a pretraining batch), each
        encoded by its own backbone call, so BatchNorm uses per-view statistics (the published
        model encoded the two views separately). One model call either way (one DDP forward).
        """
        parts = [self._encode(c) for c in x.chunk(views)] if views > 1 else [self._encode(x)]
        h = torch.cat([p[0] for p in parts])  # (N, F)
        z = self.projector(h)  # (N, D)
        logits = (
            torch.cat([p[1] for p in parts]) if self.reorder_head is not None else None
        )  # (N, K!)
        return h, z, logits


class Classifier(nn.Module):
    """Backbone -> Dropout -> Linear(out_dim, n_outputs): one output for a binary task, one per
    class for a K-class task (``inference.run.Task.n_outputs``).

    DIFFERS: dropout is applied to the features *before* the linear layer; the published code
    applied it after the logit layer (zeroing logits).
    """

    def __init__(
        self, backbone: WidthVideoResNet, dropout: float = 0.25, n_outputs: int = 1
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.out_dim, n_outputs)
        self.n_outputs = n_outputs

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, T, H, W) -> logits (B,) for one output, (B, K) for K outputs."""
        h = self.backbone(x)  # (B, F)
        logits = self.head(self.dropout(h))  # (B, n_outputs)
        return logits.squeeze(1) if self.n_outputs == 1 else logits
