"""Batched clip augmentation and scaling on the training device.

Datasets return uint8 clips ``(B, C, T, H, W)``; the training step moves them to the device and
calls ``prepare_clips``: float conversion, augmentation (train only), per-clip min-max scaling to
[0, 1] (evaluation: optionally over all clips of a video, ``evaluate.scaling``), gray -> 3
channels. Every clip gets its own random parameters, shared by all its frames
(and channels):

- zero-pad ``pad`` px on each side, then crop back to (H, W) at an offset uniform in
  [0, 2*pad] on each axis (always). The published scripts drew offsets in [0, 2*pad - 1]; ours
  is symmetric around the centre.
- horizontal flip with probability ``flip_p``.
- rotation about the image centre by an integer angle uniform in [-max_degrees, max_degrees]
  with probability ``rotate_p``. Positive angles turn the image counter-clockwise on screen, the
  convention of ``scipy.ndimage.rotate`` and ``cv2.getRotationMatrix2D``.

Pad+crop and flip move pixels by whole positions and are done exactly on the uint8 data
(integer indexing; one gather on CUDA); only the rotated clips are then resampled (bilinear,
zeros outside the frame): one batched ``grid_sample`` on CUDA, ``cv2.warpAffine`` on CPU. The
result equals the per-sample numpy path (pad, crop, flip, ``scipy.ndimage.rotate(order=1,
mode="grid-constant", reshape=False)``) on the whole frame up to float rounding
(tests/test_augment.py). The published path rotated with cubic splines (``order=3``); we use
bilinear interpolation. Buffers are reused in place where the function owns them: on 2 CPU
cores fresh 12 MB allocations (page faults) cost as much as the arithmetic.

Randomness comes only from the ``torch.Generator`` passed in (the engine checkpoints its state),
so a resumed run draws the same parameters.

Channels: gray data (C=1) is repeated to 3 channels for the Kinetics-shaped stem. Colour data
stays in RGB order (preprocess stores RGB); DIFFERS: the published code read BGR frames with
OpenCV and normalised them with RGB Kinetics statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from echoclr_cli.config.schema import AugmentConfig

MINMAX_EPS = 1e-6


@dataclass
class AugmentParams:
    """Per-clip augmentation parameters, each (B,) on the clip device."""

    offset_y: Tensor  # int64 in [0, 2*pad]: crop row offset in the padded frame
    offset_x: Tensor  # int64 in [0, 2*pad]: crop column offset in the padded frame
    flip: Tensor  # bool: horizontal flip
    angle: Tensor  # float32 degrees (integer valued; 0 when not rotated)


def sample_params(
    n: int,
    pad: int,
    flip_p: float,
    rotate_p: float,
    max_degrees: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> AugmentParams:
    """Draw parameters for ``n`` clips from ``generator`` (always the same number of draws)."""
    g_dev = generator.device
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=g_dev)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=g_dev)
    flip = torch.rand(n, generator=generator, device=g_dev) < flip_p
    rotate = torch.rand(n, generator=generator, device=g_dev) < rotate_p
    deg = torch.randint(-max_degrees, max_degrees + 1, (n,), generator=generator, device=g_dev)
    angle = torch.where(rotate, deg, torch.zeros_like(deg)).float()
    device = device if device is not None else g_dev
    return AugmentParams(oy.to(device), ox.to(device), flip.to(device), angle.to(device))


def crop_flip(x: Tensor, params: AugmentParams, pad: int) -> Tensor:
    """Exact integer zero-pad + crop + horizontal flip, any dtype. x: (B, C, T, H, W) -> same.

    Output pixel (r, c) = input pixel (r + oy - pad, c' + ox - pad) with c' = W-1-c when
    flipped, zero outside the frame. One gather on CUDA; per-clip slices on CPU (faster there).
    """
    if x.is_cuda:
        return _crop_flip_gather(x, params, pad)
    return _crop_flip_slices(x, params, pad)


def _crop_flip_gather(x: Tensor, params: AugmentParams, pad: int) -> Tensor:
    b, ch, t, h, w = x.shape
    rows = params.offset_y.view(-1, 1) - pad + torch.arange(h, device=x.device)  # (B, H)
    cols = params.offset_x.view(-1, 1) - pad + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(params.flip.view(-1, 1), cols.flip(1), cols)  # (B, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    flat = x.reshape(b, ch * t, h, w)
    batch = torch.arange(b, device=x.device).view(-1, 1, 1)
    out = flat[batch, :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    out = out * inside[..., None].to(out.dtype)  # (B, H, W, C*T)
    return out.permute(0, 3, 1, 2).reshape(b, ch, t, h, w)


def _crop_flip_slices(x: Tensor, params: AugmentParams, pad: int) -> Tensor:
    b, ch, t, h, w = x.shape
    flat = x.reshape(b, ch * t, h, w)
    out = torch.zeros_like(flat)  # (B, C*T, H, W)
    shifts_y = (params.offset_y - pad).tolist()
    shifts_x = (params.offset_x - pad).tolist()
    for i, (dy, dx, flip) in enumerate(zip(shifts_y, shifts_x, params.flip.tolist(), strict=True)):
        r0, r1 = max(0, -dy), min(h, h - dy)
        c0, c1 = max(0, -dx), min(w, w - dx)
        if r0 < r1 and c0 < c1:
            out[i, :, r0:r1, c0:c1] = flat[i, :, r0 + dy : r1 + dy, c0 + dx : c1 + dx]
        if flip:
            out[i] = out[i].flip(-1)
    return out.reshape(b, ch, t, h, w)


def rotation_grid(angle: Tensor, height: int, width: int) -> Tensor:
    """grid_sample grid (N, H, W, 2) rotating each frame about its centre by ``angle`` degrees.

    Output pixel (r, c) samples the input at the inverse rotation of (r, c) about
    ((H-1)/2, (W-1)/2), in align_corners=True normalised coordinates.
    """
    dev = angle.device
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    dy = (torch.arange(height, device=dev, dtype=torch.float32) - cy).view(
        1, height, 1
    )  # (1, H, 1)
    dx = (torch.arange(width, device=dev, dtype=torch.float32) - cx).view(1, 1, width)  # (1, 1, W)
    theta = angle.float() * (math.pi / 180.0)  # (N,)
    cos = torch.cos(theta).view(-1, 1, 1)  # (N, 1, 1)
    sin = torch.sin(theta).view(-1, 1, 1)
    src_y = cy + cos * dy + sin * dx  # (N, H, W)
    src_x = cx - sin * dy + cos * dx  # (N, H, W)
    gx = src_x * (2.0 / max(width - 1, 1)) - 1.0
    gy = src_y * (2.0 / max(height - 1, 1)) - 1.0
    return torch.stack([gx, gy], dim=-1)  # (N, H, W, 2)


def rotate(x: Tensor, angle: Tensor) -> Tensor:
    """Rotate float clips (B, C, T, H, W) by per-clip ``angle`` (B,) degrees; bilinear, zeros
    outside. Clips with angle 0 are not resampled. Returns a new tensor (or ``x`` itself when
    nothing rotates).

    CUDA: one batched ``grid_sample``. CPU: ``cv2.warpAffine`` per frame, about 3x faster than
    CPU ``grid_sample``; the two agree to < 0.01 grey levels (tests/test_augment.py).
    """
    if not bool((angle != 0).any()):
        return x
    return _rotate_(x.clone(), angle)


def _rotate_(x: Tensor, angle: Tensor) -> Tensor:
    """In-place ``rotate`` of a float tensor the caller owns (no extra full-size buffer)."""
    idx = torch.nonzero(angle != 0).flatten()  # (N,)
    if idx.numel() == 0:
        return x
    if x.is_cuda:
        return _rotate_grid_sample_(x, idx, angle)
    return _rotate_cv2_(x, idx, angle)


def _rotate_grid_sample_(x: Tensor, idx: Tensor, angle: Tensor) -> Tensor:
    b, ch, t, h, w = x.shape
    sub = x.index_select(0, idx).reshape(-1, ch * t, h, w)  # (N, C*T, H, W)
    grid = rotation_grid(angle.index_select(0, idx), h, w).to(x.dtype)  # (N, H, W, 2)
    turned = F.grid_sample(sub, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return x.index_copy_(0, idx, turned.reshape(-1, ch, t, h, w))


def _rotate_cv2_(x: Tensor, idx: Tensor, angle: Tensor) -> Tensor:
    import cv2

    b, ch, t, h, w = x.shape
    planes = x.detach().reshape(b, ch * t, h, w).numpy()  # (B, C*T, H, W) view of ``x``
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # small frames: OpenCV's thread pool costs more than it gains
    try:
        for i, deg in zip(idx.tolist(), angle[idx].tolist(), strict=True):
            m = cv2.getRotationMatrix2D(centre, deg, 1.0)
            for c in range(ch * t):
                planes[i, c] = cv2.warpAffine(
                    planes[i, c],
                    m,
                    (w, h),
                    flags=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT,
                    borderValue=0.0,
                )
    finally:
        cv2.setNumThreads(threads)
    return x


def apply_params(x: Tensor, params: AugmentParams, pad: int) -> Tensor:
    """Pad+crop and flip (exact, in the input dtype), then rotate: (B, C, T, H, W) -> float32.

    Returns a new tensor; ``x`` is not modified.
    """
    out = crop_flip(x, params, pad).float()  # a new buffer (crop_flip always allocates)
    return _rotate_(out, params.angle)


def augment(x: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Random pad+crop / flip / rotation per clip: uint8 or float (B, C, T, H, W) -> float32.

    Crop and flip run before the float conversion, so uint8 input moves 4x fewer bytes.
    """
    if not cfg.enabled:
        return x.float() if x.dtype != torch.float32 else x.clone()
    params = sample_params(
        x.shape[0], cfg.pad, cfg.flip_p, cfg.rotate_p, cfg.max_degrees, generator, device=x.device
    )
    return apply_params(x, params, cfg.pad)


def _minmax_(x: Tensor, eps: float = MINMAX_EPS, bounds: Tensor | None = None) -> Tensor:
    """Per-clip min-max scaling to [0, 1], in place on a float tensor the caller owns: x: (B, ...);
    constant clips -> zeros. ``bounds`` (B, 2): each clip's (min, max) to use instead of its own
    (video-level scaling: the video's range)."""
    flat = x.view(x.shape[0], -1)  # (B, N)
    if bounds is None:
        lo = flat.amin(dim=1, keepdim=True)  # (B, 1)
        span = flat.amax(dim=1, keepdim=True) - lo  # (B, 1)
    else:
        b = bounds.to(device=x.device, dtype=x.dtype)
        lo = b[:, :1]  # (B, 1)
        span = b[:, 1:] - lo  # (B, 1)
    scale = torch.where(span > eps, 1.0 / span.clamp_min(eps), torch.zeros_like(span))  # (B, 1)
    flat.sub_(lo).mul_(scale)
    return x


def to_three_channels(x: Tensor) -> Tensor:
    """(B, 1, T, H, W) -> (B, 3, T, H, W) by repetition; 3-channel input is returned as is."""
    if x.shape[1] == 3:
        return x
    if x.shape[1] != 1:
        raise ValueError(f"clips must have 1 or 3 channels, got {x.shape[1]}")
    return x.expand(-1, 3, -1, -1, -1)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Channel-wise (x - mean) / std for (B, 3, T, H, W) clips (e.g. Kinetics-400 statistics)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1, 1)
    return (x - m) / s


