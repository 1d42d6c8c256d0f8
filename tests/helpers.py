"""Test fixtures shared by test files: a tiny dataset dir in the ARCHITECTURE.md format."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pandas as pd


def free_port() -> int:
    """A free localhost TCP port for a gloo / c10d rendezvous of test processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_workers(worker, world: int = 2, timeout: float = 300) -> list:
    """Run ``worker(rank, port, queue)`` in ``world`` spawned processes (a gloo rendezvous on a
    free port); each puts ``(rank, payload)`` on the queue. Returns the payloads in rank order
    after every process exited 0. Payloads should be numpy arrays or numbers: a tensor travels
    through a file descriptor that vanishes when its process exits first."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, port, q)) for r in range(world)]
    for p in procs:
        p.start()
    got = dict(q.get(timeout=timeout) for _ in range(world))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return [got[r] for r in range(world)]


def blob_video(
    rng: np.random.Generator, n_frames: int, size: int, channels: int, radius: float
) -> np.ndarray:
    """uint8 (T, H, W) or (T, H, W, 3): a bright disc moving on a noisy background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    vy, vx = rng.uniform(-0.5, 0.5, 2)
    frames = np.empty((n_frames, size, size), np.uint8)
    for t in range(n_frames):
        y, x = cy + vy * t, cx + vx * t
        r = radius * (1 + 0.2 * np.sin(2 * np.pi * t / 10.0))  # "beating"
        disc = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * r * r))
        img = 40 + 180 * disc + rng.normal(0, 8, (size, size))
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    if channels == 3:
        tint = np.array([1.0, 0.9, 0.8], np.float32)
        return np.clip(frames[..., None] * tint, 0, 255).astype(np.uint8)
    return frames


def make_dataset(
    tmp_path: Path,
    n_studies: int = 8,
    videos_per_study: tuple[int, int] = (1, 3),
    frames: tuple[int, int] = (20, 40),
    size: int = 32,
    record_size: bool = False,
    channels: int = 1,
    seed: int = 0,
    labels: tuple[str, ...] = ("as", "lvh"),
) -> Path:
    """Write ``tmp_path/data`` (manifest.csv, dataset.json, videos/*.npy); return its path.

    Every 4th patient has two studies (later year); splits are by patient (about 60/20/20, at
    least one patient in val and test when there are >= 3 patients). Labels alternate within
    each split so train and val hold both classes; a positive ``as`` study has a bigger blob.
    """
    rng = np.random.default_rng(seed)
    data = Path(tmp_path) / "data"
    (data / "videos").mkdir(parents=True, exist_ok=True)
    # studies -> patients
    patients: list[str] = []
    p = 0
    while len(patients) < n_studies:
        pid = f"P{p:04d}"
        patients.extend([pid, pid] if p % 4 == 3 else [pid])
        p += 1
    patients = patients[:n_studies]
    uniq = sorted(set(patients))
    n_val = max(1, round(0.2 * len(uniq))) if len(uniq) >= 3 else 0
    n_test = max(1, round(0.2 * len(uniq))) if len(uniq) >= 3 else 0
    n_train = len(uniq) - n_val - n_test
    split_of = {
        pid: ("train" if i < n_train else "val" if i < n_train + n_val else "test")
        for i, pid in enumerate(uniq)
    }
    rows = []
    counters: dict[str, int] = {}
    for s in range(n_studies):
        pid = patients[s]
        split = split_of[pid]
        k = counters.get(split, 0)
        counters[split] = k + 1
        study_labels = {name: (k + j) % 2 for j, name in enumerate(labels)}
        study_id = f"S{s:04d}"
        n_videos = int(rng.integers(videos_per_study[0], videos_per_study[1] + 1))
        for v in range(n_videos):
            video_id = f"{study_id}_V{v}"
            n = int(rng.integers(frames[0], frames[1] + 1))
            radius = size * (0.18 if study_labels.get("as", 0) else 0.10)
            arr = blob_video(rng, n, size, channels, radius)
            rel = f"videos/{video_id}.npy"
            np.save(data / rel, arr)
            rows.append(
                {
                    "video_id": video_id,
                    "study_id": study_id,
                    "patient_id": pid,
                    "split": split,
                    "path": rel,
                    "n_frames": n,
                    "fps": 30.0,
                    "height": size,
                    "width": size,
                    "channels": channels,
                    "study_year": 2018 + (1 if patients.index(pid) != s else 0),
                    "source_hash": f"h{s:04d}{v}",
                    **study_labels,
                }
            )
    df = pd.DataFrame(rows)
    df.to_csv(data / "manifest.csv", index=False)
    meta = {
        "label_columns": list(labels),
        "status": "ok",
        "created": "2026-01-01T00:00:00Z",
        "config": {},
    }
    if record_size:  # tiny fixtures use sizes no profile has; the size guard has its own tests
        meta["size"] = size
    (data / "dataset.json").write_text(json.dumps(meta, indent=2))
    return data


TINY_WIDTH = 0.125


def tiny_finetune_config(epochs: int = 2, **sections):
    """A 32x32, width-0.125, 4-frame fine-tune config (seconds on one CPU thread); ``sections``
    are nested overrides merged on top."""
    from echoclr_cli.config.load import deep_merge, load_config

    # early stopping on finetune.monitor, per-clip scaling and linspace clip starts: the rules
    # these tests compute their references with (the demo profile keeps the published ones)
    base = {
        "model": {"width": TINY_WIDTH},
        "runtime": {"device": "cpu", "workers": 0},
        "finetune": {"epochs": epochs, "batch_size": 4, "clip_len": 4, "patience": 0,
                     "early_stop": "ours"},
        "evaluate": {"bootstrap": 20, "plots": False, "clips_per_video": 2,
                     "clip_starts": "linspace", "scaling": "clip"},
    }  # fmt: skip
    return load_config(profile="demo", overrides=deep_merge(base, sections))
