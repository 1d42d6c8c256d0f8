"""Clip sampling over stored videos: sample keys and the per-sample random generator, clip
starts (random, evenly spaced, published, all) and reading one clip from a memory map.

Keys are ``int`` or ``(epoch, index)``; an int key means epoch 0. All per-sample randomness
comes from ``np.random.default_rng((seed, epoch, index))``: a sample is the same whatever the
worker count, and an interrupted epoch can be replayed exactly.

Clip sampling: ``clip_len`` frames ``stride`` apart, spanning ``(clip_len - 1) * stride + 1``
frames. A random start is uniform over every start whose clip fits in the video. A video shorter
than the span gives one clip from frame 0 whose missing frames at the end are zeros (as in the
published scripts, which padded with zeros after the last frame).
"""

from __future__ import annotations

import numpy as np

Key = int | tuple[int, int]


def parse_key(key: Key) -> tuple[int, int]:
    """``index`` or ``(epoch, index)`` -> ``(epoch, index)``."""
    if isinstance(key, tuple | list):
        return int(key[0]), int(key[1])
    return 0, int(key)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The one source of per-sample randomness."""
    return np.random.default_rng((seed, epoch, index))


def clip_span(clip_len: int, stride: int) -> int:
    """Frames covered by one clip."""
    return (clip_len - 1) * stride + 1


def random_start(n_frames: int, clip_len: int, stride: int, rng: np.random.Generator) -> int:
    """Uniform over the starts whose clip fits; 0 for videos shorter than the span."""
    last = n_frames - clip_span(clip_len, stride)
    return int(rng.integers(0, last + 1)) if last > 0 else 0


def published_starts(n_frames: int, clip_len: int, stride: int, n: int) -> list[int]:
    """The published evaluation starts: ``arange(0, T - L, (T - L) // N)[:N]`` with
    ``L = clip_len * stride`` (the published span; equal to ours at stride 1).

    Never the very end (every start < T - L). Edge cases, as the published loader handled them:
    a video with ``T < L + N`` (so ``(T - L) // N`` would be 0 or negative, including ``T == L``
    and videos shorter than one clip) gives N clips all starting at frame 0 (zero-padded past the
    end when ``T`` is shorter than the clip). N = 1 gives the first clip, not the centred one.
    """
    span = clip_len * stride
    d = n_frames - span
    if d < n:
        return [0] * n
    return [int(s) for s in np.arange(0, d, d // n)[:n]]


def clip_starts(
    n_frames: int, clip_len: int, stride: int, clips: int | str, rule: str = "linspace"
) -> list[int]:
    """Starts of the evaluation clips of a video.

    ``clips = N``: with ``rule="linspace"`` N evenly spaced starts from the first to the last
    start that fits (``np.linspace``, floored), N = 1 gives the centred clip; with
    ``rule="published"`` see :func:`published_starts`. ``clips = "all"`` (either rule): starts every
    ``span`` frames from 0, plus one clip aligned to the end when the last one does not reach
    it, so every frame is covered at least once and no clip is padded (unless the whole video
    is shorter than one clip, which gives one zero-padded clip).
    """
    span = clip_span(clip_len, stride)
    last = max(n_frames - span, 0)
    if clips == "all":
        starts = list(range(0, last + 1, span))
        if starts[-1] != last:
            starts.append(last)
        return starts
    n = int(clips)
    if n < 1:
        raise ValueError(f"clips per video must be >= 1 or 'all', got {clips}")
    if rule == "published":
        return published_starts(n_frames, clip_len, stride, n)
    if rule != "linspace":
        raise ValueError(f"clip start rule must be 'published' or 'linspace', got {rule!r}")
    if n == 1:
        return [last // 2]
    return [int(s) for s in np.floor(np.linspace(0, last, n))]


def read_clip(video: np.ndarray, start: int, clip_len: int, stride: int) -> np.ndarray:
    """uint8 clip (C, clip_len, H, W) from a (T, H, W) or (T, H, W, 3) array; zeros past the end.

    Reads only the clip's frames from a memory map and returns a new (writable) array.
    """
    frames = video[start : start + clip_span(clip_len, stride) : stride]  # (t, H, W[, 3]) view
    if frames.ndim == 3:
        frames = frames[None]  # (1, t, H, W)
    else:
        frames = frames.transpose(3, 0, 1, 2)  # (3, t, H, W)
    t = frames.shape[1]
    out = np.empty((frames.shape[0], clip_len, *frames.shape[2:]), dtype=np.uint8)
    out[:, :t] = frames
    out[:, t:] = 0
    return out
