"""Is the frame order of the demo's clips learnable? Three measurements behind issue 12's notes.

    python bench/frame_order.py oracle --data DATA [--strides 1,2,4,6,8]
    python bench/frame_order.py train  --data DATA [--stride 1] [--k 4] [--steps 300] [--lr 1e-3]
                                       [--no-augment] [--init CHECKPOINT]
    python bench/frame_order.py square [--steps 150] [--speed 4]

- ``oracle``: no learning. For random K=4 clips of training videos, put the frames in a random
  order, then pick the order with the smallest summed absolute difference between neighbouring
  (lightly blurred) frames. Reports how often that recovers the true order up to reversal
  (chance 2/24): whether the clips carry visible motion at all.
- ``train``: the EchoCLR reordering task alone (no NT-Xent): the demo model (r3d_18, width from
  the demo profile), the dataset's own permutation and device augmentation, 32 clips per step
  (``--batch``),
  Adam. Prints the accuracy over each 50 steps (chance 1/K!). ``--init`` starts the backbone
  from an SSL checkpoint (e.g. a MI-SimCLR run's last.pt).
- ``square``: the same model and loss on a control whose motion is clear: a bright 8x8 square
  moving in a straight line (up to ``--speed`` px per frame along each axis, 4 by default).
  Reversal is indistinguishable, so the ceiling is 0.5.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from echoclr_cli.config.load import load_config
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.data.datasets import PairDataset
from echoclr_cli.models.backbones import SSLModel, build_backbone
from echoclr_cli.models.checkpoint import load_checkpoint


def _train_videos(data: Path) -> pd.DataFrame:
    df = pd.read_csv(data / "manifest.csv")
    return df[df["split"] == "train"]


def oracle(data: Path, strides: list[int], n_videos: int = 150, per_video: int = 4) -> None:
    perms = [list(p) for p in itertools.permutations(range(4))]
    rng = np.random.default_rng(0)
    vids = [np.load(data / p).astype(np.float32) for p in _train_videos(data)["path"][:n_videos]]
    for stride in strides:
        hits = n = 0
        span = 3 * stride + 1
        for v in vids:
            for _ in range(per_video):
                if len(v) < span:
                    continue
                s = int(rng.integers(0, len(v) - span + 1))
                clip = np.stack(
                    [cv2.GaussianBlur(f, (5, 5), 1.5) for f in v[s : s + span : stride]]
                )
                t = perms[int(rng.integers(24))]
                x = clip[t]  # shuffled frames
                cost = [sum(np.abs(x[q[i + 1]] - x[q[i]]).mean() for i in range(3)) for q in perms]
                best = perms[int(np.argmin(cost))]
                hits += [t[b] for b in best] in ([0, 1, 2, 3], [3, 2, 1, 0])
                n += 1
        print(json.dumps({"bench": "frame_order_oracle", "stride": stride, "clips": n,
                          "order_up_to_reversal": round(hits / n, 3), "chance": round(2 / 24, 3)}))  # fmt: skip


def _fit(model: SSLModel, batches, steps: int, lr: float, label: dict) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    accs: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        x, y = batches(step)
        _, _, logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        accs.append((logits.argmax(1) == y).float().mean().item())
        if (step + 1) % 50 == 0:
            print(json.dumps(label | {"step": step + 1, "acc_last50": round(float(np.mean(accs[-50:])), 3),
                                      "seconds": round(time.perf_counter() - t0)}), flush=True)  # fmt: skip


def train(
    data: Path,
    stride: int,
    k: int,
    steps: int,
    lr: float,
    augment: bool,
    init: Path | None,
    batch: int = 32,
):
    cfg = load_config(profile="demo")
    ds = PairDataset(_train_videos(data), data, "echoclr", clip_len=k, stride=stride,
                     reorder_frames=k, seed=0)  # fmt: skip
    torch.manual_seed(0)
    model = SSLModel(build_backbone(cfg.model.arch, cfg.model.width), reorder_classes=len(ds.perms))
    if init is not None:
        state = load_checkpoint(init)["model"]
        model.load_state_dict({k_: v for k_, v in state.items() if k_.startswith("backbone.")},
                              strict=False)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    aug = cfg.pretrain.augment if augment else None

    def batches(step: int):
        items = [ds[(step, int(i))] for i in rng.integers(len(ds), size=batch)]
        x = torch.stack([it["view1"] for it in items])
        return prepare_clips(x, aug, gen), torch.stack([it["perm1"] for it in items])

    label = {"bench": "frame_order_train", "stride": stride, "k": k, "lr": lr,
             "augment": augment, "init": bool(init), "chance": round(1 / len(ds.perms), 3)}  # fmt: skip
    _fit(model, batches, steps, lr, label)


def square_clips(rng: np.random.Generator, n: int, speed: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 clips (n, 1, 4, 64, 64) of a bright 8x8 square moving in a straight line,
    at most ``speed`` px per frame along each axis, with its frames put in a random order; and
    the permutation indices (n,)."""
    perms = [list(p) for p in itertools.permutations(range(4))]
    x = np.zeros((n, 1, 4, 64, 64), np.uint8)
    y = rng.integers(24, size=n)
    for i in range(n):
        p0, v = rng.uniform(16, 48, 2), rng.uniform(-speed, speed, 2)
        for t in range(4):
            cy, cx = (p0 + v * (perms[y[i]][t] - 1.5)).astype(int)
            x[i, 0, t, max(cy - 4, 0) : cy + 4, max(cx - 4, 0) : cx + 4] = 200
    return x, y


def square(steps: int, batch: int = 32, speed: float = 4.0) -> None:
    cfg = load_config(profile="demo")
    rng = np.random.default_rng(0)

    def batches(_step: int):
        x, y = square_clips(rng, batch, speed)
        return prepare_clips(torch.from_numpy(x), None, None), torch.from_numpy(y)

    torch.manual_seed(0)
    model = SSLModel(build_backbone(cfg.model.arch, cfg.model.width), reorder_classes=24)
    _fit(
        model,
        batches,
        steps,
        1e-3,
        {"bench": "frame_order_square", "speed": speed, "chance": 0.042, "ceiling": 0.5},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("oracle")
    o.add_argument("--data", type=Path, required=True)
    o.add_argument("--strides", default="1,2,4,6,8")
    t = sub.add_parser("train")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--stride", type=int, default=1)
    t.add_argument("--k", type=int, default=4)
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--init", type=Path)
    t.add_argument("--batch", type=int, default=32)
    s = sub.add_parser("square")
    s.add_argument("--steps", type=int, default=150)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--speed", type=float, default=4.0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.cmd == "oracle":
        oracle(a.data, [int(x) for x in a.strides.split(",")])
    elif a.cmd == "train":
        train(a.data, a.stride, a.k, a.steps, a.lr, not a.no_augment, a.init, a.batch)
    else:
        square(a.steps, a.batch, a.speed)


if __name__ == "__main__":
    main()
