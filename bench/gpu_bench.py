"""GPU throughput and peak memory: pretraining and fine-tuning steps, fp32 vs our default.

    python bench/gpu_bench.py [--steps 10] [--compile] [--tiny --device cpu]

Prints JSON lines: one with torch / CUDA / cuDNN versions and the device, then one per
(workload, mode):
- ``pretrain``: EchoCLR step (uint8 clips -> device augmentation -> r3d_18 + heads, one 2B
  forward, NT-Xent + order loss, backward, Adam), 4x112x112 clips, batch 196 pairs = 392 clips.
- ``finetune``: classifier step (uint8 -> augmentation -> r3d_18 + dropout + linear, BCE,
  backward, Adam), 16x112x112 clips, batch 88.
Modes: ``fp32`` = the published setup (fp32, NCDHW, cudnn.benchmark as the published scripts
set it); ``default`` = ours (bf16 autocast, channels_last_3d, cudnn.benchmark); ``compile`` =
default + torch.compile (with --compile). Inputs are made once on the device, so this measures
compute (the loader is measured by bench/loader.py and bench/pipeline.py).
``--tiny`` shrinks everything for a CPU smoke test of this script.
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from echoclr_cli.config.schema import AugmentConfig, Config
from echoclr_cli.data.augment import prepare_clips
from echoclr_cli.models.backbones import Classifier, build_backbone
from echoclr_cli.pretrain.task import PretrainTask, build_model
from echoclr_cli.runtime import autocast
from echoclr_cli.training.optim import build_optimizer


def versions(device: torch.device) -> dict:
    info = {
        "bench": "versions",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1))
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, channels_last) for a mode; sets cudnn.benchmark."""
    torch.backends.cudnn.benchmark = True  # published scripts and ours both set it
    ours = mode != "fp32" and device.type == "cuda"
    return (torch.bfloat16 if ours else None), ours


def _time(step, steps: int, warmup: int, device: torch.device) -> tuple[float, float, float]:
    """(seconds per step, peak GiB, seconds of the ``warmup`` untimed steps)."""
    tw = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warm = time.perf_counter() - tw
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return dt, peak, warm


def _measure(step, args, device: torch.device, clips: int, **row) -> dict:
    """Time ``step`` (``clips`` clips each) and return its JSON line: ``row`` (workload, mode,
    clip, batch), clips/s, seconds per step, peak GiB and the warm-up seconds."""
    dt, peak, warm = _time(step, args.steps, args.warmup, device)
    return {
        "bench": "gpu",
        **row,
        "clips_per_s": round(clips / dt, 1),
        "step_s": round(dt, 4),
        "peak_gib": round(peak, 2) if peak is not None else None,
        "warmup_s": round(warm, 2),
    }


def _compile(model: torch.nn.Module, args) -> torch.nn.Module:
    return torch.compile(model, backend=getattr(args, "compile_backend", "inductor"))


def pretrain_case(args, mode: str, device: torch.device) -> dict:
    dtype, channels_last = _setup(mode, device)
    cfg = Config.model_validate(
        {
            "runtime": {"channels_last": channels_last},
            "model": {"width": args.width},
            "pretrain": {"method": "echoclr", "batch_size": args.pretrain_batch},
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    net = _compile(model, args) if mode == "compile" else model
    opt = build_optimizer(
        model.parameters(), cfg.pretrain.optim.model_copy(update={"learning_rate": 1e-4})
    )
    b, s = args.pretrain_batch, args.size
    g = torch.Generator(device=device).manual_seed(0)
    batch = {
        "view1": torch.randint(0, 256, (b, 1, 4, s, s), dtype=torch.uint8, device=device),
        "view2": torch.randint(0, 256, (b, 1, 4, s, s), dtype=torch.uint8, device=device),
        "perm1": torch.randint(0, 24, (b,), device=device),
        "perm2": torch.randint(0, 24, (b,), device=device),
        "study_index": torch.arange(b, device=device),
    }
    engine = SimpleNamespace(device=device, generator=g, distributed=False)
    task = PretrainTask(cfg, model, net)

    def step() -> None:
        with autocast(device, dtype):
            out = task.train_step(batch, engine)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    return _measure(
        step, args, device, 2 * b, workload="pretrain", mode=mode, clip=[4, s, s], batch_pairs=b
    )


def finetune_case(args, mode: str, device: torch.device) -> dict:
    dtype, channels_last = _setup(mode, device)
    torch.manual_seed(0)
    model = Classifier(build_backbone("r3d_18", args.width), dropout=0.25).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    net = _compile(model, args) if mode == "compile" else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    b, s, t = args.finetune_batch, args.size, args.finetune_frames
    x = torch.randint(0, 256, (b, 1, t, s, s), dtype=torch.uint8, device=device)
    y = (torch.rand(b, device=device) < 0.3).float()
    g = torch.Generator(device=device).manual_seed(0)
    aug = AugmentConfig()

    def step() -> None:
        inp = prepare_clips(x, aug, g)  # (B, 3, T, H, W)
        if channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last_3d)
        with autocast(device, dtype):
            logits = net(inp)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _measure(step, args, device, b, workload="finetune", mode=mode, clip=[t, s, s], batch=b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--only", choices=["pretrain", "finetune"], default=None)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test sizes")
    args = ap.parse_args()
    device = torch.device(args.device)
    args.width, args.size, args.pretrain_batch, args.finetune_batch, args.finetune_frames = (
        (0.125, 32, 4, 4, 8) if args.tiny else (1.0, 112, 196, 88, 16)
    )
    print(json.dumps(versions(device)), flush=True)
    modes = ["fp32", "default"] + (["compile"] if args.compile else [])
    cases = [("pretrain", pretrain_case), ("finetune", finetune_case)]
    speed: dict[tuple[str, str], float] = {}
    for name, fn in cases:
        if args.only and name != args.only:
            continue
        for mode in modes:
            try:
                row = fn(args, mode, device)
            except torch.OutOfMemoryError as e:  # report, keep going
                row = {"bench": "gpu", "workload": name, "mode": mode, "error": f"OOM: {e}"[:300]}
            print(json.dumps(row), flush=True)
            if "clips_per_s" in row:
                speed[(name, mode)] = row["clips_per_s"]
            if device.type == "cuda":
                torch.cuda.empty_cache()
    summary = {"bench": "gpu_summary"}
    for name, _ in cases:
        for mode in modes[1:]:
            if (name, mode) in speed and (name, "fp32") in speed:
                summary[f"{name}_{mode}_vs_fp32"] = round(
                    speed[(name, mode)] / speed[(name, "fp32")], 2
                )
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
