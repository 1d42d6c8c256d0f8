"""Datasets over a preprocessed dataset dir, and the epoch-keyed sampler.

Videos are uint8 ``.npy`` files, ``(T, H, W)`` gray or ``(T, H, W, 3)`` RGB, opened with
``np.load(mmap_mode="r")`` so a clip reads only its own frames. Items are uint8 tensors
``(C, T, H, W)``; float conversion, augmentation and min-max scaling run batched on the device
(``echoclr_cli.data.augment``).

Keys, the per-sample random generator and clip sampling (starts, reading a clip) are in
``echoclr_cli.data.clips``.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from echoclr_cli.data.clips import (
    Key,
    clip_starts,
    parse_key,
    random_start,
    read_clip,
    sample_rng,
)
from echoclr_cli.errors import UserError
from echoclr_cli.pretrain.methods import METHODS

OPEN_VIDEOS = 128  # memory maps kept open per process (each holds a file descriptor)


class _VideoTable:
    """Per-video columns of a manifest and memory-mapped access to the arrays."""

    def __init__(self, df: pd.DataFrame, data_dir: Path):
        if len(df) == 0:
            raise UserError(
                "the dataset has no videos for this split", fix="check manifest.csv splits"
            )
        df = df.sort_values(["study_id", "video_id"], kind="stable").reset_index(drop=True)
        self.df = df
        self.data_dir = Path(data_dir)
        self.paths = [str(self.data_dir / p) for p in df["path"]]
        self.n_frames = df["n_frames"].astype(int).to_numpy()
        self.video_id = df["video_id"].astype(str).tolist()
        self.study_id = df["study_id"].astype(str).tolist()
        self.patient_id = (
            df["patient_id"].astype(str).tolist() if "patient_id" in df else list(self.study_id)
        )
        studies = sorted(set(self.study_id))
        index = {s: i for i, s in enumerate(studies)}
        self.study_index = np.array([index[s] for s in self.study_id], dtype=np.int64)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def video(self, i: int) -> np.ndarray:
        """Memory map of video ``i``; the most recent ``OPEN_VIDEOS`` stay open (LRU).

        Every memory map holds a file descriptor, so the cache is bounded: an unbounded one
        would hit the open-files limit on a large archive.
        """
        v = self._cache.get(i)
        if v is not None:
            self._cache.move_to_end(i)
        else:
            try:
                v = np.load(self.paths[i], mmap_mode="r")
            except (OSError, ValueError, EOFError) as e:  # truncated, empty, not a .npy
                raise UserError(
                    f"cannot read video {self.paths[i]} (video_id {self.video_id[i]}): {e}",
                    fix="re-run `echoclr preprocess` or remove the row from manifest.csv",
                ) from None
            if v.dtype != np.uint8 or v.ndim not in (3, 4):
                raise UserError(
                    f"{self.paths[i]}: expected uint8 (T,H,W) or (T,H,W,3), got {v.dtype} {v.shape}",
                    fix="re-run `echoclr preprocess`",
                )
            self._cache[i] = v
            if len(self._cache) > OPEN_VIDEOS:
                self._cache.popitem(last=False)
        return v

    def frames(self, i: int) -> int:
        """Frames actually stored (the array is the truth, not the manifest)."""
        return int(self.video(i).shape[0])


def _check_seed(seed: int) -> None:
    if seed < 0:
        raise UserError(
            f"seed must be >= 0, got {seed}", fix="set runtime.seed to a non-negative int"
        )


VIEW_COLUMNS = ("view", "view_pred")  # a true view column wins over a predicted one


def pair_view_column(df: pd.DataFrame) -> str | None:
    """The view column positive pairs stay within: ``view`` when it has values, else
    ``view_pred`` (written by the preprocess view filter), else None."""
    for col in VIEW_COLUMNS:
        if col in df.columns and (df[col].fillna("").astype(str).str.strip() != "").any():
            return col
    return None


class PairDataset(Dataset):
    """Positive pairs for contrastive pretraining, by the method's pairing and reorder
    (``pretrain/methods.py``):

    - ``simclr``: one item per video; one random clip, returned as both views (the two views
      differ by their device augmentation).
    - ``mi-simclr``: one item per unordered pair of distinct videos of a study (a study with
      one video pairs that video with itself); each view is an independent random clip. With
      ``pair_within="study_view"`` and a view column (:func:`pair_view_column`) the pairs are
      within a study *and* a view (a view with one video in a study pairs it with itself).
    - ``echoclr``: the MI pairs, and each view's ``reorder_frames`` (= ``clip_len``) frames are
      put in a random order: ``view[:, t] = clip[:, perm[t]]`` with ``perm`` =
      ``permutations(range(K))[target]``; the target is that index (K! classes). Augmentation is
      identical for all frames of a clip, so permuting before it is the same as after.

    Item: ``view1, view2`` uint8 (C, T, H, W); ``perm1, perm2`` int64 (-1 when unused);
    ``study_id, video_id1, video_id2`` str; ``study_index`` int64 (ordinal of the study, for
    ``exclude_same_study_negatives``).
    """

    def __init__(
        self,
        df: pd.DataFrame,
        data_dir: Path,
        method: str,
        clip_len: int = 4,
        stride: int = 1,
        reorder_frames: int = 4,
        seed: int = 0,
        pair_within: Literal["study", "study_view"] = "study",
    ):
        if method not in METHODS:
            raise UserError(
                f"unknown pretrain method '{method}'", fix=f"use one of {', '.join(METHODS)}"
            )
        spec = METHODS[method]
        if spec.reorder and reorder_frames != clip_len:
            raise UserError(
                f"{method} permutes the whole clip: pretrain.reorder_frames ({reorder_frames}) "
                f"must equal pretrain.clip_len ({clip_len})",
                fix=f"set pretrain.reorder_frames={clip_len} (K <= 5) or pretrain.clip_len={reorder_frames}",
            )
        _check_seed(seed)
        self.table = _VideoTable(df, data_dir)
        self.spec = spec  # the method's pairing and reorder
        self.clip_len = clip_len
        self.stride = stride
        self.seed = seed
        self.pair_within = pair_within
        self.view_column = pair_view_column(self.table.df) if pair_within == "study_view" else None
        self.perms = (
            [np.array(p) for p in itertools.permutations(range(reorder_frames))]
            if spec.reorder
            else []
        )
        self.pairs = self._make_pairs()  # (P, 2) row indices

    def _make_pairs(self) -> np.ndarray:
        n = len(self.table.video_id)
        if self.spec.pairing == "clip":
            idx = np.arange(n)
            return np.stack([idx, idx], axis=1)
        # pair_within study_view: the group is (study, view); a video without a view value
        # pairs with the other view-less videos of its study
        views = (
            self.table.df[self.view_column].fillna("").astype(str).str.strip().tolist()
            if self.view_column
            else [""] * n
        )
        by_study: dict[tuple[int, str], list[int]] = {}
        for i, s in enumerate(self.table.study_index):
            by_study.setdefault((int(s), views[i]), []).append(i)
        pairs: list[tuple[int, int]] = []
        for s in sorted(by_study):
            rows = by_study[s]
            if len(rows) == 1:
                pairs.append((rows[0], rows[0]))
            else:
                pairs.extend(itertools.combinations(rows, 2))
        return np.array(pairs, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.pairs)

    def _clip(self, row: int, rng: np.random.Generator) -> np.ndarray:
        video = self.table.video(row)
        start = random_start(video.shape[0], self.clip_len, self.stride, rng)
        return read_clip(video, start, self.clip_len, self.stride)  # (C, T, H, W)

    def _permute(self, clip: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        target = int(rng.integers(len(self.perms)))
        return np.ascontiguousarray(clip[:, self.perms[target]]), target

    def __getitem__(self, key: Key) -> dict[str, Any]:
        epoch, index = parse_key(key)
        rng = sample_rng(self.seed, epoch, index)
        a, b = (int(v) for v in self.pairs[index])
        view1 = self._clip(a, rng)
        view2 = view1 if self.spec.pairing == "clip" else self._clip(b, rng)
        perm1 = perm2 = -1
        if self.spec.reorder:
            view1, perm1 = self._permute(view1, rng)
            view2, perm2 = self._permute(view2, rng)
        t = self.table
        return {
            "view1": torch.from_numpy(view1),
            "view2": torch.from_numpy(view2),
            "perm1": torch.tensor(perm1, dtype=torch.int64),
            "perm2": torch.tensor(perm2, dtype=torch.int64),
            "study_id": t.study_id[a],
            "study_index": torch.tensor(int(t.study_index[a]), dtype=torch.int64),
            "video_id1": t.video_id[a],
            "video_id2": t.video_id[b],
        }


class ClipDataset(Dataset):
    """Labelled clips for fine-tuning (``train=True``) and evaluation (``train=False``).

    - train: one item per video, one random clip ``x`` uint8 (C, T, H, W).
    - eval: ``x`` uint8 (N, C, T, H, W), the clips of ``clip_starts(..., clips_per_video)``
      (N evenly spaced clips, or "all"; N varies per video with "all": batch such items with
      ``collate_clips``).

    Item also holds ``y`` float32 (the ``task`` label; NaN when ``task`` is None),
    ``video_id, study_id, patient_id`` and ``n_clips``. Rows with an unknown label must be
    removed before (a NaN label never reaches a loss): they are refused here.

    Eval only: ``starts`` is the clip start rule (``evaluate.clip_starts``: ``linspace`` |
    ``published``, see ``clip_starts``); ``scaling="video"`` (``evaluate.scaling``) adds
    ``bounds`` float32 (N, 2): the min and max over all N clips of the video, repeated per clip,
    so ``prepare_clips`` scales every clip of a video with the same range (the published rule);
    ``scaling="clip"`` adds nothing (each clip is scaled by its own range).
    """

    def __init__(
        self,
        df: pd.DataFrame,
        data_dir: Path,
        task: str | None,
        clip_len: int = 16,
        stride: int = 1,
        train: bool = True,
        clips_per_video: int | str = 4,
        seed: int = 0,
        starts: Literal["linspace", "published"] = "linspace",
        scaling: Literal["clip", "video"] = "clip",
    ):
        _check_seed(seed)
        if starts not in ("linspace", "published") or scaling not in ("clip", "video"):
            raise UserError(
                f"unknown evaluation clip rule starts={starts!r} / scaling={scaling!r}",
                fix="set evaluate.clip_starts to published|linspace, evaluate.scaling to video|clip",
            )
        if task is not None:
            if task not in df.columns:
                raise UserError(f"label column '{task}' is not in the manifest", fix="check --task")
            labels = pd.to_numeric(df[task], errors="coerce")
            bad = int(labels.isna().sum())
            if bad:
                raise UserError(
                    f"{bad} videos have no valid '{task}' label",
                    fix="drop rows with unknown labels before building the dataset",
                )
        self.table = _VideoTable(df, data_dir)
        self.task = task
        self.y = (
            pd.to_numeric(self.table.df[task]).to_numpy(np.float32)
            if task is not None
            else np.full(len(self.table.df), np.nan, np.float32)
        )
        self.clip_len = clip_len
        self.stride = stride
        self.train = train
        if clips_per_video != "all" and int(clips_per_video) < 1:
            raise UserError(
                "clips_per_video must be >= 1 or 'all'", fix="set evaluate.clips_per_video"
            )
        self.clips_per_video = clips_per_video
        self.seed = seed
        self.starts = starts
        self.scaling = scaling

    def __len__(self) -> int:
        return len(self.table.video_id)

    def __getitem__(self, key: Key) -> dict[str, Any]:
        epoch, index = parse_key(key)
        video = self.table.video(index)
        if self.train:
            start = random_start(
                video.shape[0], self.clip_len, self.stride, sample_rng(self.seed, epoch, index)
            )
            x = torch.from_numpy(
                read_clip(video, start, self.clip_len, self.stride)
            )  # (C, T, H, W)
            n_clips = 1
        else:
            starts = clip_starts(
                video.shape[0], self.clip_len, self.stride, self.clips_per_video, self.starts
            )
            x = torch.from_numpy(
                np.stack([read_clip(video, s, self.clip_len, self.stride) for s in starts])
            )  # (N, C, T, H, W)
            n_clips = len(starts)
        t = self.table
        extra = {}
        if not self.train and self.scaling == "video":
            lo, hi = float(x.min()), float(x.max())
            extra["bounds"] = torch.tensor([[lo, hi]], dtype=torch.float32).expand(n_clips, 2)
        return {
            **extra,
            "x": x,
            "y": torch.tensor(self.y[index], dtype=torch.float32),
            "n_clips": n_clips,
            "video_id": t.video_id[index],
            "study_id": t.study_id[index],
            "patient_id": t.patient_id[index],
        }


def collate_clips(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch evaluation items with any clip counts: ``x`` (sum N, C, T, H, W), ``n_clips`` (B,)
    and, when the items carry them (video-level scaling), ``bounds`` (sum N, 2)."""
    extra = {}
    if batch and all("bounds" in b for b in batch):
        extra["bounds"] = torch.cat([b["bounds"] for b in batch], dim=0)
    return {
        **extra,
        "x": torch.cat([b["x"] for b in batch], dim=0),
        "n_clips": torch.tensor([b["n_clips"] for b in batch], dtype=torch.int64),
        "y": torch.stack([b["y"] for b in batch]),
        "video_id": [b["video_id"] for b in batch],
        "study_id": [b["study_id"] for b in batch],
        "patient_id": [b["patient_id"] for b in batch],
    }


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys: a per-epoch order, this rank's share, resumable.

    The order of epoch e is ``default_rng((seed, e)).permutation(n)`` (or 0..n-1 without
    shuffle). With ``world_size`` > 1 and no ``drop_last`` each rank takes every world_size-th
    key, the order padded by wrapping so all ranks get the same count. With ``drop_last`` the
    order is cut to whole global steps of ``world_size * batch_size`` keys and rank r takes the
    r-th block of ``batch_size`` keys of each step: the ranks' batches in rank order are the
    one-process batch of the same step, so BatchNorm groups along the global batch
    (``pretrain.bn_group_size``) hold the same clips on any number of processes. ``skip(k)``
    drops the first ``k`` batches of the current epoch (mid-epoch resume); ``set_epoch`` clears
    it.
    """

    def __init__(
        self,
        n: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        batch_size: int = 1,
    ):
        super().__init__()
        _check_seed(seed)
        if n < 1:
            raise UserError("the sampler got an empty dataset", fix="check the split sizes")
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.batch_size = batch_size
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._skip = 0

    def skip(self, k_batches: int) -> None:
        self._skip = k_batches * self.batch_size

    def _share(self) -> np.ndarray:
        order = (
            np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
            if self.shuffle
            else np.arange(self.n)
        )
        w, b = self.world_size, self.batch_size
        if self.drop_last:  # whole global steps; rank r takes block r of each: (steps, w, b)
            steps = self.n // (w * b)
            return order[: steps * w * b].reshape(steps, w, b)[:, self.rank].reshape(-1)
        total = math.ceil(self.n / w) * w
        order = np.resize(order, total)  # wraps around
        return order[self.rank :: w]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        share = self._share()[self._skip :]
        return iter([(self.epoch, int(i)) for i in share])

    def __len__(self) -> int:
        return max(len(self._share()) - self._skip, 0)
