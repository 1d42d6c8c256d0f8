"""`bench/demo_choices.py` (issue 24 point 6): options are chosen on validation AUROC; the test
split is read once, for the chosen profile only."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import demo_choices  # noqa: E402

INITS = ("random", "echoclr")


def _metrics(path: Path, val: float, test: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    level = lambda v: {"study": {"auroc": {"value": v}}}  # noqa: E731
    path.write_text(json.dumps({"val": level(val), "test": level(test)}))


def _sweep(sweep: Path, val: dict[str, float], test: dict[str, float]) -> Path:
    rows = []
    for init in INITS:
        for seed in (0, 1):
            run = f"runs/lvh/{init}/r0.05_lr0.001_s{seed}"
            _metrics(sweep / run / "metrics.json", val[init] + seed / 100, test[init])
            rows.append({"init": init, "ratio": 0.05, "seed": seed, "run_dir": run})
    pd.DataFrame(rows).to_csv(sweep / "selection.csv", index=False)
    return sweep


def _demo(root: Path) -> Path:
    sweep = _sweep(root / "runs" / "sweep", {"random": 0.6, "echoclr": 0.8},
                   {"random": 0.5, "echoclr": 0.7})  # fmt: skip
    cfg = {"sweep": {"ratios": [0.05, 1.0], "seeds": [0], "low_ratio_seeds": [0, 1],
                     "inits": list(INITS)},
           "finetune": {"early_stop": "published", "label_smoothing": 0.0},
           "evaluate": {"clip_starts": "published", "scaling": "video"},
           "pretrain": {"view_forward": "separate"}}  # fmt: skip
    (sweep / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    (root / "data").mkdir()
    (root / "data" / "dataset.json").write_text(
        json.dumps({"size": 64, "config": {"resize": "whole_frame", "split": [0.6, 0.15, 0.25]}})
    )
    return root


def test_choices_are_made_on_validation_and_test_is_read_for_the_chosen_profile(
    tmp_path, monkeypatch
):
    root = _demo(tmp_path / "demo")
    calls: list[list[str]] = []
    # a variant's validation beats the profile for label smoothing only; its test would lose
    better_val = {"random": 0.7, "echoclr": 0.9}

    def fake_run(args: list[str]) -> None:
        calls.append(args)
        if args[0] == "evaluate":  # evaluation variants: validation only, worse than the profile
            run, name = Path(args[1]), args[args.index("--name") + 1]
            split = args[args.index("--split") + 1]
            assert split == "val" or name == "choice_test"  # test only for the chosen profile
            _metrics(run / "eval" / name / "metrics.json", 0.1, 0.3)
        elif args[0] == "sweep":
            sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
            out = Path(args[args.index("--out") + 1])
            if "finetune.label_smoothing=0.1" in sets:
                _sweep(out, better_val, {"random": 0.11, "echoclr": 0.12})
            else:
                _sweep(out, {"random": 0.5, "echoclr": 0.5}, {"random": 0.99, "echoclr": 0.99})

    monkeypatch.setattr(demo_choices, "_run", fake_run)
    ch = demo_choices.Choices(root)
    assert ch.other("finetune.label_smoothing") == 0.1 and ch.other("preprocess.resize") == (
        "sector_crop"
    )
    ch.demo()
    ch.eval()
    ch.finetune()
    assert {r["split"] for r in ch.rows} == {"val"}
    assert ch.rows[0]["random"] == "0.605 ± 0.007"  # the profile's validation values
    assert ch.chosen() == ["finetune.label_smoothing=0.1"]  # the only variant beating val
    n_calls = len(calls)
    test = ch.final_test(ch.chosen())
    # one trained option chosen: its variant's runs are the chosen profile, nothing is retrained
    assert test == {"random": [0.11, 0.11], "echoclr": [0.12, 0.12]}
    assert len(calls) == n_calls
    # two trained options: a run of the chosen profile under choices/chosen
    two = ["finetune.label_smoothing=0.1", "finetune.early_stop=ours"]
    assert ch.final_test(two) == {"random": [0.11, 0.11], "echoclr": [0.12, 0.12]}
    final = calls[-1]
    assert final[0] == "sweep" and all(s in final for s in two)
    assert str(root / "choices" / "chosen") in final[final.index("--out") + 1]
    # evaluation options only: the demo's runs evaluated again, on test, with those options
    n_calls = len(calls)
    only_eval = ["evaluate.scaling=clip"]
    assert ch.final_test(only_eval) == {"random": [0.3, 0.3], "echoclr": [0.3, 0.3]}
    assert [c[0] for c in calls[n_calls:]] == ["evaluate"] * 4
    assert all(c[c.index("--name") + 1] == "choice_test" for c in calls[n_calls:])
    # nothing chosen: the demo's own runs give the one test figure
    assert ch.final_test([]) == {"random": [0.5, 0.5], "echoclr": [0.7, 0.7]}
    # a re-run of the bench reuses the finished evaluations (newer than the run's checkpoint)
    for run in root.glob("runs/sweep/runs/lvh/*/*"):
        (run / "checkpoints").mkdir(exist_ok=True)
        (run / "checkpoints" / "best.pt").write_bytes(b"")
        os.utime(run / "checkpoints" / "best.pt", (1e9, 1e9))  # written before the evaluations
    n_calls = len(calls)
    ch.eval()
    assert len(calls) == n_calls


def test_the_preprocess_variant_keeps_the_demo_datasets_size_and_split(tmp_path, monkeypatch):
    """`--input` makes the raw archive a user archive, which gets the paper's size and split
    unless given: the variant passes the demo dataset's own, so only its option changes."""
    root = _demo(tmp_path / "demo")
    calls: list[list[str]] = []
    monkeypatch.setattr(demo_choices, "_run", calls.append)
    demo_choices.Choices(root).preprocess_again(tmp_path / "d", ["preprocess.resize=sector_crop"])
    (args,) = calls
    assert args[args.index("--size") + 1] == "64"
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert sets == ["preprocess.split=[0.6,0.15,0.25]", "preprocess.resize=sector_crop"]
