"""Pipeline efficiency: end-to-end pretraining clips/s over pure-compute clips/s.

    python bench/pipeline.py --data DATA [--method echoclr] [--profile demo] [--steps 6]

- end-to-end: the real pretraining path: ``plan_pretrain`` + ``make_loader`` (PairDataset,
  EpochSampler, DataLoader with ``runtime.workers``) + ``PretrainTask.train_step`` (device
  augmentation, min-max, one 2B forward, NT-Xent (+ order loss)) + backward + optimizer step.
- pure compute: the same model, optimizer and batch size on pre-made input tensors (one batch
  prepared once): forward, the same loss, backward, step.
Steps alternate between the two (the machine is shared: neighbouring steps see the same
load); clips/s are from the median step time of each; prints one JSON line with both and
``efficiency`` = end-to-end / pure compute, plus every step time. One warm-up step of each is
not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from echoclr_cli.config.load import load_config
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.data.manifest import load_manifest
from echoclr_cli.pretrain.losses import nt_xent, order_loss
from echoclr_cli.pretrain.plan import make_loader, plan_pretrain
from echoclr_cli.pretrain.task import PretrainTask, build_model
from echoclr_cli.training.optim import build_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, bf16: bool):
    if bf16:
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _step(loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def next_batch(loader, sampler, state: dict) -> dict:
    """Next batch of the real loader; epochs continue (set_epoch) as in training."""
    while True:
        if state["iter"] is None:
            sampler.set_epoch(state["epoch"])
            state["iter"] = iter(loader)
        try:
            return next(state["iter"])
        except StopIteration:
            state["iter"], state["epoch"] = None, state["epoch"] + 1


def end_to_end_step(task, loader, sampler, engine, opt, state: dict) -> tuple[float, int]:
    """Seconds and clips of one real step: fetch the batch, train_step, backward, step."""
    t0 = time.perf_counter()
    batch = next_batch(loader, sampler, state)
    with engine.autocast():
        out = task.train_step(batch, engine)
    _step(out["loss"], opt)
    _sync(engine.device)
    return time.perf_counter() - t0, int(out["n_clips"])


def pure_step(cfg, model, x, perms, engine, opt) -> tuple[float, int]:
    """Seconds and clips of forward + loss + backward + step on the pre-made ``x`` (2B, 3, T, H, W)."""
    b = x.shape[0] // 2
    pc = cfg.pretrain
    t0 = time.perf_counter()
    with engine.autocast():
        _, z, logits = model(x)
        z = z.float()
        loss = pc.nt_xent_weight * nt_xent(z[:b], z[b:], pc.temperature)
        if logits is not None:
            loss = loss + pc.reorder_weight * order_loss(logits, perms)
    _step(loss, opt)
    _sync(engine.device)
    return time.perf_counter() - t0, x.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--method", default="echoclr", choices=["simclr", "mi-simclr", "echoclr"])
    ap.add_argument("--profile", default="demo", choices=["demo", "paper"])
    ap.add_argument("--split", default=None, help="pretrain.split (default: the profile's)")
    ap.add_argument("--batch-size", type=int, default=None, help="pairs per step (profile's)")
    ap.add_argument("--workers", type=int, default=None, help="runtime.workers (profile's)")
    ap.add_argument("--width", type=float, default=None, help="model.width (profile's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps of each kind")
    args = ap.parse_args()
    over: dict = {"pretrain": {"method": args.method}, "runtime": {"device": args.device}}
    if args.split:
        over["pretrain"]["split"] = args.split
    if args.batch_size:
        over["pretrain"]["batch_size"] = args.batch_size
    if args.workers is not None:
        over["runtime"]["workers"] = args.workers
    if args.width:
        over["model"] = {"width": args.width}
    cfg = load_config(profile=args.profile, overrides=over)
    device = torch.device(args.device)
    df = load_manifest(args.data)
    plan = plan_pretrain(cfg, df, args.data)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    if device.type == "cuda":  # what Engine.prepare does
        torch.backends.cudnn.benchmark = cfg.runtime.cudnn_benchmark
        if cfg.runtime.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
    opt = build_optimizer(model.parameters(), cfg.pretrain.optim)
    engine = SimpleNamespace(
        device=device,
        generator=torch.Generator(device=device).manual_seed(0),
        distributed=False,
        autocast=_autocast(device, args.bf16),
    )
    task = PretrainTask(cfg, model)
    loader, sampler = make_loader(cfg, plan, 0, pin_memory=device.type == "cuda")
    first = next(iter(loader))
    x = prepare_clips(
        torch.cat([first["view1"], first["view2"]]).to(device),
        cfg.pretrain.augment,
        engine.generator,
    )
    if device.type == "cuda" and cfg.runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    perms = torch.cat([first["perm1"], first["perm2"]]).to(device)
    state = {"iter": None, "epoch": 0}
    pure_step(cfg, model, x, perms, engine, opt)  # warm-up, not timed
    end_to_end_step(task, loader, sampler, engine, opt, state)
    # Steps alternate (pure, end-to-end, pure, ...): the machine is shared, and neighbouring
    # steps see the same load. Per-step medians resist the bursts of other processes.
    pure_t, e2e_t = [], []
    for _ in range(args.steps):
        t, n = pure_step(cfg, model, x, perms, engine, opt)
        pure_t.append(t)
        t, n = end_to_end_step(task, loader, sampler, engine, opt, state)
        e2e_t.append(t)
    pure = n / float(np.median(pure_t))
    e2e = n / float(np.median(e2e_t))
    eff = e2e / pure
    print(
        json.dumps(
            {
                "bench": "pipeline",
                "unit": "clips/s",
                "method": args.method,
                "profile": args.profile,
                "device": str(device),
                "width": cfg.model.width,
                "batch_pairs": plan.batch_size,
                "clips_per_step": 2 * plan.batch_size,
                "frames": list(x.shape[2:]),
                "workers": cfg.runtime.workers,
                "threads": torch.get_num_threads(),
                "end_to_end": round(e2e, 2),
                "pure_compute": round(pure, 2),
                "efficiency": round(eff, 3),
                "steps": args.steps,
                "pure_step_s": [round(t, 3) for t in pure_t],
                "end_to_end_step_s": [round(t, 3) for t in e2e_t],
            }
        )
    )


if __name__ == "__main__":
    main()
