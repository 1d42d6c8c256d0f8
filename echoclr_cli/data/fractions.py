"""Label fractions: which labelled training studies a fine-tune run at ``frac`` uses.

``int(frac * N)`` labelled training studies (N = studies of the training split with a known
label), a prefix of one stratified random order per seed, so subsets are nested across fractions
(:func:`stratified_study_order`). FAULTS 17: a prefix shorter than 2 or lacking a class is
extended up to the first study of the missing class in the same order. This module is the only
definition of that rule: ``finetune`` draws the subset with :func:`training_subset`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from echoclr_cli.errors import UserError


def study_labels(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per study: ``study_id, patient_id, y, n_videos`` (sorted by study_id).

    A study's videos must agree on the label (UserError naming the studies otherwise).
    """
    g = df.groupby("study_id", sort=True)
    out = g.agg(
        patient_id=("patient_id", "first"),
        y=(task, "max"),
        y_min=(task, "min"),
        n_videos=("video_id", "size"),
    ).reset_index()
    mixed = out.loc[out["y"] != out["y_min"], "study_id"].tolist()
    if mixed:
        raise UserError(
            f"{len(mixed)} studies have videos with different '{task}' labels: {mixed[:10]}",
            fix="give every video of a study the study's label in manifest.csv",
        )
    out["y"] = out["y"].astype(np.int64)
    return out.drop(columns=["y_min"])


def stratified_study_order(study_ids: list[str], labels: np.ndarray, seed: int) -> np.ndarray:
    """A random order of studies that keeps every prefix stratified; returns indices.

    Positives and negatives are shuffled separately (``default_rng(seed)``, ids sorted first so
    the order does not depend on manifest row order) and interleaved by largest remainder: the
    next study comes from the class furthest behind its share of the prefix (ties: the minority
    class). Every prefix of length n holds ``round``-ish ``n * prevalence`` positives, and the
    prefixes for growing fractions are nested.
    """
    ids = np.asarray(study_ids, dtype=object)
    y = np.asarray(labels).astype(np.int64)
    order_ids = np.argsort(ids, kind="stable")
    rng = np.random.default_rng(seed)
    pos = order_ids[y[order_ids] == 1]
    neg = order_ids[y[order_ids] == 0]
    pos, neg = rng.permutation(pos), rng.permutation(neg)
    n = len(ids)
    share_pos = len(pos) / n if n else 0.0
    minority_pos = len(pos) <= len(neg)
    out = np.empty(n, dtype=np.int64)
    i_pos = i_neg = 0
    for rank in range(n):
        deficit_pos = share_pos * (rank + 1) - i_pos
        deficit_neg = (1 - share_pos) * (rank + 1) - i_neg
        take_pos = deficit_pos > deficit_neg or (deficit_pos == deficit_neg and minority_pos)
        if (take_pos and i_pos < len(pos)) or i_neg >= len(neg):
            out[rank], i_pos = pos[i_pos], i_pos + 1
        else:
            out[rank], i_neg = neg[i_neg], i_neg + 1
    return out


@dataclass
class FractionSample:
    """The labelled training studies a run uses."""

    studies: pd.DataFrame  # study_id, patient_id, y, n_videos, order (0-based rank)
    n_requested: int  # int(frac * N)
    n_available: int  # N labelled training studies
    extended: bool  # True when the prefix was extended to hold both classes


def requested_size(frac: float, n_available: int) -> int:
    """``int(frac x N)``; the epsilon keeps 0.29 x 100 at 29 (float 28.999...)."""
    return int(frac * n_available + 1e-9)


def sample_label_fraction(
    studies: pd.DataFrame, frac: float, seed: int, task: str = "label"
) -> FractionSample:
    """``int(frac * N)`` studies of ``studies`` (:func:`study_labels`): the prefix of
    :func:`stratified_study_order`, extended to hold both classes and at least 2 studies.

    A training split without any positive or any negative study is refused (UserError).
    """
    n_pos, n_neg = int((studies["y"] == 1).sum()), int((studies["y"] == 0).sum())
    if n_pos == 0 or n_neg == 0:
        missing = "positive" if n_pos == 0 else "negative"
        raise UserError(
            f"the training split has no {missing} '{task}' study ({n_pos} positive, {n_neg} "
            "negative): a classifier cannot be trained",
            fix="check the label column, or re-split the dataset (`echoclr preprocess`)",
        )
    n_all = len(studies)
    order = stratified_study_order(studies["study_id"].tolist(), studies["y"].to_numpy(), seed)
    y_ordered = studies["y"].to_numpy()[order]
    n_req = requested_size(frac, n_all)
    first_pos = int(np.argmax(y_ordered == 1))
    first_neg = int(np.argmax(y_ordered == 0))
    n = max(n_req, first_pos + 1, first_neg + 1, 2)
    chosen = studies.iloc[order[:n]].copy()
    chosen["order"] = np.arange(n)
    return FractionSample(chosen.reset_index(drop=True), n_req, n_all, n > n_req)


def training_subset(
    train_df: pd.DataFrame, task: str, frac: float, seed: int
) -> tuple[FractionSample, pd.DataFrame]:
    """The studies of a label fraction and their videos: ``(sample, rows of train_df)``.

    ``train_df``: the training split's manifest rows with a known ``task`` label.
    """
    sample = sample_label_fraction(study_labels(train_df, task), frac, seed, task)
    videos = train_df[train_df["study_id"].isin(set(sample.studies["study_id"]))]
    return sample, videos