def prepare_clips(
    x: Tensor,
    cfg: AugmentConfig | None,
    generator: torch.Generator | None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    bounds: Tensor | None = None,
) -> Tensor:
    """uint8 clips on the device -> model input float32 (B, 3, T, H, W).

    float -> augment (when ``cfg`` is given and enabled) -> per-clip min-max -> 3 channels ->
    optional mean/std normalisation. Runs outside autocast (float32). ``bounds`` (B, 2), eval
    only (no augmentation): the (min, max) each clip is scaled with, e.g. its video's range over
    all its clips (``evaluate.scaling=video``, the published rule); None: each clip's own range.
    """
    if bounds is not None and cfg is not None and cfg.enabled:
        raise ValueError("bounds (video-level scaling) apply to unaugmented evaluation clips only")
    with torch.autocast(device_type=x.device.type, enabled=False):
        if cfg is not None and cfg.enabled:
            if generator is None:
                raise ValueError("augmentation needs a torch.Generator")
            out = augment(x, cfg, generator)  # (B, C, T, H, W) float32, a new buffer
        else:
            out = x.float() if x.dtype != torch.float32 else x.clone()
        out = to_three_channels(_minmax_(out, bounds=bounds))  # (B, 3, T, H, W)
        if mean is not None and std is not None:
            out = normalize(out, mean, std)
    return out
