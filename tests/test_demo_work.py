"""`bench/demo_work.py`: the clips a finished demo computed, counted from its run outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from demo_work import demo_work  # noqa: E402
from helpers import make_dataset  # noqa: E402


def _history(path: Path, clips: list[float], seconds: float = 2.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {"epoch": range(1, len(clips) + 1), "clips_per_s": [c / seconds for c in clips],
         "seconds": [seconds] * len(clips)}
    ).to_csv(path, index=False)  # fmt: skip


def _demo(root: Path, pretrain_clips: int, val_clips: int | None) -> Path:
    runs = root / "runs"
    _history(runs / "pretrain/echoclr/history.csv", [pretrain_clips, pretrain_clips])
    run = runs / "sweep/runs/lvh/random/r1_lr0.001_s0"
    _history(run / "history.csv", [32, 32, 16])  # 3 epochs, 80 training clips
    cfg = {"evaluate": {"clips_per_video": 4}, "finetune": {"val_clips": val_clips}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    pd.DataFrame({"video": range(10)}).to_csv(run / "predictions_val_video.csv", index=False)
    pd.DataFrame({"video": range(20)}).to_csv(run / "predictions_test_video.csv", index=False)
    return root


def test_counts_each_stage_and_weights_training(tmp_path):
    w = demo_work(_demo(tmp_path / "a", pretrain_clips=64, val_clips=1))
    assert w["pretrain"] == {"echoclr": 128} and w["runs"] == 1
    assert w["finetune_train"] == 80
    assert w["finetune_val"] == 3 * 10 * 1  # epochs x val videos x val clips
    assert w["final_eval"] == (10 + 20) * 4
    assert w["forward_equivalents"] == 3 * (128 + 80) + 30 + 120
    # val_clips unset: the per-epoch validation uses evaluate.clips_per_video
    assert demo_work(_demo(tmp_path / "b", 64, None))["finetune_val"] == 3 * 10 * 4


def test_cli_prints_one_line_per_demo_and_the_ratio(tmp_path):
    a, b = _demo(tmp_path / "a", 64, 1), _demo(tmp_path / "b", 32, 1)
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/demo_work.py"), str(a), str(b)],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    rows = [json.loads(line) for line in out]
    assert [r.get("root") for r in rows[:2]] == ["a", "b"]
    first, second = rows[0]["forward_equivalents"], rows[1]["forward_equivalents"]
    assert rows[2] == {"ratio_to_first": [1.0, round(second / first, 3)]} and second < first


@pytest.mark.parametrize("speed", [1.0, 4.0])
def test_square_control_moves_at_most_speed_px_per_frame(speed):
    """bench/frame_order.py square --speed: the square's centre moves at most ``speed`` px per
    frame along each axis (+1 for rounding to pixels), and the faster control moves further."""
    import itertools

    from frame_order import square_clips

    x, y = square_clips(np.random.default_rng(0), 64, speed)
    perms = list(itertools.permutations(range(4)))
    steps = []
    for clip, target in zip(x[:, 0], y, strict=True):
        order = np.argsort(perms[target])  # shown frame index of true time 0, 1, 2, 3
        centres = np.array([np.argwhere(clip[t]).mean(0) for t in order])  # (4, 2)
        steps.append(np.abs(np.diff(centres, axis=0)).max())
    assert max(steps) <= speed + 1
    assert (max(steps) > 2) == (speed > 2)


@pytest.mark.slow
def test_frame_order_bench_runs_each_measurement(tmp_path):
    """bench/frame_order.py: the oracle, the reordering-only training and the moving-square
    control each print their JSON lines (smoke sizes)."""
    data = make_dataset(tmp_path, n_studies=6, size=32)
    script = str(ROOT / "bench/frame_order.py")

    def run(*args: str) -> list[dict]:
        out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
        return [json.loads(line) for line in out.splitlines()]

    oracle = run("oracle", "--data", str(data), "--strides", "1,2")
    assert [r["stride"] for r in oracle] == [1, 2] and all(
        0 <= r["order_up_to_reversal"] <= 1 for r in oracle
    )
    train = run("train", "--data", str(data), "--steps", "50", "--k", "3", "--no-augment",
                "--batch", "2")  # fmt: skip
    assert train[-1]["step"] == 50 and train[-1]["chance"] == round(1 / 6, 3)
    square = run("square", "--steps", "50", "--batch", "2")
    assert square[-1]["step"] == 50 and square[-1]["ceiling"] == 0.5
