"""Reference: a faithful re-implementation (our code) of the published EchoCLR per-sample path.

What the published SSL dataset did for every training sample, inside DataLoader workers
(docs/PERF.md): decode the whole AVI with OpenCV into a preallocated (T, H, W, 3) array sized by
the header frame count; cut a clip (random start; zero-pad short videos); zero-pad 8 px and
random-crop in numpy; flip every frame with cv2 (p=0.5); rotate every frame with
``scipy.ndimage.rotate(reshape=False)`` (cubic spline, p=0.5); for frame reordering permute the
frames; min-max scale; transpose to float32 (C, T, H, W). Randomness from numpy/python global
RNGs, seeded per worker.

It exists only to measure our loader against it (bench/loader.py), on the same videos written
as AVI files.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from scipy.ndimage import rotate


def write_avis(data_dir: Path, df: pd.DataFrame, out_dir: Path, fps: float = 30.0) -> list[Path]:
    """Write each manifest video as an MJPG AVI (3-channel, like the published videos/*.avi)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in df.itertuples():
        path = out_dir / f"{row.video_id}.avi"
        paths.append(path)
        if path.exists():
            continue
        arr = np.load(Path(data_dir) / row.path)
        h, w = arr.shape[1:3]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
        for frame in arr:
            writer.write(frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        writer.release()
    return paths


def load_video(path: str) -> np.ndarray:
    """Whole-video decode into an array sized by the header frame count (as published)."""
    capture = cv2.VideoCapture(path)
    frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frame_width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    frame_height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    v = np.zeros((frame_count, frame_height, frame_width, 3), np.uint8)
    for i in range(frame_count):
        _, frame = capture.read()
        v[i] = frame
    return v


class ReferencePairDataset(torch.utils.data.Dataset):
    """The published pair dataset: simclr (one video) or multi-instance pairs (+ reordering)."""

    def __init__(self, avi_paths: list[Path], study_ids: list[str], method: str, clip_len: int = 4):
        self.clip_len = clip_len
        self.sampling_rate = 1
        self.multi_instance = method in ("mi-simclr", "echoclr")
        self.frame_reordering = method == "echoclr"
        self.paths = [str(p) for p in avi_paths]
        if self.multi_instance:
            self.fnames_i, self.fnames_j = [], []
            by_study: dict[str, list[str]] = {}
            for p, s in zip(self.paths, study_ids, strict=True):
                by_study.setdefault(s, []).append(p)
            for s in sorted(by_study):
                fnames = by_study[s]
                if len(fnames) == 1:
                    self.fnames_i.append(fnames[0])
                    self.fnames_j.append(fnames[0])
                else:
                    for a, b in itertools.combinations(fnames, 2):
                        self.fnames_i.append(a)
                        self.fnames_j.append(b)
            if self.frame_reordering:
                self.temporal_orderings = list(itertools.permutations(np.arange(self.clip_len)))

    def _sample_frames(self, x: np.ndarray) -> np.ndarray:
        span = self.clip_len * self.sampling_rate
        if x.shape[0] > span:
            start = np.random.choice(x.shape[0] - span, size=1)[0]
            x = x[start : start + span : self.sampling_rate]
        else:
            x = x[:: self.sampling_rate]
            x = np.pad(
                x, ((0, self.clip_len - x.shape[0]), (0, 0), (0, 0), (0, 0)), mode="constant"
            )
        return x

    def _augment(self, x: np.ndarray):
        pad = 8
        length, h, w, c = x.shape
        temp = np.zeros((length, h + 2 * pad, w + 2 * pad, c), dtype=x.dtype)
        temp[:, pad:-pad, pad:-pad, :] = x
        i, j = np.random.randint(0, 2 * pad, 2)
        x = temp[:, i : i + h, j : j + w, :]
        if random.uniform(0, 1) > 0.5:
            x = np.stack([cv2.flip(frame, 1) for frame in x], axis=0)
        if random.uniform(0, 1) > 0.5:
            angle = np.random.choice(np.arange(-10, 11), size=1)[0]
            x = np.stack([rotate(frame, angle, reshape=False) for frame in x], axis=0)
        if self.frame_reordering:
            label = np.random.choice(len(self.temporal_orderings), size=1)[0]
            x = x[list(self.temporal_orderings[label])]
            return x, label
        return x

    def __len__(self) -> int:
        return len(self.fnames_i) if self.multi_instance else len(self.paths)

    def __getitem__(self, idx: int):
        t_i = t_j = None
        if self.multi_instance:
            x_i = self._sample_frames(load_video(self.fnames_i[idx]))
            x_j = self._sample_frames(load_video(self.fnames_j[idx]))
            if self.frame_reordering:
                x_i, t_i = self._augment(x_i)
                x_j, t_j = self._augment(x_j)
            else:
                x_i, x_j = self._augment(x_i), self._augment(x_j)
        else:
            x = self._sample_frames(load_video(self.paths[idx]))
            x_i, x_j = self._augment(x), self._augment(x)
        x_i = (x_i - x_i.min()) / (x_i.max() - x_i.min())
        x_j = (x_j - x_j.min()) / (x_j.max() - x_j.min())
        x_i = np.transpose(x_i, (3, 0, 1, 2))
        x_j = np.transpose(x_j, (3, 0, 1, 2))
        out = [torch.from_numpy(x_i).float(), torch.from_numpy(x_j).float()]
        if self.frame_reordering:
            out += [torch.tensor(t_i).long(), torch.tensor(t_j).long()]
        return tuple(out)


def seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
