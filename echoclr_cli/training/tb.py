"""TensorBoard output (``runtime.tensorboard: true``), via ``torch.utils.tensorboard``.

TensorBoard is a view, never the record: ``history.csv`` stays the source of truth and the
scalars are regenerated from it (:func:`write_history` replaces the events it wrote before, so a
resumed run never shows an epoch twice). ``embed`` adds the embedding projector, ``explain`` a
few Grad-CAM frames. Needs the ``tensorboard`` package (``pip install 'echoclr[explain]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from echoclr_cli.errors import require_extra

EVENTS_GLOB = "events.out.tfevents.*"


def require():
    """``torch.utils.tensorboard``, or the one-line error naming the extra (checked before work)."""
    return require_extra(
        "torch.utils.tensorboard",
        "runtime.tensorboard",
        package="tensorboard",
        alternative="--set runtime.tensorboard=false",
    )


def _writer(log_dir: Path):
    return require().SummaryWriter(log_dir=str(log_dir))


def _clear(log_dir: Path) -> None:
    for p in Path(log_dir).glob(EVENTS_GLOB):
        p.unlink()


def write_history(run_dir: Path) -> Path:
    """Every numeric column of ``run_dir/history.csv`` as a scalar per epoch, in
    ``run_dir/tensorboard/history`` (previous history events there are replaced)."""
    run_dir = Path(run_dir)
    df = pd.read_csv(run_dir / "history.csv")
    log_dir = run_dir / "tensorboard" / "history"
    log_dir.mkdir(parents=True, exist_ok=True)
    _clear(log_dir)
    steps = df["epoch"].astype(int) if "epoch" in df.columns else pd.Series(range(1, len(df) + 1))
    w = _writer(log_dir)
    try:
        for col in df.columns:
            if col == "epoch" or not pd.api.types.is_numeric_dtype(df[col]):
                continue
            for step, v in zip(steps, df[col], strict=True):
                if pd.notna(v):
                    w.add_scalar(col, float(v), int(step))
    finally:
        w.close()
    return log_dir


def add_embedding(
    log_dir: Path, x: np.ndarray, index: pd.DataFrame, columns: Sequence[str], tag: str
) -> Path:
    """The embedding projector for ``x: (n, F)`` with ``columns`` of ``index`` as metadata."""
    import torch

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    _clear(log_dir)
    cols = ["video_id", *columns]
    meta = [[_text(v) for v in row] for row in index[cols].itertuples(index=False)]
    w = _writer(log_dir)
    try:
        w.add_embedding(torch.from_numpy(x), metadata=meta, metadata_header=cols, tag=tag)
    finally:
        w.close()
    return log_dir


def add_frames(log_dir: Path, tag: str, frames: np.ndarray) -> Path:
    """A few overlay frames ``(K, H, W, 3)`` uint8 RGB as images ``tag/0..K-1``."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    w = _writer(log_dir)
    try:
        for i, frame in enumerate(frames):
            w.add_image(tag, frame, global_step=i, dataformats="HWC")
    finally:
        w.close()
    return log_dir


def _text(v) -> str:
    if isinstance(v, float) and np.isnan(v):
        return "unknown"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)
