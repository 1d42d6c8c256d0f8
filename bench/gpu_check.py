"""GPU check runner: every case of bench/gpu_cases.py in order, each under its own time budget,
``--out`` (gpu_check.json) rewritten after every case. Called by bench/gpu_check.sh, which
installs the carried wheels, sets the hard cap and re-launches this script with ``--continue``
if the process dies inside a case.

    python bench/gpu_check.py --out OUT/gpu_check.json [--tiny] [--deadline EPOCH_S]
                              [--only a,b] [--device cuda] [--continue]

Each case ends with a status: ``ok``; ``failed`` (any exception: type, message and the last
traceback lines are kept, the next case runs); ``timeout`` (its budget ran out: what it had
measured is kept); ``skipped`` (no time left before the deadline, or not in --only);
``crashed`` (the process died inside it; written by the next launch); ``partial`` (the case
stopped itself before its budget ran out and reports the part it measured). ``summary`` compares the
figures with the PERF.md targets (GPU runs only; a tiny CPU run is a smoke test).

Failure injection (tests): ``ECHOCLR_GPU_CHECK_FAIL=case[,case]`` raises in those cases,
``ECHOCLR_GPU_CHECK_CRASH=case`` kills the process (os._exit) inside that case,
``ECHOCLR_GPU_CHECK_HANG=case`` sleeps in it (its budget stops it), ``=case:hard`` sleeps with
the budget's alarm blocked (a native hang: only the hard cap of gpu_check.sh stops it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TARGETS = {  # docs/PERF.md
    "pretrain_default_vs_fp32": (">=", 2.5),
    "pretrain_clips_per_s": (">=", 4500),
    "finetune_clips_per_s": (">=", 1200),
    "gpu_idle_share": ("<=", 0.05),
    "pretrain_b196_peak_gib": ("<=", 24),
    "finetune_b88_peak_gib": ("<=", 10),
}
MIN_CASE_S = 3.0  # a case with less time than this left before the deadline is skipped


class CaseTimeout(Exception):
    pass


ALARM = {"fired": False}


def _alarm(signum, frame):  # noqa: ARG001
    ALARM["fired"] = True
    raise CaseTimeout("the case ran out of its time budget")


def clean(x):
    """JSON-safe: NaN/inf -> None, tuples -> lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [clean(v) for v in x]
    return x


