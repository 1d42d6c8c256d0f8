"""The cases of bench/gpu_check.py: each fills a result dict as it goes (so a case cut short by
its time budget still reports what it measured) and returns nothing.

Every case takes ``(ctx, res)``: ``ctx`` (see ``Ctx``) holds the device, the sizes (full or
tiny), a scratch dir and the case deadline; ``res`` is the case's result dict, written to the
JSON after the case whatever happens. Package imports stay few and public (models, pretrain,
engine, inference, data.augment, data.manifest, config) so a refactor breaks few lines.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gpu_bench  # noqa: E402

# --------------------------------------------------------------------------- sizes
FULL = {
    "width": 1.0,
    "size": 112,
    "pretrain_frames": 4,
    "finetune_frames": 16,
    "pretrain_batches": [196, 392],  # pairs per step (clips = 2 x pairs)
    "finetune_batch": 88,
    "steps": 8,
    "warmup": 3,
    "conv_batch": 64,  # clips per conv3d timing (layer shapes are the real ones)
    "conv_iters": 5,
    "loader_workers": [4, 8, 12],
    "loader_batches": 30,  # timed batches after the prefetch queue is drained
    "e2e_workers": 8,
    "e2e_steps": 24,  # timed steps after the prefetch queue is drained
    "eval_blocks": [64, 256],
    "eval_videos": 48,
    "overhead_steps": 10,
    "data": {"studies": 100, "videos": (3, 5), "frames": (40, 100), "copies": 25},
    "compile_backend": "inductor",
}
TINY = {
    "width": 0.125,
    "size": 32,
    "pretrain_frames": 4,
    "finetune_frames": 8,
    "pretrain_batches": [4, 8],
    "finetune_batch": 4,
    "steps": 2,
    "warmup": 1,
    "conv_batch": 1,
    "conv_iters": 1,
    "loader_workers": [1, 2, 3],
    "loader_batches": 4,
    "e2e_workers": 2,
    "e2e_steps": 4,
    "eval_blocks": [2, 8],
    "eval_videos": 4,
    "overhead_steps": 3,
    "data": {"studies": 10, "videos": (2, 4), "frames": (16, 24), "copies": 4},
    "compile_backend": "eager",  # dynamo tracing only: inductor needs minutes on 2 cores
}
PREFETCH = 4  # make_loader's prefetch_factor


@dataclass
class Ctx:
    device: torch.device
    tiny: bool
    sizes: dict
    work: Path
    deadline: float = math.inf  # time.time() at which the running case is cut
    cache: dict = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.time()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)

    def bf16(self):
        """Our default precision: bf16 autocast on CUDA, fp32 on CPU (as runtime.precision=auto)."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def cleanup(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _args(ctx: Ctx, **kw) -> SimpleNamespace:
    s = ctx.sizes
    base = {
        "width": s["width"],
        "size": s["size"],
        "pretrain_batch": s["pretrain_batches"][0],
        "finetune_batch": s["finetune_batch"],
        "finetune_frames": s["finetune_frames"],
        "steps": s["steps"],
        "warmup": s["warmup"],
        "compile_backend": s["compile_backend"],
    }
    base.update(kw)
    return SimpleNamespace(**base)


# --------------------------------------------------------------------------- versions
def case_versions(ctx: Ctx, res: dict) -> None:
    import platform

    res.update(gpu_bench.versions(ctx.device))
    res.pop("bench", None)
    res["python"] = platform.python_version()
    res["cudnn_enabled"] = torch.backends.cudnn.enabled
    res["cuda_available"] = torch.cuda.is_available()
    res["cpus"] = os.cpu_count()
    with contextlib.suppress(Exception):
        import torchvision

        res["torchvision"] = torchvision.__version__
    with contextlib.suppress(Exception):
        import numpy

        res["numpy"] = numpy.__version__
    if ctx.device.type == "cuda":
        p = torch.cuda.get_device_properties(ctx.device)
        res["capability"] = f"{p.major}.{p.minor}"
        res["bf16_supported"] = torch.cuda.is_bf16_supported()


