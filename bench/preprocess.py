"""Preprocess benchmark: videos/s with 1 vs 2 workers, peak RSS with 100 vs 1,000 videos.

Generates its own input: small echo-like AVIs (fan of speckle, burned-in text, ECG cursor),
``--distinct`` different clips hard-linked under many names (decoding work is the same per
name). Each measurement runs ``echoclr_cli.preprocess.run.preprocess`` in a fresh subprocess and
reads ``ru_maxrss`` of that process and the peak RSS (``VmHWM`` in /proc, sampled every 50 ms)
of its worker processes. Prints one JSON line per
result. Usage: ``python bench/preprocess.py [--small 100] [--large 1000] [--tmp DIR]``.

``--resume N`` measures the journal instead (issue 14): a full run of an N-video archive, a run
killed (SIGKILL, through the test-only kill switch) once N/2 files are journaled then re-run,
and a no-op re-run; prints re-run / full and no-op / full and whether the manifests are
byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np


def clip(seed: int, n: int, h: int, w: int) -> np.ndarray:
    """(n, h, w, 3) uint8 RGB: speckle fan + moving band, text and ECG cursor outside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot(xx - w / 2, yy - 2)
    fan = (r < 0.8 * h) & (np.abs(np.degrees(np.arctan2(xx - w / 2, yy - 2))) < 38)
    out = np.zeros((n, h, w, 3), np.uint8)
    for t in range(n):
        img = rng.uniform(20, 150, (h, w)).astype(np.float32)
        img[np.abs(yy - (0.4 + 0.15 * np.sin(t / 4)) * h) < 5] = 220
        g = np.where(fan, img, 0).astype(np.uint8)
        f = np.repeat(g[..., None], 3, axis=-1)
        cv2.putText(f, "ID 1234 2019", (2, 12), cv2.FONT_HERSHEY_PLAIN, 0.8, (230, 230, 230), 1)
        f[h - 8, 10 : w - 10] = (0, 200, 80)
        f[h - 14 : h - 2, 10 + (t * 4) % (w - 20)] = (255, 255, 0)
        out[t] = f
    return out


def make_input(root: Path, n_videos: int, distinct: int, frames: int, h: int, w: int) -> None:
    src = root / "_src"
    src.mkdir(parents=True, exist_ok=True)
    for k in range(distinct):
        p = src / f"{k}.avi"
        if not p.exists():
            wr = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (w, h))
            for f in clip(k, frames, h, w):
                wr.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
            wr.release()
    for i in range(n_videos):
        dst = root / "videos" / f"P{i // 2:05d}" / f"S{i // 2:05d}" / f"v{i % 2}.avi"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.link(src / f"{i % distinct}.avi", dst)


