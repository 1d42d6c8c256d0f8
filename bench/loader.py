"""Loader throughput: ours vs the published per-sample path, same videos, same worker count.

    python bench/loader.py --data DATA [--method echoclr] [--workers 2] [--batch-size 32]

Prints one JSON line: ``ours`` and ``reference`` in training pairs/s ready on the device
(``--device``, default cpu), and ``ratio`` = ours / reference: the median of ``--rounds``
interleaved rounds (each round times ours, then the reference), all rounds listed.

- ours: PairDataset (memory-mapped uint8 clips) + EpochSampler + DataLoader, then on the device
  the batched augmentation + min-max (``prepare_clips``) of both views.
- reference: bench/reference_loader.py on the same videos written as MJPG AVIs (whole-video
  cv2 decode, numpy pad/crop, cv2 flip, scipy rotate, min-max, float32) inside DataLoader
  workers, batches moved to the device.
The first batch of each (worker start-up) is not timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_loader import ReferencePairDataset, seed_worker, write_avis  # noqa: E402

from echoclr_cli.config.schema import AugmentConfig  # noqa: E402
from echoclr_cli.data.augment import prepare_clips  # noqa: E402
from echoclr_cli.data.datasets import EpochSampler, PairDataset  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochsSampler(torch.utils.data.Sampler):
    """Keys of consecutive epochs in one pass, so a small bench dataset still measures the
    steady state of a long epoch (no loader restart every batch or two)."""

    def __init__(self, n: int, epochs: int):
        self.sampler = EpochSampler(n, shuffle=True, seed=0)
        self.epochs = epochs

    def __iter__(self):
        for e in range(self.epochs):
            self.sampler.set_epoch(e)
            yield from self.sampler

    def __len__(self) -> int:
        return self.epochs * len(self.sampler)


def time_ours(df, data_dir, args, device) -> float:
    ds = PairDataset(
        df, data_dir, args.method, clip_len=args.clip_len, reorder_frames=args.clip_len, seed=0
    )
    need = (args.batches + 1) * args.batch_size
    sampler = EpochsSampler(len(ds), epochs=-(-need // len(ds)) + 1)
    loader = DataLoader(
        ds,
        batch_size=args.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if args.workers else None,
    )
    gen = torch.Generator(device=device).manual_seed(0)
    aug = AugmentConfig()
    n, t0 = 0, None
    for batch in loader:
        x = torch.cat([batch["view1"], batch["view2"]]).to(device, non_blocking=True)
        x = prepare_clips(x, aug, gen)  # (2B, 3, T, H, W)
        _sync(device)
        if t0 is None:  # first batch: worker start-up, not timed
            t0 = time.perf_counter()
            continue
        n += batch["view1"].shape[0]
        if n >= args.batches * args.batch_size:
            break
    return n / (time.perf_counter() - t0)


def time_reference(df, avi_dir, data_dir, args, device) -> float:
    paths = write_avis(data_dir, df, avi_dir)
    ds = ReferencePairDataset(
        paths, df["study_id"].astype(str).tolist(), args.method, args.clip_len
    )
    target = max(args.ref_batches, 1) * args.batch_size
    loader = DataLoader(
        ds,
        batch_size=args.batch_size,
        sampler=torch.utils.data.RandomSampler(ds, num_samples=target + args.batch_size),
        drop_last=True,
        num_workers=args.workers,
        worker_init_fn=seed_worker,
        persistent_workers=args.workers > 0,
        pin_memory=device.type == "cuda",
    )
    n, t0 = 0, None
    for batch in loader:
        x = torch.cat([batch[0], batch[1]]).to(device, non_blocking=True)
        _sync(device)
        del x
        if t0 is None:  # first batch: worker start-up, not timed
            t0 = time.perf_counter()
            continue
        n += batch[0].shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--method", default="echoclr", choices=["simclr", "mi-simclr", "echoclr"])
    ap.add_argument("--split", default="train", help="comma-separated splits ('all' = every row)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=40, help="timed batches for ours")
    ap.add_argument("--ref-batches", type=int, default=6, help="timed batches for the reference")
    ap.add_argument("--clip-len", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved ours/reference rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    ap.add_argument("--avi-dir", type=Path, default=None, help="where to write/reuse the AVIs")
    args = ap.parse_args()
    device = torch.device(args.device)
    # The main process is "the device" on CPU: with more intra-op threads than the cores the
    # workers leave free, OpenMP oversubscription made every op ~6x slower on 2 cores.
    torch.set_num_threads(args.threads)
    df = pd.read_csv(args.data / "manifest.csv", dtype={"video_id": str, "study_id": str})
    if args.split != "all":
        df = df[df["split"].isin(args.split.split(","))].reset_index(drop=True)
    tmp = None
    if args.avi_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="echoclr-avi-")
        args.avi_dir = Path(tmp.name)
    write_avis(args.data, df, args.avi_dir)
    # Interleaved rounds: the machine is shared, so each ratio compares neighbours in time.
    rounds = []
    for _ in range(args.rounds):
        ours = time_ours(df, args.data, args, device)
        ref = time_reference(df, args.avi_dir, args.data, args, device)
        rounds.append((ours, ref, ours / ref))
    ours, ref, ratio = sorted(rounds, key=lambda r: r[2])[len(rounds) // 2]  # median round
    print(
        json.dumps(
            {
                "bench": "loader",
                "unit": "pairs/s",
                "method": args.method,
                "videos": len(df),
                "workers": args.workers,
                "batch_size": args.batch_size,
                "device": str(device),
                "threads": args.threads,
                "ours": round(ours, 1),
                "reference": round(ref, 1),
                "ratio": round(ratio, 2),
                "best_ratio": round(max(r[0] for r in rounds) / max(r[1] for r in rounds), 2),
                "rounds": [[round(o, 1), round(r, 1), round(q, 2)] for o, r, q in rounds],
            }
        )
    )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
