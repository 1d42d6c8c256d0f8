"""What a finished demo computed: clips through the model, per stage, from its run outputs.

    python bench/demo_work.py DEMO_ROOT [DEMO_ROOT ...]

Machine-independent, so two demos (e.g. before and after a profile change) compare exactly,
whatever else shared the machine while they ran. Per demo root, one JSON line:

- ``pretrain``: training clips per method = sum over epochs of ``clips_per_s * seconds``
  (history.csv; each pair is two clips);
- ``finetune_train``: the same over every sweep run's history.csv;
- ``finetune_val``: per-epoch validation clips = epochs run x val videos x ``finetune.val_clips``
  (0 = ``evaluate.clips_per_video``);
- ``final_eval``: rows of every ``predictions_*_video.csv`` x ``evaluate.clips_per_video`` (the clips
  each evaluated video contributes);
- ``train_seconds``: the seconds the histories report (training steps only).

``forward_equivalents`` weights a training clip as 3 forward passes (forward + backward ~ 2x
forward) and an evaluation clip as 1; divide it by a machine's inference clips/s for a rough
time, or compare the two counts directly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import yaml

TRAIN_WEIGHT = 3


def _history_clips(path: Path) -> tuple[float, float, int]:
    h = pd.read_csv(path)
    return float((h["clips_per_s"] * h["seconds"]).sum()), float(h["seconds"].sum()), len(h)


def _run_config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def demo_work(root: Path) -> dict:
    runs = root / "runs"
    out: dict = {"root": root.name, "pretrain": {}, "runs": 0}
    seconds = 0.0
    for hist in sorted((runs / "pretrain").glob("*/history.csv")):
        clips, sec, _ = _history_clips(hist)
        out["pretrain"][hist.parent.name] = round(clips)
        seconds += sec
    ft_train = ft_val = final = 0.0
    for hist in sorted((runs / "sweep" / "runs").glob("*/*/*/history.csv")):
        run = hist.parent
        cfg = _run_config(run)
        clips, sec, epochs = _history_clips(hist)
        ft_train += clips
        seconds += sec
        n_eval = int(cfg["evaluate"]["clips_per_video"])  # "all" is not used by the demo
        val_clips = int(cfg["finetune"].get("val_clips") or 0) or n_eval
        val = run / "predictions_val_video.csv"
        n_val = len(pd.read_csv(val)) if val.exists() else 0
        ft_val += epochs * n_val * val_clips
        final += sum(len(pd.read_csv(p)) for p in run.glob("predictions_*_video.csv")) * n_eval
        out["runs"] += 1
    out |= {
        "pretrain_total": round(sum(out["pretrain"].values())),
        "finetune_train": round(ft_train),
        "finetune_val": round(ft_val),
        "final_eval": round(final),
        "train_seconds": round(seconds, 1),
    }
    train = out["pretrain_total"] + out["finetune_train"]
    out["forward_equivalents"] = round(TRAIN_WEIGHT * train + ft_val + final)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+", type=Path)
    args = ap.parse_args()
    rows = [demo_work(r) for r in args.roots]
    for row in rows:
        print(json.dumps(row))
    if len(rows) > 1:
        base = rows[0]["forward_equivalents"]
        print(
            json.dumps(
                {"ratio_to_first": [round(r["forward_equivalents"] / base, 3) for r in rows]}
            )
        )


if __name__ == "__main__":
    main()