# --------------------------------------------------------------------------- conv3d bf16
def conv_shapes(arch: str, width: float, frames: int, size: int) -> list[dict]:
    """Every distinct Conv3d of ``arch`` with its real input shape (C, T, H, W)."""
    from echoclr_cli.models.backbones import build_backbone

    model = build_backbone(arch, width).eval()
    seen: dict[tuple, dict] = {}

    def hook(mod: nn.Conv3d, inp, _out) -> None:
        key = (
            mod.in_channels,
            mod.out_channels,
            mod.kernel_size,
            mod.stride,
            mod.padding,
            tuple(inp[0].shape[1:]),
        )
        if key not in seen:
            seen[key] = {
                "cin": mod.in_channels,
                "cout": mod.out_channels,
                "kernel": list(mod.kernel_size),
                "stride": list(mod.stride),
                "padding": list(mod.padding),
                "input_cthw": list(inp[0].shape[1:]),
            }

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv3d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, frames, size, size))
    for h in hooks:
        h.remove()
    return list(seen.values())


def _conv_time(conv, x, iters: int, sync, warmup: int) -> float:
    """Seconds per forward + backward (weights and input) after ``warmup`` untimed ones."""
    for i in range(iters + warmup):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        y = conv(x)
        y.backward(torch.ones_like(y))
    sync()
    return (time.perf_counter() - t0) / iters


def case_conv3d(ctx: Ctx, res: dict) -> None:
    """bf16 (channels_last_3d) vs fp32 (NCDHW, as published) conv3d: relative error of the
    forward against an exact fp32 reference (TF32 off) and forward+backward speed, at the real
    layer shapes of r3d_18 (pretrain and fine-tune clips) and r2plus1d_18 (pretrain clips)."""
    s = ctx.sizes
    torch.backends.cudnn.benchmark = True
    n = s["conv_batch"]
    res["batch_clips"] = n
    res["layers"] = []
    plan = [
        ("r3d_18", s["pretrain_frames"]),
        ("r2plus1d_18", s["pretrain_frames"]),
        ("r3d_18", s["finetune_frames"]),
    ]
    g = torch.Generator().manual_seed(0)
    try:
        _conv_layers(ctx, res, plan, n, g)
    finally:  # also when cut short: the figures over the layers measured
        layers = res["layers"]
        t32 = sum(r["fp32_ms"] for r in layers)
        t16 = sum(r["bf16_ms"] for r in layers)
        worst = max((r["rel_err_bf16"] for r in layers), default=None)
        res["layers_measured"] = len(layers)
        res["max_rel_err_bf16"] = worst
        # bf16 keeps 8 mantissa bits (~4e-3 relative per product); sums average it down
        res["correct"] = worst is not None and worst < 2e-2
        res["total_fp32_ms"] = round(t32, 2)
        res["total_bf16_ms"] = round(t16, 2)
        res["speedup_all_layers"] = round(t32 / t16, 2) if t16 else None
        res["bf16_faster"] = bool(t16) and t16 < t32


def _conv_layers(ctx: Ctx, res: dict, plan: list, n: int, g: torch.Generator) -> None:
    dev = ctx.device
    for arch, frames in plan:
        for shp in conv_shapes(arch, ctx.sizes["width"], frames, ctx.sizes["size"]):
            if ctx.left() < 5:
                res["cut_short"] = True
                return
            conv = nn.Conv3d(
                shp["cin"], shp["cout"], shp["kernel"], shp["stride"], shp["padding"], bias=False
            )
            nn.init.kaiming_normal_(conv.weight, generator=g)
            conv = conv.to(dev)
            x = torch.randn((n, *shp["input_cthw"]), generator=g).to(dev)
            # exact fp32 reference (no TF32) vs bf16 forward
            tf32 = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False
            with torch.no_grad():
                ref = conv(x).double()
            torch.backends.cudnn.allow_tf32 = tf32
            conv_cl = conv.to(memory_format=torch.channels_last_3d)
            x_cl = x.contiguous(memory_format=torch.channels_last_3d)
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
                out = conv_cl(x_cl).double()
            rel = float((out - ref).norm() / ref.norm().clamp_min(1e-30))
            del ref, out
            conv = conv.to(memory_format=torch.contiguous_format)
            iters = ctx.sizes["conv_iters"]
            warm = ctx.sizes["warmup"]
            t32 = _conv_time(conv, x.requires_grad_(), iters, ctx.sync, warm)
            conv_cl = conv.to(memory_format=torch.channels_last_3d)
            x_cl = x.detach().contiguous(memory_format=torch.channels_last_3d).requires_grad_()
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                t16 = _conv_time(conv_cl, x_cl, iters, ctx.sync, warm)
            res["layers"].append(
                {
                    "arch": arch,
                    "frames": frames,
                    **shp,
                    "rel_err_bf16": float(f"{rel:.2e}"),
                    "fp32_ms": round(1000 * t32, 3),
                    "bf16_ms": round(1000 * t16, 3),
                    "speedup": round(t32 / t16, 2) if t16 > 0 else None,
                }
            )
            del conv, conv_cl, x, x_cl
            ctx.cleanup()