def _descendants(root: int) -> list[int]:
    """Pids below ``root`` (workers live under the forkserver, not under us directly)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def _hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_s(pid: int) -> float:
    """user + system CPU seconds of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class PeakSampler(threading.Thread):
    """Every 50 ms: peak RSS (VmHWM) of every descendant process; keeps the max per pid."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[int, float] = {}
        self.cpu: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            for pid in _descendants(os.getpid()):
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), _hwm_mb(pid))
                self.cpu[pid] = max(self.cpu.get(pid, 0.0), _cpu_s(pid))


def child(args: argparse.Namespace) -> None:
    from echoclr_cli.config.schema import Config
    from echoclr_cli.preprocess.run import preprocess

    cfg = Config()
    cfg.preprocess.workers = args.workers
    cfg.preprocess.min_frames = 8
    cfg.preprocess.salt = "bench"  # same ids in every output dir: manifests can be compared
    start = resource.getrusage(resource.RUSAGE_SELF)  # imports are not preprocessing work
    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    res = preprocess(cfg, Path(args.input), Path(args.out))
    dt = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    own = resource.getrusage(resource.RUSAGE_SELF)
    me = own.ru_maxrss / 1024
    cpu = own.ru_utime + own.ru_stime - start.ru_utime - start.ru_stime + sum(sampler.cpu.values())
    kids = max(
        [resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, *sampler.peaks.values()]
    )
    print(json.dumps({"videos": res.n_videos, "seconds": round(dt, 3),
                      "videos_per_s": round(res.n_videos / dt, 2), "parent_rss_mb": round(me, 1),
                      "worker_rss_mb": round(kids, 1), "cpu_s": round(cpu, 2),
                      "cpu_ms_per_video": round(1000 * cpu / max(1, res.n_videos), 1)}))  # fmt: skip


def run_child(inp: Path, out: Path, workers: int, fresh: bool = True, env=None) -> dict:
    if fresh and out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, __file__, "--child", "--input", str(inp), "--out", str(out),
           "--workers", str(workers)]  # fmt: skip
    res = subprocess.run(cmd, check=env is None, capture_output=True, text=True, env=env)
    if env is not None:  # the killed run: no result line
        return {"returncode": res.returncode}
    return json.loads(res.stdout.strip().splitlines()[-1])


def resume(args: argparse.Namespace, tmp: Path) -> None:
    """Full run vs re-run after a kill -9 at ~50% vs no-op re-run, same archive and workers."""
    from echoclr_cli.preprocess.journal import KILL_AFTER_ENV

    n = args.resume
    arch = tmp / "resume"
    make_input(arch, n, args.distinct, args.frames, args.height, args.width)
    full = run_child(arch / "videos", tmp / "full", args.workers)
    env = {**os.environ, KILL_AFTER_ENV: str(n // 2)}
    killed = run_child(arch / "videos", tmp / "killed", args.workers, env=env)
    rerun = run_child(arch / "videos", tmp / "killed", args.workers, fresh=False)
    noop = run_child(arch / "videos", tmp / "killed", args.workers, fresh=False)
    same = (tmp / "full" / "manifest.csv").read_bytes() == (
        tmp / "killed" / "manifest.csv"
    ).read_bytes()
    print(json.dumps({"bench": "preprocess_resume", "n_videos": n, "workers": args.workers,
                      "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0],
                      "frames": args.frames, "raw_size": f"{args.height}x{args.width}",
                      "killed_after": n // 2, "killed_returncode": killed["returncode"],
                      "full_s": full["seconds"], "rerun_after_kill_s": rerun["seconds"],
                      "noop_rerun_s": noop["seconds"],
                      "rerun_over_full": round(rerun["seconds"] / full["seconds"], 3),
                      "noop_over_full": round(noop["seconds"] / full["seconds"], 3),
                      "manifest_byte_identical": same,
                      "targets": {"rerun_over_full": "<= 0.6", "noop_over_full": "<= 0.05"}}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--input")
    ap.add_argument("--out")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--large", type=int, default=1000)
    ap.add_argument("--distinct", type=int, default=20)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--resume", type=int, default=0,
                    help="measure kill -9 / re-run / no-op re-run on an archive of N videos")  # fmt: skip
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="echoclr_bench_pp_"))
    if args.resume:
        resume(args, tmp)
        if not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    small, large = tmp / "small", tmp / "large"
    make_input(small, args.small, args.distinct, args.frames, args.height, args.width)
    make_input(large, args.large, args.distinct, args.frames, args.height, args.width)
    common = {"bench": "preprocess", "cpus": os.cpu_count(), "frames": args.frames,
              "raw_size": f"{args.height}x{args.width}", "load_avg": os.getloadavg()[0]}  # fmt: skip
    one = run_child(small / "videos", tmp / "out1", 1)
    two = run_child(small / "videos", tmp / "out2", 2)
    print(json.dumps({**common, "metric": "throughput", "n_videos": args.small, "workers_1": one,
                      "workers_2": two, "speedup_2_vs_1": round(two["videos_per_s"] / one["videos_per_s"], 2),
                      # what 2 idle cores would give: 2 x (CPU per video, 1 worker / 2 workers)
                      "cpu_bound_speedup_2_vs_1": round(2 * one["cpu_ms_per_video"] / two["cpu_ms_per_video"], 2),
                      "target": ">= 1.8"}))  # fmt: skip
    big = run_child(large / "videos", tmp / "out3", 2)
    print(json.dumps({**common, "metric": "peak_rss", "workers": 2, "small": {"n_videos": args.small, **two},
                      "large": {"n_videos": args.large, **big},
                      "parent_rss_ratio": round(big["parent_rss_mb"] / two["parent_rss_mb"], 3),
                      "worker_rss_ratio": round(big["worker_rss_mb"] / max(two["worker_rss_mb"], 1e-9), 3),
                      "target": "flat (ratio ~1)"}))  # fmt: skip
    if not args.tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
