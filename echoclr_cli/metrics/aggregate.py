"""Clip -> video -> study aggregation of prediction frames (mean probability per video, then
per study), with the consistency checks the evaluation relies on.

Pure pandas over prediction DataFrames; ``metrics`` computes numbers on what this returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from echoclr_cli.errors import UserError


# --------------------------------------------------------------------------- aggregation
def check_consistent(df: pd.DataFrame, key: str, col: str) -> None:
    counts = df.groupby(key, sort=True)[col].nunique(dropna=False)
    bad = counts[counts > 1].index.tolist()
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        raise UserError(
            f"{col} differs within {key}: {shown} ({len(bad)} ids)",
            fix=f"every row of one {key} must carry the same {col}; fix the labels/manifest",
        )


def require_columns(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UserError(
            f"{what} is missing columns {missing} (has {list(df.columns)})",
            fix="pass predictions with video_id, study_id, patient_id, y_true, y_prob",
        )


def aggregate(df: pd.DataFrame, level: str) -> pd.DataFrame:
    """Average predictions up to ``level`` ("video" or "study").

    ``df`` has one row per clip or per video with ``video_id, study_id, patient_id, y_true,
    y_prob`` (optionally ``n_clips`` when rows are videos). A video's probability is the mean of
    its clips' probabilities; a study's probability is the mean of its videos' probabilities (each
    video counts once whatever its clip count). ``y_true`` (and ``patient_id``) must be the same
    for all rows of a video and of a study.

    Returns, sorted by ids: video level ``video_id, study_id, patient_id, y_true, y_prob,
    n_clips``; study level ``study_id, patient_id, y_true, y_prob, n_videos``.
    """
    if level not in ("video", "study"):
        raise ValueError(f"level must be 'video' or 'study', got {level!r}")
    require_columns(df, ["video_id", "study_id", "patient_id", "y_true", "y_prob"], "predictions")
    if df["y_true"].isna().any() or df["y_prob"].isna().any():
        raise UserError(
            "predictions contain missing y_true or y_prob values",
            fix="drop rows without a label before evaluation",
        )
    clip_counts = df["n_clips"] if "n_clips" in df.columns else pd.Series(1, index=df.index)
    work = df.assign(_n_clips=clip_counts.astype(np.int64))
    video = _mean_per(
        work, "video_id", ("study_id", "patient_id", "y_true"), count=("n_clips", "_n_clips", "sum")
    )
    video["y_true"] = video["y_true"].astype(np.int64)
    video = video.sort_values(["study_id", "video_id"], kind="stable").reset_index(drop=True)
    video = video[["video_id", "study_id", "patient_id", "y_true", "y_prob", "n_clips"]]
    if level == "video":
        return video
    study = _mean_per(
        video, "study_id", ("patient_id", "y_true"), count=("n_videos", "video_id", "size")
    )
    return study[["study_id", "patient_id", "y_true", "y_prob", "n_videos"]]


def _mean_per(
    df: pd.DataFrame, key: str, same: Sequence[str], count: tuple[str, str, str]
) -> pd.DataFrame:
    """One row per ``key`` (sorted): the ``same`` columns, checked to be constant within a
    ``key``, the mean ``y_prob`` and ``count = (name, column, how)``, e.g. the summed clips."""
    for col in same:
        check_consistent(df, key, col)
    name, col, how = count
    agg = {c: (c, "first") for c in same} | {"y_prob": ("y_prob", "mean"), name: (col, how)}
    return df.groupby(key, sort=True).agg(**agg).reset_index()


def aggregate_levels(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``{"video": aggregate(df, "video"), "study": aggregate(df, "study")}``."""
    video = aggregate(df, "video")
    return {"video": video, "study": aggregate(video, "study")}
