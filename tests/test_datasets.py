"""Pair/clip datasets on tiny dataset dirs in tmp_path; epoch-keyed sampler."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_dataset

from echoclr_cli.data.clips import clip_starts, read_clip
from echoclr_cli.data.datasets import ClipDataset, EpochSampler, PairDataset, collate_clips
from echoclr_cli.errors import UserError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(
        tmp_path_factory.mktemp("ds"), n_studies=6, videos_per_study=(1, 4), frames=(6, 12), size=16
    )


def manifest(data):
    return pd.read_csv(data / "manifest.csv")


def test_fixture_format(data):
    df = manifest(data)
    assert {
        "video_id",
        "study_id",
        "patient_id",
        "split",
        "path",
        "n_frames",
        "fps",
        "as",
        "lvh",
    } <= set(df.columns)
    assert df.groupby("patient_id")["split"].nunique().max() == 1  # splits by patient
    arr = np.load(data / df.path[0], mmap_mode="r")
    assert arr.dtype == np.uint8 and arr.shape == (df.n_frames[0], 16, 16)


def test_mi_pairs_every_unordered_pair_once(data):
    df = manifest(data)
    ds = PairDataset(df, data, "mi-simclr", clip_len=4)
    seen = [tuple(sorted((ds[i]["video_id1"], ds[i]["video_id2"]))) for i in range(len(ds))]
    expected = []
    for _, g in df.groupby("study_id"):
        vids = sorted(g.video_id)
        expected += (
            [(v, v) for v in vids] if len(vids) == 1 else list(itertools.combinations(vids, 2))
        )
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))
    assert any(a == b for a, b in seen)  # the fixture has single-video studies
    for i in range(len(ds)):
        item = ds[i]
        assert item["video_id1"].startswith(item["study_id"]) and item["video_id2"].startswith(
            item["study_id"]
        )
        assert item["perm1"].item() == -1 and item["view1"].dtype == torch.uint8
        assert item["view1"].shape == (1, 4, 16, 16)


def test_simclr_one_clip_two_views(data):
    df = manifest(data)
    ds = PairDataset(df, data, "simclr", clip_len=4)
    assert len(ds) == len(df)
    item = ds[3]
    assert torch.equal(item["view1"], item["view2"]) and item["video_id1"] == item["video_id2"]


def test_echoclr_permutation_targets(data):
    df = manifest(data)
    ds = PairDataset(df, data, "echoclr", clip_len=4, reorder_frames=4, seed=1)
    mi = PairDataset(df, data, "mi-simclr", clip_len=4, seed=1)
    perms = list(itertools.permutations(range(4)))
    targets = []
    for i in range(len(ds)):
        item = ds[(2, i)]
        orig = mi[(2, i)]  # same seed, key and draw order -> the same clips before permuting
        for view, perm in (("view1", "perm1"), ("view2", "perm2")):
            target = item[perm].item()
            assert 0 <= target < 24
            targets.append(target)
            # permuted[:, t] = clip[:, perms[target][t]]; un-permuting recovers the clip
            assert torch.equal(item[view][:, np.argsort(perms[target])], orig[view])
            assert torch.equal(item[view], orig[view][:, list(perms[target])])
    assert len(set(targets)) > 3


def test_same_key_same_sample_and_epochs_differ(data):
    df = manifest(data)
    ds = PairDataset(df, data, "echoclr", clip_len=4, seed=0)
    a, b = ds[(1, 2)], ds[(1, 2)]
    assert torch.equal(a["view1"], b["view1"]) and a["perm1"] == b["perm1"]
    assert torch.equal(ds[2]["view1"], ds[(0, 2)]["view1"])
    diffs = sum(not torch.equal(ds[(e, 2)]["view1"], a["view1"]) for e in range(2, 8))
    assert diffs > 0


def test_short_video_zero_padded():
    video = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4) + 1
    clip = read_clip(video, 0, 5, 1)
    assert clip.shape == (1, 5, 4, 4)
    assert np.array_equal(clip[0, :3], video) and not clip[0, 3:].any()
    strided = read_clip(video, 0, 3, 2)  # frames 0, 2, then padding
    assert np.array_equal(strided[0, :2], video[[0, 2]]) and not strided[0, 2].any()
    rgb = np.stack([video, video + 1, video + 2], axis=-1)
    c = read_clip(rgb, 1, 2, 1)
    assert c.shape == (3, 2, 4, 4) and np.array_equal(c[1], video[1:3] + 1)


def test_short_video_in_dataset(tmp_path):
    data = make_dataset(tmp_path, n_studies=3, videos_per_study=(1, 1), frames=(3, 3), size=8)
    ds = PairDataset(pd.read_csv(data / "manifest.csv"), data, "simclr", clip_len=4)
    v = ds[0]["view1"]
    assert v.shape == (1, 4, 8, 8) and not v[:, 3].any() and v[:, :3].any()


def test_rgb_dataset(tmp_path):
    data = make_dataset(tmp_path, n_studies=3, channels=3, size=8, frames=(5, 6))
    ds = PairDataset(pd.read_csv(data / "manifest.csv"), data, "mi-simclr", clip_len=2)
    assert ds[0]["view1"].shape == (3, 2, 8, 8)


def test_pair_dataset_errors(data, tmp_path):
    df = manifest(data)
    with pytest.raises(UserError, match="reorder_frames"):
        PairDataset(df, data, "echoclr", clip_len=8, reorder_frames=4)
    with pytest.raises(UserError, match="method"):
        PairDataset(df, data, "byol", clip_len=4)
    bad = df.copy()
    bad.loc[0, "path"] = "videos/missing.npy"
    ds = PairDataset(bad, data, "simclr", clip_len=2)
    row = [i for i, vid in enumerate(ds.table.video_id) if vid == bad.video_id[0]][0]
    with pytest.raises(UserError, match=bad.video_id[0]):
        ds[row]


def test_clip_starts():
    assert clip_starts(100, 16, 1, 4) == [0, 28, 56, 84]
    assert clip_starts(100, 16, 1, 1) == [42]
    assert clip_starts(10, 16, 1, 4) == [0, 0, 0, 0]
    assert clip_starts(40, 16, 1, "all") == [0, 16, 24]
    assert clip_starts(32, 16, 1, "all") == [0, 16]
    assert clip_starts(10, 16, 1, "all") == [0]
    assert clip_starts(40, 4, 2, "all") == [0, 7, 14, 21, 28, 33]  # span 7
    with pytest.raises(ValueError):
        clip_starts(40, 4, 1, 0)


def test_clip_dataset_train_and_eval(data):
    df = manifest(data)
    tr = ClipDataset(df, data, "as", clip_len=4, train=True, seed=0)
    item = tr[(0, 1)]
    assert item["x"].shape == (1, 4, 16, 16) and item["x"].dtype == torch.uint8
    assert item["y"].dtype == torch.float32 and item["y"].item() in (0.0, 1.0)
    assert torch.equal(tr[(3, 1)]["x"], tr[(3, 1)]["x"])
    ev = ClipDataset(df, data, "as", clip_len=4, train=False, clips_per_video=3)
    e = ev[0]
    assert e["x"].shape == (3, 1, 4, 16, 16) and e["n_clips"] == 3
    assert {"video_id", "study_id", "patient_id"} <= set(e)
    # labels follow the video through the sorting
    row = df.set_index("video_id").loc[e["video_id"]]
    assert e["y"].item() == row["as"] and e["patient_id"] == row["patient_id"]
    allc = ClipDataset(df, data, "lvh", clip_len=4, train=False, clips_per_video="all")
    batch = collate_clips([allc[i] for i in range(3)])
    assert batch["x"].shape[0] == int(batch["n_clips"].sum()) and batch["y"].shape == (3,)
    unlabeled = ClipDataset(df, data, None, clip_len=4, train=False, clips_per_video=1)
    assert torch.isnan(unlabeled[0]["y"])


def test_clip_dataset_refuses_unknown_labels(data):
    df = manifest(data).astype({"as": float})
    df.loc[0, "as"] = np.nan
    with pytest.raises(UserError, match="no valid 'as' label"):
        ClipDataset(df, data, "as")
    with pytest.raises(UserError, match="not in the manifest"):
        ClipDataset(df, data, "ef")


def test_epoch_sampler():
    s = EpochSampler(10, shuffle=True, seed=0)
    s.set_epoch(0)
    e0 = list(s)
    assert sorted(i for _, i in e0) == list(range(10)) and all(e == 0 for e, _ in e0)
    s.set_epoch(1)
    e1 = list(s)
    assert [i for _, i in e1] != [i for _, i in e0] and e1[0][0] == 1
    s.set_epoch(0)
    assert list(s) == e0  # deterministic per epoch
    # ranks partition the epoch
    r0 = EpochSampler(10, True, 0, rank=0, world_size=2)
    r1 = EpochSampler(10, True, 0, rank=1, world_size=2)
    assert sorted([i for _, i in r0] + [i for _, i in r1]) == list(range(10))
    # uneven without drop_last: wrap-around padding gives equal counts
    a, b = EpochSampler(7, True, 0, 0, 2), EpochSampler(7, True, 0, 1, 2)
    assert len(a) == len(b) == 4 and set(i for _, i in a) | set(i for _, i in b) == set(range(7))
    # drop_last cuts to whole batches
    d = EpochSampler(10, True, 0, drop_last=True, batch_size=4)
    assert len(d) == 8 and len(list(d)) == 8
    # skip k batches for mid-epoch resume; set_epoch clears it
    k = EpochSampler(10, True, 3, batch_size=3)
    k.set_epoch(2)
    full = list(k)
    k.skip(2)
    assert list(k) == full[6:] and len(k) == 4
    k.set_epoch(2)
    assert list(k) == full
    noshuf = EpochSampler(5, shuffle=False)
    assert [i for _, i in noshuf] == [0, 1, 2, 3, 4]


def test_open_video_cache_is_bounded(data, monkeypatch):
    import echoclr_cli.data.datasets as dsm

    monkeypatch.setattr(dsm, "OPEN_VIDEOS", 3)
    ds = PairDataset(manifest(data), data, "simclr", clip_len=2)
    first = ds[0]["view1"]
    for i in range(len(ds)):
        ds[i]
    assert len(ds.table._cache) == 3
    assert torch.equal(ds[0]["view1"], first)  # reopened after eviction, same sample


def test_same_batches_whatever_the_worker_count(data):
    ds = PairDataset(manifest(data), data, "echoclr", clip_len=4, seed=2)
    batches = {}
    for workers in (0, 2):
        sampler = EpochSampler(len(ds), shuffle=True, seed=2, drop_last=True, batch_size=3)
        sampler.set_epoch(1)
        loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=sampler, num_workers=workers)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) > 0
    for a, b in zip(batches[0], batches[2], strict=True):
        assert torch.equal(a["view1"], b["view1"]) and torch.equal(a["perm2"], b["perm2"])
        assert a["video_id1"] == b["video_id1"]