def write_json(path: Path, doc: dict) -> None:
    """Atomic rewrite (a kill between cases never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".gpu_check.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(clean(doc), f, indent=1)
    os.replace(tmp, path)


def _get(doc: dict, *keys):
    cur = doc["cases"]
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return cur


def summary(doc: dict) -> dict:
    """The figures the PERF.md targets are about, each with its target and pass/fail."""
    best_pre = max(
        (
            v
            for v in (
                _get(doc, c, "result", m, "clips_per_s")
                for c in ("pretrain_b196", "pretrain_b392", "pretrain_b196_compile")
                for m in ("default", "compile")
            )
            if v
        ),
        default=None,
    )
    best_ft = max(
        (
            v
            for v in (
                _get(doc, c, "result", m, "clips_per_s")
                for c in ("finetune_b88", "finetune_b88_compile")
                for m in ("default", "compile")
            )
            if v
        ),
        default=None,
    )
    fp32 = _get(doc, "pretrain_b196", "result", "fp32", "clips_per_s")
    best_b196 = max(
        (
            v
            for v in (
                _get(doc, "pretrain_b196", "result", "default", "clips_per_s"),
                _get(doc, "pretrain_b196_compile", "result", "compile", "clips_per_s"),
            )
            if v
        ),
        default=None,
    )
    figures = {
        "pretrain_default_vs_fp32": round(best_b196 / fp32, 2) if best_b196 and fp32 else None,
        "pretrain_clips_per_s": best_pre,
        "finetune_clips_per_s": best_ft,
        "gpu_idle_share": _get(doc, "e2e_pretrain", "result", "data_wait_share"),
        "pretrain_b196_peak_gib": _get(doc, "pretrain_b196", "result", "default", "peak_gib"),
        "finetune_b88_peak_gib": _get(doc, "finetune_b88", "result", "default", "peak_gib"),
    }
    out: dict = {}
    for k, v in figures.items():
        op, target = TARGETS[k]
        ok = None if v is None else (v >= target if op == ">=" else v <= target)
        out[k] = {"value": v, "target": f"{op} {target}", "met": ok}
    if doc.get("tiny"):
        out["note"] = "CPU tiny smoke run: the targets apply to the GPU run only"
        for k in figures:
            out[k]["met"] = None
    out["statuses"] = {n: c.get("status") for n, c in doc["cases"].items()}
    return out


def finalize(path: Path, why: str) -> None:
    """After the hard cap killed the run: the running case -> timeout, pending -> skipped."""
    if not path.exists():
        return
    doc = json.loads(path.read_text())
    for c in doc.get("cases", {}).values():
        if c.get("status") == "running":
            c.update(status="timeout", error=why)
        elif c.get("status") == "pending":
            c.update(status="skipped", reason=why)
    doc["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    doc["summary"] = summary(doc)
    write_json(path, doc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tiny", action="store_true", help="same cases, CPU smoke-test sizes")
    ap.add_argument("--deadline", type=float, default=None, help="epoch seconds of the hard cap")
    ap.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    ap.add_argument("--only", default=None, help="comma-separated case names")
    ap.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="CASE=SECONDS",
        help="override a case's time budget (repeatable)",
    )
    ap.add_argument("--continue", dest="cont", action="store_true", help="keep finished cases")
    ap.add_argument("--finalize", default=None, help="mark an interrupted JSON (reason)")
    args = ap.parse_args()
    if args.finalize:
        finalize(args.out, args.finalize)
        return 0

    import torch
    from gpu_cases import CASES, FULL, TINY, Ctx

    names = [c[0] for c in CASES]
    only = set(args.only.split(",")) if args.only else None
    if only and only - set(names):
        print(f"unknown case(s) {sorted(only - set(names))}; known: {names}", file=sys.stderr)
        return 2
    try:
        budgets = {k: float(v) for k, v in (b.split("=", 1) for b in args.budget)}
    except ValueError:
        print("--budget takes CASE=SECONDS", file=sys.stderr)
        return 2
    if set(budgets) - set(names):
        print(f"--budget: unknown case(s) {sorted(set(budgets) - set(names))}", file=sys.stderr)
        return 2
    fail = set(filter(None, os.environ.get("ECHOCLR_GPU_CHECK_FAIL", "").split(",")))
    crash = os.environ.get("ECHOCLR_GPU_CHECK_CRASH", "")
    hang, _, hard = os.environ.get("ECHOCLR_GPU_CHECK_HANG", "").partition(":")
    deadline = args.deadline or (time.time() + (110 if args.tiny else 420))
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --tiny (CPU sizes) or --device cpu", file=sys.stderr)
    if args.tiny:
        torch.set_num_threads(min(2, os.cpu_count() or 1))

    doc: dict = {}
    if args.cont and args.out.exists():
        doc = json.loads(args.out.read_text())
        for c in doc.get("cases", {}).values():
            if c.get("status") == "running":
                c["status"] = "crashed"
                c["error"] = "the process died inside this case (killed or a native crash)"
        doc["launches"] = doc.get("launches", 1) + 1
    if not doc:
        doc = {
            "check": "echoclr gpu_check",
            "tiny": args.tiny,
            "device": str(device),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "deadline_in_s": round(deadline - time.time(), 1),
            "launches": 1,
            "cases": {n: {"status": "pending"} for n in names},
        }
    write_json(args.out, doc)
    work = Path(tempfile.mkdtemp(prefix="echoclr_gpu_check_"))
    ctx = Ctx(device=device, tiny=args.tiny, sizes=TINY if args.tiny else FULL, work=work)
    signal.signal(signal.SIGALRM, _alarm)
    for name, fn, budget_full, budget_tiny in CASES:
        case = doc["cases"].setdefault(name, {"status": "pending"})
        if case["status"] != "pending":
            continue  # finished in an earlier launch
        if only is not None and name not in only:
            case.update(status="skipped", reason="not in --only")
            continue
        left = deadline - time.time()
        if left < MIN_CASE_S:
            case.update(status="skipped", reason=f"no time left before the hard cap ({left:.0f} s)")
            write_json(args.out, doc)
            continue
        budget = budgets.get(name, budget_tiny if args.tiny else budget_full)
        budget = min(budget, left)
        res: dict = {}
        case.update(status="running", budget_s=round(budget, 1), doc=(fn.__doc__ or "").strip())
        write_json(args.out, doc)
        ctx.deadline = time.time() + budget
        t0 = time.perf_counter()
        ALARM["fired"] = False
        signal.setitimer(signal.ITIMER_REAL, budget + 2.0)  # cooperative checks come first
        try:
            if name in fail:
                raise RuntimeError(f"injected failure (ECHOCLR_GPU_CHECK_FAIL={name})")
            if name == crash:
                os._exit(3)
            if name == hang:
                if hard:
                    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
                time.sleep(10_000)
            fn(ctx, res)
            status = "partial" if res.get("cut_short") else "ok"
        except CaseTimeout as e:
            status, case["error"] = "timeout", str(e)
        except Exception as e:  # one failing case never stops the others
            if ALARM["fired"]:  # the budget's alarm, surfacing as another exception
                status, case["error"] = "timeout", f"ran out of its time budget ({e!r})"[:1000]
            else:
                status = "failed"
                case["error"] = f"{type(e).__name__}: {e}"[:1000]
            case["traceback"] = traceback.format_exc().strip().splitlines()[-8:]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        case.update(status=status, seconds=round(time.perf_counter() - t0, 2), result=res)
        try:
            ctx.cleanup()
        except Exception:  # noqa: BLE001  (a broken CUDA context must not stop the JSON)
            pass
        doc["summary"] = summary(doc)
        write_json(args.out, doc)
        print(json.dumps({"case": name, "status": status, "seconds": case["seconds"]}), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    doc["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    doc["summary"] = summary(doc)
    write_json(args.out, doc)
    print(json.dumps({"summary": clean(doc["summary"])}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
