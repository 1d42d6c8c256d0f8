"""Batched device augmentation equals a per-sample numpy reference; parameter distribution."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from echoclr_cli.config.schema import KINETICS_MEAN, KINETICS_STD, AugmentConfig
from echoclr_cli.data.augment import (
    AugmentParams,
    _crop_flip_gather,
    _crop_flip_slices,
    _rotate_cv2_,
    _rotate_grid_sample_,
    apply_params,
    augment,
    normalize,
    prepare_clips,
    sample_params,
    to_three_channels,
)

torch.set_num_threads(1)


def reference_clip(
    clip: np.ndarray, oy: int, ox: int, flip: bool, angle: float, pad: int
) -> np.ndarray:
    """Per-sample path of the published scripts (bilinear rotation): clip (C, T, H, W) float64."""
    c, t, h, w = clip.shape
    out = np.empty_like(clip)
    for ci in range(c):
        for ti in range(t):
            frame = np.pad(clip[ci, ti], pad)[oy : oy + h, ox : ox + w]
            if flip:
                frame = frame[:, ::-1]
            if angle:
                frame = ndi.rotate(
                    frame, angle, reshape=False, order=1, mode="grid-constant", cval=0.0
                )
            out[ci, ti] = frame
    return out


def assert_matches_reference(clips: np.ndarray, params: AugmentParams, pad: int) -> None:
    """``apply_params`` on the batch equals ``reference_clip`` of every sample, over the whole
    frame, up to float32 rounding."""
    got = apply_params(torch.tensor(clips, dtype=torch.float32), params, pad).numpy()
    for i in range(len(clips)):
        oy, ox = int(params.offset_y[i]), int(params.offset_x[i])
        ref = reference_clip(clips[i], oy, ox, bool(params.flip[i]), float(params.angle[i]), pad)
        np.testing.assert_allclose(got[i], ref, atol=2e-3)


def random_clips(b=6, c=1, t=3, h=24, w=28, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (b, c, t, h, w)).astype(np.float64)


@pytest.mark.parametrize("c", [1, 3])
def test_batched_equals_reference_without_rotation(c):
    clips = random_clips(c=c)
    pad = 4
    params = AugmentParams(
        offset_y=torch.tensor([0, 8, 3, 4, 8, 1]),
        offset_x=torch.tensor([8, 0, 5, 4, 8, 7]),
        flip=torch.tensor([False, True, True, False, True, False]),
        angle=torch.zeros(6),
    )
    assert_matches_reference(clips, params, pad)


def test_batched_equals_reference_with_rotation():
    clips = random_clips(b=5, h=32, w=32, seed=1)
    pad = 8
    params = AugmentParams(
        offset_y=torch.tensor([8, 8, 2, 16, 8]),
        offset_x=torch.tensor([8, 8, 13, 0, 8]),
        flip=torch.tensor([False, True, False, True, False]),
        angle=torch.tensor([10.0, -7.0, 3.0, -10.0, 0.0]),
    )
    assert_matches_reference(clips, params, pad)


def test_same_transform_for_all_frames():
    frame = np.random.default_rng(2).integers(0, 256, (20, 20)).astype(np.float32)
    clip = torch.tensor(np.stack([frame] * 4))[None, None]  # (1, 1, 4, H, W)
    out = augment(clip, AugmentConfig(flip_p=0.5, rotate_p=1.0), torch.Generator().manual_seed(3))
    for t in range(1, 4):
        assert torch.equal(out[0, 0, 0], out[0, 0, t])


def test_parameter_distribution():
    g = torch.Generator().manual_seed(0)
    p = sample_params(20000, pad=8, flip_p=0.5, rotate_p=0.5, max_degrees=10, generator=g)
    for off in (p.offset_y, p.offset_x):
        counts = torch.bincount(off, minlength=17)
        assert off.min() == 0 and off.max() == 16 and len(counts) == 17
        assert (counts.float() / 20000 - 1 / 17).abs().max() < 0.01  # uniform on [0, 16]
    assert abs(p.flip.float().mean().item() - 0.5) < 0.02
    rotated = p.angle != 0
    # P(angle == 0) = 0.5 (not rotated) + 0.5 / 21
    assert abs(rotated.float().mean().item() - 0.5 * 20 / 21) < 0.02
    angles = p.angle[rotated]
    assert angles.min() == -10 and angles.max() == 10 and torch.equal(angles, angles.round())
    assert abs(angles.mean().item()) < 0.3


def test_generator_makes_it_reproducible_and_probabilities_respected():
    x = torch.rand(4, 1, 2, 16, 16) * 255
    cfg = AugmentConfig()
    a = augment(x, cfg, torch.Generator().manual_seed(5))
    b = augment(x, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(0)
    never = sample_params(1000, 0, 0.0, 0.0, 10, g)
    assert not never.flip.any() and (never.angle == 0).all() and (never.offset_x == 0).all()
    assert torch.equal(augment(x, AugmentConfig(enabled=False), g), x)
    # nothing is modified in place
    before = x.clone()
    augment(x, cfg, g), prepare_clips(x, cfg, g), prepare_clips(x, None, None)
    assert torch.equal(x, before)
    # pad 0, no flip, no rotation = identity
    ident = augment(x, AugmentConfig(pad=0, flip_p=0, rotate_p=0), g)
    assert torch.allclose(ident, x, atol=1e-3)


def test_minmax_per_clip_and_constant_clips():
    x = torch.stack(
        [torch.linspace(10, 20, 3 * 4 * 4).view(1, 3, 4, 4), torch.full((1, 3, 4, 4), 7.0)]
    )
    out = prepare_clips(x, None, None)  # (2, 3, 3, 4, 4): per-clip min-max, then 3 channels
    assert out[0].min() == 0 and out[0].max() == 1
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.isfinite(out).all()


def test_three_channels_and_normalize():
    x = torch.rand(2, 1, 3, 8, 8)
    y = to_three_channels(x)
    assert y.shape == (2, 3, 3, 8, 8) and torch.equal(y[:, 0], y[:, 2])
    assert to_three_channels(torch.rand(2, 3, 1, 4, 4)).shape[1] == 3
    with pytest.raises(ValueError):
        to_three_channels(torch.rand(2, 2, 1, 4, 4))
    n = normalize(torch.ones(1, 3, 1, 2, 2), KINETICS_MEAN, KINETICS_STD)
    assert torch.allclose(
        n[0, :, 0, 0, 0], (1 - torch.tensor(KINETICS_MEAN)) / torch.tensor(KINETICS_STD)
    )


def test_prepare_clips_from_uint8():
    x = torch.randint(0, 256, (3, 1, 4, 16, 16), dtype=torch.uint8)
    out = prepare_clips(x, AugmentConfig(), torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == (3, 3, 4, 16, 16)
    assert out.amin(dim=(1, 2, 3, 4)).eq(0).all() and torch.allclose(
        out.amax(dim=(1, 2, 3, 4)), torch.ones(3)
    )
    plain = prepare_clips(x, None, None)
    xf = x.float()
    lo, hi = xf.amin(dim=(1, 2, 3, 4), keepdim=True), xf.amax(dim=(1, 2, 3, 4), keepdim=True)
    assert torch.allclose(plain[:, :1], (xf - lo) / (hi - lo))
    with pytest.raises(ValueError):
        prepare_clips(x, AugmentConfig(), None)


def test_crop_flip_gather_equals_slices_exactly():
    x = torch.randint(0, 256, (7, 2, 3, 10, 12), dtype=torch.uint8)
    g = torch.Generator().manual_seed(4)
    for pad in (0, 3, 8, 20):  # 20 > frame size: whole-frame shifts out of view
        p = sample_params(7, pad, 0.5, 0.0, 0, g)
        a, b = _crop_flip_gather(x, p, pad), _crop_flip_slices(x, p, pad)
        assert a.dtype == torch.uint8 and torch.equal(a, b)


def test_rotation_cpu_and_cuda_kernels_agree():
    x = torch.rand(6, 1, 5, 20, 24) * 255  # C*T = 5 planes per clip
    angle = torch.tensor([0.0, 10.0, -10.0, 3.0, 0.0, -1.0])
    idx = torch.nonzero(angle != 0).flatten()
    a = _rotate_cv2_(x.clone(), idx, angle)
    b = _rotate_grid_sample_(x.clone(), idx, angle)
    assert (a - b).abs().max() < 1e-2
    assert torch.equal(a[0], x[0]) and torch.equal(a[4], x[4])  # angle 0 untouched
