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
from echoclr_cli.data.augment import augment as augment_clips
from echoclr_cli.data.augment import prepare_clips, to_three_channels
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


def _fit(model: SSLModel, batches, steps: int, lr: float, label: dict, opts: dict | None = None):
    """Train the reorder head alone for ``steps`` steps; print the accuracy of each 50 steps.

    ``opts`` (the ``train`` levers): ``optim`` adam|sgd, ``head_lr`` (the head's own lr;
    None = ``lr``), ``bn`` train|frozen (frozen: BatchNorm layers use and keep their running
    statistics, estimated over ``bn_warmup`` batches first)."""
    opts = opts or {}
    every = opts.get("every", 50)
    head = [p for n, p in model.named_parameters() if n.startswith("reorder_head.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("reorder_head.")]
    groups = [{"params": rest}, {"params": head, "lr": opts.get("head_lr") or lr}]
    if opts.get("optim", "adam") == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(groups, lr=lr)
    if opts.get("bn") == "frozen":
        _estimate_bn(model, batches, opts.get("bn_warmup", 20))
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
        if (step + 1) % every == 0:
            print(json.dumps(label | {"step": step + 1, "acc_last": round(float(np.mean(accs[-every:])), 3),
                                      "seconds": round(time.perf_counter() - t0)}), flush=True)  # fmt: skip


BN_WARMUP_STEP = 10**6  # the batches that estimate frozen BatchNorm statistics (PairDataset
# seeds take non-negative epochs only; the old -1 - i raised in SeedSequence)


def _estimate_bn(model: SSLModel, batches, n: int) -> None:
    """BatchNorm running statistics from ``n`` batches (cumulative average), then frozen:
    the BatchNorm layers stay in eval mode while the rest trains."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        for i in range(n):
            model(batches(BN_WARMUP_STEP + i)[0])  # steps the training never reaches
    for m in bns:
        m.eval()
        m.train = lambda mode=True, m=m: m  # stays frozen


def no_temporal_stride(model: SSLModel) -> None:
    """layer2-layer4 keep time: their strided convolutions stride space only (2 -> (1, 2, 2))."""
    for layer in (model.backbone.layer2, model.backbone.layer3, model.backbone.layer4):
        for m in layer.modules():
            if isinstance(m, torch.nn.Conv3d) and m.stride[0] == 2:
                m.stride = (1, *m.stride[1:])


def train(
    data: Path,
    stride: int,
    k: int,
    steps: int,
    lr: float,
    augment: bool,
    init: Path | None,
    batch: int = 32,
    levers: dict | None = None,
):
    levers = levers or {}
    cfg = load_config(profile="demo")
    ds = PairDataset(_train_videos(data), data, "echoclr", clip_len=k, stride=stride,
                     reorder_frames=k, seed=0)  # fmt: skip
    torch.manual_seed(0)
    head = levers.get("head", "linear")
    model = SSLModel(build_backbone(cfg.model.arch, cfg.model.width), reorder_classes=len(ds.perms),
                     reorder_head=head, reorder_frames=k)  # fmt: skip
    if levers.get("tstride") == 1:
        no_temporal_stride(model)
    if init is not None:
        state = load_checkpoint(init)["model"]
        model.load_state_dict({k_: v for k_, v in state.items() if k_.startswith("backbone.")},
                              strict=False)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    aug = cfg.pretrain.augment if augment else None
    minmax = levers.get("minmax", "clip")

    def batches(step: int):
        items = [ds[(step, int(i))] for i in rng.integers(len(ds), size=batch)]
        x = torch.stack([it["view1"] for it in items])
        if minmax == "none":  # grey levels / 255, no per-clip scaling
            x = to_three_channels((augment_clips(x, aug, gen) if aug else x.float()) / 255.0)
        else:
            x = prepare_clips(x, aug, gen)
        return x, torch.stack([it["perm1"] for it in items])

    label = {"bench": "frame_order_train", "stride": stride, "k": k, "lr": lr,
             "augment": augment, "init": bool(init), "chance": round(1 / len(ds.perms), 3),
             **levers}  # fmt: skip
    _fit(model, batches, steps, lr, label, levers)


def _split_videos(data: Path, splits: tuple[str, ...]) -> pd.DataFrame:
    df = pd.read_csv(data / "manifest.csv")
    return df[df["split"].isin(splits)]


def _pair_diffs(f: torch.Tensor, grid: int | None = None) -> torch.Tensor:
    """(N, C, 4, H, W) -> (N, C*6): per channel, the mean |F_i - F_j| of each frame pair i < j
    (on a ``grid`` x ``grid`` average of each frame first; None: full resolution)."""
    if grid is not None:
        f = torch.nn.functional.adaptive_avg_pool3d(f, (f.shape[2], grid, grid))
    pairs = itertools.combinations(range(f.shape[2]), 2)
    return torch.stack([(f[:, :, i] - f[:, :, j]).abs().mean(dim=(2, 3)) for i, j in pairs], 2).flatten(1)  # fmt: skip


def _read_points(model: SSLModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The features an order head could read for clips x (N, 3, T, H, W): ``pooled`` (the
    published head's input); the pairwise frame distances (``_pair_diffs``) of the input
    pixels, of the stem and ``layer1`` run on the whole clip (their 3-frame kernels mix the
    shuffled frames), and of ``layer1`` run on each frame alone (``per_frame_layer1``: the
    ``frames`` head's input, on its 8x8 grid); and the previous ``frames`` head's input
    (``layer1`` of the clip: each frame on a 4x4 grid plus the pairwise distances)."""
    from echoclr_cli.models.backbones import per_frame_layer1

    b = model.backbone
    stem = b.stem(x)
    l1 = b.layer1(stem)
    pooled = b.avgpool(b.layer4(b.layer3(b.layer2(l1)))).flatten(1)
    grid4 = torch.nn.functional.adaptive_avg_pool3d(l1, (l1.shape[2], 4, 4)).flatten(1)
    return {
        "pooled": pooled,
        "pixels_diff": _pair_diffs(x[:, :1]),
        "stem_clip_diff": _pair_diffs(stem),
        "layer1_clip_diff_g8": _pair_diffs(l1, 8),
        "layer1_clip_grid4+diff_g4 (previous frames head)": torch.cat([grid4, _pair_diffs(l1, 4)], 1),
        "layer1_per_frame_diff_g4": _pair_diffs(per_frame_layer1(b, x), 4),
        "layer1_per_frame_diff_g8 (frames head)": _pair_diffs(per_frame_layer1(b, x), 8),
    }  # fmt: skip


def probe(data: Path, n_train: int, n_test: int, init: Path | None, tstride: int, batch: int = 64):
    """Where can a head read the order? Logistic regression (a convex fit, no lr to tune) on
    each read point of ``_read_points`` of the demo model at init (or ``--init``), trained on
    ``n_train`` permuted clips of training videos, accuracy on ``n_test`` clips of val/test
    videos (augmented as in pretraining). Chance 1/24."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cfg = load_config(profile="demo")
    torch.manual_seed(0)
    model = SSLModel(build_backbone(cfg.model.arch, cfg.model.width), reorder_classes=24)
    if tstride == 1:
        no_temporal_stride(model)
    if init is not None:
        state = load_checkpoint(init)["model"]
        model.load_state_dict({k_: v for k_, v in state.items() if k_.startswith("backbone.")},
                              strict=False)  # fmt: skip
    model.eval()  # BatchNorm: running statistics re-estimated below (train-mode forward passes)
    gen = torch.Generator().manual_seed(0)

    def features(df: pd.DataFrame, n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        ds = PairDataset(df, data, "echoclr", clip_len=4, stride=1, reorder_frames=4, seed=seed)
        rng = np.random.default_rng(seed)
        feats: dict[str, list[np.ndarray]] = {}
        ys = []
        for start in range(0, n, batch):
            items = [ds[(start, int(i))] for i in rng.integers(len(ds), size=min(batch, n - start))]
            x = prepare_clips(torch.stack([it["view1"] for it in items]), cfg.pretrain.augment, gen)
            with torch.no_grad():
                model.train()  # batch statistics, as in pretraining
                for k_, v in _read_points(model, x).items():
                    feats.setdefault(k_, []).append(v.numpy())
            ys.append(torch.stack([it["perm1"] for it in items]).numpy())
        return {k_: np.concatenate(v) for k_, v in feats.items()}, np.concatenate(ys)

    t0 = time.perf_counter()
    f_tr, y_tr = features(_split_videos(data, ("train",)), n_train, 0)
    f_te, y_te = features(_split_videos(data, ("val", "test")), n_test, 1)
    for name in f_tr:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        clf.fit(f_tr[name], y_tr)
        print(json.dumps({"bench": "frame_order_probe", "read_point": name, "tstride": tstride,
                          "init": str(init.name) if init else "random", "features": f_tr[name].shape[1],
                          "train_clips": n_train, "heldout_clips": n_test,
                          "heldout_acc": round(float(clf.score(f_te[name], y_te)), 3),
                          "chance": round(1 / 24, 3), "seconds": round(time.perf_counter() - t0)}),
              flush=True)  # fmt: skip


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
    t.add_argument("--head", choices=["linear", "frames"], default="linear",
                   help="linear: published head on the pooled features; frames: layer1 map")  # fmt: skip
    t.add_argument("--head-lr", type=float, help="the head's own learning rate")
    t.add_argument("--optim", choices=["adam", "sgd"], default="adam")
    t.add_argument("--bn", choices=["train", "frozen"], default="train")
    t.add_argument("--tstride", type=int, choices=[1, 2], default=2,
                   help="temporal stride of layer2-4 (r3d_18: 2)")  # fmt: skip
    t.add_argument("--minmax", choices=["clip", "none"], default="clip")
    t.add_argument("--every", type=int, default=50, help="print the accuracy of every N steps")
    t.add_argument("--threads", type=int, default=1)
    pr = sub.add_parser("probe")
    pr.add_argument("--data", type=Path, required=True)
    pr.add_argument("--train-clips", type=int, default=2048)
    pr.add_argument("--test-clips", type=int, default=1024)
    pr.add_argument("--init", type=Path)
    pr.add_argument("--tstride", type=int, choices=[1, 2], default=2)
    pr.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("square")
    s.add_argument("--steps", type=int, default=150)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--speed", type=float, default=4.0)
    a = ap.parse_args()
    torch.set_num_threads(getattr(a, "threads", 1))
    if a.cmd == "oracle":
        oracle(a.data, [int(x) for x in a.strides.split(",")])
    elif a.cmd == "train":
        levers = {"head": a.head, "head_lr": a.head_lr, "optim": a.optim, "bn": a.bn,
                  "tstride": a.tstride, "minmax": a.minmax, "every": a.every}  # fmt: skip
        train(a.data, a.stride, a.k, a.steps, a.lr, not a.no_augment, a.init, a.batch, levers)
    elif a.cmd == "probe":
        probe(a.data, a.train_clips, a.test_clips, a.init, a.tstride)
    else:
        square(a.steps, a.batch, a.speed)


if __name__ == "__main__":
    main()
