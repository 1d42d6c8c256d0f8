"""Study-level label fractions: nested across fractions, stratified, at least one of each class."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from echoclr_cli.data.fractions import (
    sample_label_fraction,
    stratified_study_order,
    study_labels,
    training_subset,
)
from echoclr_cli.errors import UserError

FRACS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)


def studies(n: int, prevalence: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=np.int64)
    y[rng.choice(n, int(round(n * prevalence)), replace=False)] = 1
    return pd.DataFrame(
        {
            "study_id": [f"S{i:05d}" for i in range(n)],
            "patient_id": [f"P{i}" for i in range(n)],
            "y": y,
            "n_videos": 1,
        }
    )


def chosen(df: pd.DataFrame, frac: float, seed: int = 0) -> list[str]:
    return sample_label_fraction(df, frac, seed).studies["study_id"].tolist()


def test_sizes_are_int_frac_times_n():
    df = studies(5311, 0.223)  # the paper's AS training split
    sizes = {f: len(chosen(df, f)) for f in FRACS}
    assert sizes[0.01] == 53 and sizes[0.05] == 265 and sizes[0.1] == 531
    assert sizes[0.25] == 1327 and sizes[0.5] == 2655 and sizes[1.0] == 5311


def test_int_frac_times_n_is_not_hurt_by_float_rounding():
    assert len(chosen(studies(100, 0.5), 0.29)) == 29  # 0.29 * 100 = 28.999999999999996


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_fractions_are_nested_prefixes(seed):
    df = studies(400, 0.2)
    subsets = [chosen(df, f, seed) for f in FRACS]
    for small, big in zip(subsets, subsets[1:], strict=False):
        assert big[: len(small)] == small  # same order, a prefix
        assert set(small) <= set(big)


def test_stratified_every_prefix():
    df = studies(1000, 0.223)
    y = df["y"].to_numpy()
    order = stratified_study_order(df["study_id"].tolist(), y, seed=3)
    assert sorted(order.tolist()) == list(range(1000))  # a permutation
    cum = np.cumsum(y[order])  # positives in each prefix
    n = np.arange(1, 1001)
    assert np.all(np.abs(cum - n * y.mean()) <= 1.0)  # within one study of the target share


def test_seeds_give_different_orders_and_row_order_does_not_matter():
    df = studies(200, 0.3)
    a, b = chosen(df, 0.1, seed=0), chosen(df, 0.1, seed=1)
    assert a != b
    shuffled = df.sample(frac=1.0, random_state=5).reset_index(drop=True)
    assert chosen(shuffled, 0.1, seed=0) == a


@pytest.mark.parametrize("frac", [0.001, 0.01, 0.02])
def test_tiny_fraction_holds_both_classes_and_stays_nested(frac):
    df = studies(100, 0.05)  # 5 positives: int(0.01 * 100) = 1 study alone has one class
    s = sample_label_fraction(df, frac, seed=0)
    assert set(s.studies["y"]) == {0, 1}
    assert s.n_requested == int(frac * 100)
    assert s.extended == (len(s.studies) > s.n_requested)
    assert s.extended
    # the extension is a prefix of the same order, so it is inside every bigger subset
    big = chosen(df, 0.5)
    assert big[: len(s.studies)] == s.studies["study_id"].tolist()
    # and it stops at the first study of the missing class
    assert s.studies["y"].iloc[:-1].nunique() == 1


def test_no_extension_when_the_prefix_has_both_classes():
    df = studies(100, 0.5)
    s = sample_label_fraction(df, 0.1, seed=0)
    assert len(s.studies) == 10 and not s.extended
    assert s.studies["order"].tolist() == list(range(10))


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_training_split_is_refused(label):
    df = studies(20, 0.0)
    df["y"] = label
    with pytest.raises(UserError, match="no (positive|negative)"):
        sample_label_fraction(df, 0.5, seed=0, task="as")


def test_study_labels_from_videos_and_mixed_study_refused():
    videos = pd.DataFrame(
        {
            "video_id": ["a", "b", "c"],
            "study_id": ["S1", "S1", "S2"],
            "patient_id": ["P1", "P1", "P2"],
            "as": [1.0, 1.0, 0.0],
        }
    )
    out = study_labels(videos, "as")
    assert out["study_id"].tolist() == ["S1", "S2"]
    assert out["y"].tolist() == [1, 0] and out["n_videos"].tolist() == [2, 1]
    videos.loc[1, "as"] = 0.0
    with pytest.raises(UserError, match="S1"):
        study_labels(videos, "as")


def test_training_subset_is_the_studies_and_all_their_videos():
    """The subset a run draws: int(frac * N) studies extended to hold both classes, and every
    video of those studies (a study is never split)."""
    rows = []
    for i, y in enumerate([1] * 3 + [0] * 47):  # 50 studies, 3 positive, 1-3 videos each
        for v in range(1 + i % 3):
            rows.append({"video_id": f"S{i}_{v}", "study_id": f"S{i:03d}", "patient_id": f"P{i}",
                         "as": float(y)})  # fmt: skip
    train = pd.DataFrame(rows)
    for frac, seed in [(0.02, 0), (0.1, 1), (0.5, 2), (1.0, 0)]:
        sample, videos = training_subset(train, "as", frac, seed)
        chosen = set(sample.studies["study_id"])
        assert videos.equals(train[train["study_id"].isin(chosen)])
        assert sample.n_requested == int(frac * 50) and sample.n_available == 50
        assert int(sample.studies["y"].sum()) >= 1
    tiny, _ = training_subset(train, "as", 0.02, 0)  # int(0.02 * 50) = 1 study: extended
    assert tiny.extended and len(tiny.studies) >= 2
    assert len(training_subset(train, "as", 1.0, 0)[1]) == len(train)
    with pytest.raises(UserError, match="no positive"):
        training_subset(train.assign(**{"as": 0.0}), "as", 0.5, 0)