# --------------------------------------------------------------------------- compute throughput
def _modes(ctx: Ctx, res: dict, fn, modes: list[str], **kw) -> None:
    for mode in modes:
        if ctx.left() < 5:
            res.setdefault("not_run", []).append(mode)
            continue
        try:
            row = fn(_args(ctx, **kw), mode, ctx.device)
        except torch.OutOfMemoryError as e:
            row = {"error": f"OOM: {e}"[:300]}
        row.pop("bench", None)
        if row.get("peak_gib") is not None and math.isnan(row["peak_gib"]):
            row["peak_gib"] = None
        res[mode] = row
        ctx.cleanup()
    base = res.get("fp32", {}).get("clips_per_s")
    for mode in modes[1:]:
        v = res.get(mode, {}).get("clips_per_s")
        if base and v:
            res[f"{mode}_vs_fp32"] = round(v / base, 2)


def _pretrain(which: int, modes: list[str]):
    """Pretrain case at ``sizes["pretrain_batches"][which]`` pairs (196 / 392 on the GPU)."""

    def case(ctx: Ctx, res: dict) -> None:
        batch = ctx.sizes["pretrain_batches"][which]
        res["batch_pairs"], res["clips_per_step"] = batch, 2 * batch
        _modes(ctx, res, gpu_bench.pretrain_case, modes, pretrain_batch=batch)

    case.__doc__ = "pretrain step (uint8 pairs -> augmentation -> loss -> Adam), 4-frame clips: "
    case.__doc__ += ", ".join(modes)
    return case


def _finetune(modes: list[str]):
    def case(ctx: Ctx, res: dict) -> None:
        res["batch"] = ctx.sizes["finetune_batch"]
        _modes(ctx, res, gpu_bench.finetune_case, modes)

    case.__doc__ = "fine-tune step, 16-frame clips: " + ", ".join(modes)
    return case


# --------------------------------------------------------------------------- data
def dataset(ctx: Ctx) -> Path:
    """A preprocessed dataset dir (made once): tests/helpers.make_dataset, then its rows
    repeated ``copies`` times as hard links under new ids (more studies and pairs for no
    disk), so long runs of batches fit in one epoch."""
    if "data" in ctx.cache:
        return ctx.cache["data"]
    import pandas as pd

    sys.path.insert(0, str(HERE.parent / "tests"))
    from helpers import make_dataset

    d = ctx.sizes["data"]
    data = make_dataset(
        ctx.work / "base",
        n_studies=d["studies"],
        videos_per_study=d["videos"],
        frames=d["frames"],
        size=ctx.sizes["size"],
    )
    df = pd.read_csv(data / "manifest.csv", dtype={"video_id": str, "study_id": str})
    out = ctx.work / "data"
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(d["copies"]):
        part = df.copy()
        for col in ("video_id", "study_id", "patient_id"):
            part[col] = part[col].astype(str) + f"c{k}"
        part["path"] = [f"videos/{v}.npy" for v in part["video_id"]]
        for src, dst in zip(df["path"], part["path"], strict=True):
            os.link(data / src, out / dst)
        rows.append(part)
    pd.concat(rows, ignore_index=True).to_csv(out / "manifest.csv", index=False)
    for extra in ("dataset.json",):
        if (data / extra).exists():
            (out / extra).write_bytes((data / extra).read_bytes())
    ctx.cache["data"] = out
    return out


