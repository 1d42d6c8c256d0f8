"""Preprocessed video store: one uint8 ``.npy`` per video, memory-mappable.

A video is ``(T, H, W)`` (grayscale) or ``(T, H, W, 3)`` (RGB), dtype uint8. Files are written
atomically (temp file + rename), so a crash never leaves a partial ``.npy`` under its final name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from echoclr_cli.io import atomic_write


def save_video(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8, ``(T,H,W)`` or ``(T,H,W,3)``) to ``path`` atomically as ``.npy``."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise ValueError(f"video must be uint8, got {arr.dtype}")
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] != 3) or arr.shape[0] < 1:
        raise ValueError(f"video must be (T,H,W) or (T,H,W,3) with T >= 1, got {arr.shape}")
    arr = np.ascontiguousarray(arr)
    atomic_write(Path(path), lambda f: np.save(f, arr, allow_pickle=False))


def load_video(path: Path) -> np.ndarray:
    """Memory-map a stored video: uint8 ``(T,H,W)`` or ``(T,H,W,3)`` (read-only memmap)."""
    return np.load(Path(path), mmap_mode="r", allow_pickle=False)
