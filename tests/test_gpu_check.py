"""`bash bench/gpu_check.sh --tiny`: the GPU check's cases at CPU smoke sizes, with one case made
to fail, one to crash the process and one to hang, so the JSON shows each recorded while the
others still ran. (The real run needs a GPU; see docs/BENCHMARKS.md.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from gpu_cases import CASES  # noqa: E402

NAMES = [c[0] for c in CASES]


def _run(out: Path, timeout: float, *args: str, **env_extra: str) -> tuple[int, str, float]:
    env = dict(os.environ, OUT=str(out), OMP_NUM_THREADS="1", PYTHON=sys.executable, **env_extra)
    for k in ("ECHOCLR_GPU_CHECK_FAIL", "ECHOCLR_GPU_CHECK_CRASH", "ECHOCLR_GPU_CHECK_HANG"):
        if k not in env_extra:
            env.pop(k, None)
    t0 = time.perf_counter()
    res = subprocess.run(
        ["nice", "-n", "10", "bash", "bench/gpu_check.sh", "--tiny", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return res.returncode, res.stdout + res.stderr, time.perf_counter() - t0


def test_tiny_subset_records_a_failed_case_and_runs_the_next(tmp_path):
    """Fast variant: two cases, the first made to fail; the one after it still runs. (The
    engine-overhead case is timing-sensitive on a loaded machine: the slow whole-run test has it.)"""
    only = "pretrain_b196,eval_blocks"
    # eval_blocks' tiny budget (30 s) is a GPU-node figure; a loaded 2-core CI machine once
    # needed more, so the test gives it room (what is tested is that it runs after a failure)
    rc, log, seconds = _run(
        tmp_path,
        240,
        "--only",
        only,
        "--budget",
        "eval_blocks=150",
        ECHOCLR_GPU_CHECK_FAIL="pretrain_b196",
    )
    assert rc == 0, log
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    cases = doc["cases"]
    assert list(cases) == NAMES  # every case has a status
    assert cases["pretrain_b196"]["status"] == "failed"
    assert cases["pretrain_b196"]["error"].startswith("RuntimeError: injected failure")
    assert cases["eval_blocks"]["status"] == "ok", cases["eval_blocks"]
    ev = cases["eval_blocks"]["result"]
    assert ev["block_2"]["clips"] == ev["block_8"]["clips"] > 0
    assert ev["block_2"]["forwards"] > ev["block_8"]["forwards"]
    for n in NAMES:
        if n not in only.split(","):
            assert cases[n] == {"status": "skipped", "reason": "not in --only"}
    assert doc["summary"]["statuses"]["pretrain_b196"] == "failed"
    print(f"tiny gpu_check subset: {seconds:.1f} s")


@pytest.mark.slow
def test_tiny_check_records_failed_crashed_and_hung_cases(tmp_path):
    """The whole tiny check, with one case failing, one crashing the process (re-launched with
    --continue) and one hanging (stopped by its budget)."""
    rc, log, seconds = _run(
        tmp_path,
        300,
        "--budget",
        "finetune_b88_compile=2",
        ECHOCLR_GPU_CHECK_FAIL="eval_blocks",
        ECHOCLR_GPU_CHECK_CRASH="pretrain_b392",
        ECHOCLR_GPU_CHECK_HANG="finetune_b88_compile",
    )
    assert rc == 0, log
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    cases = doc["cases"]
    assert list(cases) == NAMES
    assert doc["tiny"] is True and doc["device"] == "cpu" and "finished" in doc
    assert doc["launches"] == 2  # the crash was survived by a second launch
    assert cases["eval_blocks"]["status"] == "failed"
    assert "injected failure" in cases["eval_blocks"]["error"]
    assert cases["eval_blocks"]["traceback"]
    assert cases["pretrain_b392"]["status"] == "crashed"
    assert cases["finetune_b88_compile"]["status"] == "timeout"
    assert cases["finetune_b88_compile"]["seconds"] < 10
    others = [n for n in NAMES if n not in ("eval_blocks", "pretrain_b392", "finetune_b88_compile")]
    for n in others:  # every other case ran, including those after the failures; conv3d may
        # stop itself early on a loaded machine (partial: the layers it measured)
        assert cases[n]["status"] in (("ok", "partial") if n == "conv3d_bf16" else ("ok",)), (
            n,
            cases[n],
        )
    r = {n: cases[n]["result"] for n in others}
    assert r["versions"]["torch"] and r["versions"]["device"] == "cpu"
    conv = r["conv3d_bf16"]
    assert conv["layers_measured"] == len(conv["layers"]) > 3 and conv["correct"] is True
    if cases["conv3d_bf16"]["status"] == "ok":
        assert {(row["arch"], row["frames"]) for row in conv["layers"]} == {
            ("r3d_18", 4),
            ("r2plus1d_18", 4),
            ("r3d_18", 8),
        }
    for mode in ("fp32", "default"):
        assert r["pretrain_b196"][mode]["clips_per_s"] > 0
        assert r["finetune_b88"][mode]["clips_per_s"] > 0
    assert r["pretrain_b196_compile"]["compile"]["clips_per_s"] > 0
    for w in (1, 2, 3):
        lw = r["loader"][f"workers_{w}"]
        assert lw["pairs_per_s"] > 0 and lw["batches_drained"] == 4 * w + 1
    e2e = r["e2e_pretrain"]
    assert e2e["timed_steps"] > 0 and 0 <= e2e["data_wait_share"] < 1
    assert r["engine_overhead"]["engine_step_s"] > 0 and r["engine_overhead"]["bare_step_s"] > 0
    s = doc["summary"]
    assert "tiny" in s["note"] and s["pretrain_clips_per_s"]["met"] is None
    assert s["statuses"]["eval_blocks"] == "failed"
    print(f"tiny gpu_check with injected failures: {seconds:.1f} s")


@pytest.mark.slow
def test_hard_cap_stops_a_native_hang_and_keeps_the_json(tmp_path):
    """A hang the case budget cannot interrupt: the shell's hard cap kills it, exit 124, and
    the JSON says which case was stopped and which were never reached."""
    rc, log, seconds = _run(
        tmp_path, 120, "--only", "versions,engine_overhead", GPU_CHECK_CAP_S="30",
        ECHOCLR_GPU_CHECK_HANG="engine_overhead:hard",
    )  # fmt: skip
    assert rc == 124, log
    assert seconds < 60
    cases = json.loads((tmp_path / "gpu_check.json").read_text())["cases"]
    assert cases["versions"]["status"] == "ok"
    assert cases["engine_overhead"]["status"] == "timeout"
    assert "hard cap" in cases["engine_overhead"]["error"]
    assert cases["conv3d_bf16"]["status"] == "skipped"  # not in --only
    assert cases["pretrain_b196_compile"]["status"] == "skipped"  # never reached