def _pretrain_cfg(ctx: Ctx, workers: int, batch: int):
    from echoclr_cli.config.load import load_config

    return load_config(
        profile="paper",
        overrides={
            "runtime": {"device": str(ctx.device), "workers": workers},
            "model": {"width": ctx.sizes["width"]},
            "pretrain": {"split": "train,val,test", "batch_size": batch, "epochs": 1},
        },
    )


def _batches(loader, sampler):
    """Batches of the product's loader across epochs (set_epoch as the engine does)."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def case_loader(ctx: Ctx, res: dict) -> None:
    """The product's pretraining loader (PairDataset + EpochSampler + DataLoader as
    pretrain.plan.make_loader builds it) at several worker counts: the prefetch queue (workers x
    prefetch_factor batches) is consumed untimed first, then batches are timed back to back,
    each moved to the device and augmented there (prepare_clips), as in training."""
    from echoclr_cli.data.augment import prepare_clips
    from echoclr_cli.data.manifest import load_manifest
    from echoclr_cli.pretrain.plan import make_loader, plan_pretrain

    s, dev = ctx.sizes, ctx.device
    data = dataset(ctx)
    df = load_manifest(data)
    batch = s["pretrain_batches"][0]
    res["batch_pairs"] = batch
    g = torch.Generator(device=dev).manual_seed(0)
    for w in s["loader_workers"]:
        if ctx.left() < 10:
            res.setdefault("not_run", []).append(w)
            continue
        cfg = _pretrain_cfg(ctx, w, batch)
        plan = plan_pretrain(cfg, df, data)
        loader, sampler = make_loader(cfg, plan, 0, pin_memory=dev.type == "cuda")
        it = _batches(loader, sampler)
        t_start = time.perf_counter()
        drain = w * PREFETCH + 1
        for _ in range(drain):
            next(it)
        t_drained = time.perf_counter()
        n, t0 = 0, time.perf_counter()
        while n < s["loader_batches"] and ctx.left() > 5:
            b = next(it)
            x = torch.cat([b["view1"], b["view2"]]).to(dev, non_blocking=True)
            prepare_clips(x, cfg.pretrain.augment, g)
            ctx.sync()
            n += 1
        dt = time.perf_counter() - t0
        res[f"workers_{w}"] = {
            "pairs_per_s": round(n * batch / dt, 1) if n else None,
            "clips_per_s": round(2 * n * batch / dt, 1) if n else None,
            "batches_timed": n,
            "batches_drained": drain,
            "drain_s": round(t_drained - t_start, 2),
            "steps_per_epoch": plan.steps_per_epoch,
        }
        del it, loader, sampler
        ctx.cleanup()


class TimedLoader:
    """Wraps a loader: seconds spent waiting in ``next`` for each batch; ends the epoch early
    (``cut_short``) when ``stop()`` says so (the case's deadline is near)."""

    def __init__(self, loader, stop=lambda: False):
        self.loader = loader
        self.stop = stop
        self.cut_short = False
        self.waits: list[float] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            if self.stop():
                self.cut_short = True
                return
            t0 = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                return
            self.waits.append(time.perf_counter() - t0)
            yield b


def _engine(ctx: Ctx, cfg, name: str, events: list):
    from echoclr_cli.events import Step
    from echoclr_cli.training.engine import Engine

    # a Step event (and its timestamp) every step: one host sync per step, as a timed loop needs
    cfg.runtime.sync_every = 1

    def progress(ev) -> None:
        if isinstance(ev, Step):
            events.append(time.perf_counter())

    return Engine(cfg, ctx.work / name, section="pretrain", overwrite=True, progress=progress)


def case_e2e(ctx: Ctx, res: dict) -> None:
    """End-to-end pretraining through the product (Engine.fit + PretrainTask + make_loader,
    our default precision), steps back to back. The first workers x prefetch_factor + 2 steps
    (the prefetched queue, start-up) are not timed; over the timed steps: clips/s and the share
    of wall time spent waiting for the next batch ("GPU idle": the engine syncs every step)."""
    from echoclr_cli.data.manifest import load_manifest
    from echoclr_cli.pretrain.plan import make_loader, plan_pretrain
    from echoclr_cli.pretrain.task import PretrainTask, build_model
    from echoclr_cli.training.optim import build_optimizer

    s, dev = ctx.sizes, ctx.device
    data = dataset(ctx)
    df = load_manifest(data)
    w, batch = s["e2e_workers"], s["pretrain_batches"][0]
    cfg = _pretrain_cfg(ctx, w, batch)
    plan = plan_pretrain(cfg, df, data)
    skip = w * PREFETCH + 2
    want = skip + s["e2e_steps"]
    res.update(workers=w, batch_pairs=plan.batch_size, untimed_steps=skip)
    res["steps_per_epoch"] = plan.steps_per_epoch
    if plan.steps_per_epoch < want:
        res["note"] = f"epoch has {plan.steps_per_epoch} steps < {want}: fewer timed steps"
    events: list[float] = []
    engine = _engine(ctx, cfg, "e2e_run", events)
    model = build_model(cfg)
    net = engine.prepare(model)
    task = PretrainTask(cfg, model, net)
    opt = build_optimizer(model.parameters(), cfg.pretrain.optim)
    loader, sampler = make_loader(cfg, plan, 0, pin_memory=dev.type == "cuda")
    timed = TimedLoader(loader, stop=lambda: ctx.left() < 8)  # 8 s left for last.pt
    ctx.reset_peak()
    engine.fit(task, timed, opt, epochs=1, sampler=sampler, max_steps_per_epoch=want)
    res["cut_short"] = timed.cut_short
    # events[i] = end of step i; waits[i] = wait for batch i (inside step i's interval)
    steps = list(range(skip, len(events)))
    if not steps:
        if timed.cut_short:  # partial: the deadline came before the first timed step
            res["note"] = f"only {len(events)} steps ran before the deadline (< {skip + 1})"
            return
        raise RuntimeError(f"only {len(events)} steps ran (< {skip + 1})")
    wall = events[-1] - events[skip - 1]
    wait = sum(timed.waits[i] for i in steps)
    res.update(
        timed_steps=len(steps),
        clips_per_s=round(2 * plan.batch_size * len(steps) / wall, 1),
        step_s=round(wall / len(steps), 4),
        data_wait_share=round(wait / wall, 4),
        max_wait_s=round(max(timed.waits[i] for i in steps), 4),
        peak_gib=ctx.peak_gib(),
    )
    del engine, task, net, model, opt, loader, timed
    ctx.cleanup()


def case_eval(ctx: Ctx, res: dict) -> None:
    """Evaluation throughput (inference.eval_loader + predict_videos, all clips of each
    video, fine-tune classifier, our default precision) at two block sizes: clips/s and peak
    memory (bounded by the block, not the video length)."""
    from echoclr_cli.config.load import load_config
    from echoclr_cli.data.manifest import load_manifest
    from echoclr_cli.inference.loader import eval_loader, predict_videos
    from echoclr_cli.models.backbones import Classifier, build_backbone

    s, dev = ctx.sizes, ctx.device
    data = dataset(ctx)
    df = load_manifest(data).head(s["eval_videos"])
    cfg = load_config(
        profile="paper",
        overrides={
            "runtime": {"device": str(dev), "workers": 4 if not ctx.tiny else 1},
            "evaluate": {"clips_per_video": "all", "batch_size": 8 if not ctx.tiny else 2},
        },
    )
    torch.backends.cudnn.benchmark = True
    model = Classifier(build_backbone("r3d_18", s["width"]), 0.25).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    res["videos"] = len(df)
    for block in s["eval_blocks"]:
        if ctx.left() < 5:
            res.setdefault("not_run", []).append(block)
            continue
        loader = eval_loader(df, data, "as", cfg, s["finetune_frames"], 1)
        ctx.reset_peak()
        t0 = time.perf_counter()
        pred = predict_videos(model, loader, dev, block, autocast=ctx.bf16)
        ctx.sync()
        dt = time.perf_counter() - t0
        clips = int(pred.video["n_clips"].sum())
        res[f"block_{block}"] = {
            "clips": clips,
            "forwards": pred.n_forwards,
            "clips_per_s": round(clips / dt, 1),
            "seconds": round(dt, 2),
            "peak_gib": ctx.peak_gib(),
        }
        del loader, pred
        ctx.cleanup()


def case_engine_overhead(ctx: Ctx, res: dict) -> None:
    """The product's step (Engine.fit over one pre-made device batch, repeated) vs a bare
    step (task.train_step + backward + optimizer step in a plain loop, one sync at the end),
    same model, task and batch: seconds per step of each and their ratio."""
    from echoclr_cli.pretrain.task import PretrainTask, build_model
    from echoclr_cli.training.optim import build_optimizer

    s, dev = ctx.sizes, ctx.device
    b, t, sz = s["pretrain_batches"][0], s["pretrain_frames"], s["size"]
    cfg = _pretrain_cfg(ctx, 0, b)
    events: list[float] = []
    engine = _engine(ctx, cfg, "overhead_run", events)
    model = build_model(cfg)
    net = engine.prepare(model)
    task = PretrainTask(cfg, model, net)
    optim = cfg.pretrain.optim.model_copy(update={"learning_rate": 1e-4})
    opt = build_optimizer(model.parameters(), optim)
    batch = {
        "view1": torch.randint(0, 256, (b, 1, t, sz, sz), dtype=torch.uint8, device=dev),
        "view2": torch.randint(0, 256, (b, 1, t, sz, sz), dtype=torch.uint8, device=dev),
        "perm1": torch.randint(0, 24, (b,), device=dev),
        "perm2": torch.randint(0, 24, (b,), device=dev),
        "study_index": torch.arange(b, device=dev),
    }

    def bare(n: int) -> float:
        ctx.sync()
        t0 = time.perf_counter()
        for _ in range(n):
            with engine.autocast():
                out = task.train_step(batch, engine)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
        ctx.sync()
        return (time.perf_counter() - t0) / n

    n = s["overhead_steps"]
    bare(s["warmup"])  # cudnn autotune, allocator
    bare_s = bare(n)
    engine.fit(task, [batch] * (n + 2), opt, epochs=1)
    ctx.sync()
    prod_s = (events[-1] - events[1]) / (len(events) - 2)
    bare_s2 = bare(n)  # again after, so drift between the two shows
    res.update(
        batch_pairs=b,
        steps=n,
        bare_step_s=round(bare_s, 5),
        bare_step_again_s=round(bare_s2, 5),
        engine_step_s=round(prod_s, 5),
        overhead=round(prod_s / min(bare_s, bare_s2) - 1, 4),
    )


# --------------------------------------------------------------------------- the list
# (name, function, budget in seconds on the GPU, budget in tiny mode); run in this order, the
# compiled modes last (their compile time is the least predictable). The GPU budgets add up to
# more than the 420 s cap on purpose: cases usually end early and the cap cuts the compiled ones
# first. Tiny budgets are loose maxima for a loaded 2-core box (unloaded, all 11 take ~25 s).
CASES: list[tuple[str, Any, float, float]] = [
    ("versions", case_versions, 10, 30),
    ("conv3d_bf16", case_conv3d, 40, 30),
    ("pretrain_b196", _pretrain(0, ["fp32", "default"]), 50, 30),
    ("finetune_b88", _finetune(["fp32", "default"]), 40, 30),
    ("pretrain_b392", _pretrain(1, ["fp32", "default"]), 50, 30),
    ("loader", case_loader, 60, 30),
    ("e2e_pretrain", case_e2e, 45, 30),
    ("eval_blocks", case_eval, 30, 30),
    ("engine_overhead", case_engine_overhead, 25, 30),
    ("pretrain_b196_compile", _pretrain(0, ["compile"]), 90, 30),
    ("finetune_b88_compile", _finetune(["compile"]), 75, 30),
]
