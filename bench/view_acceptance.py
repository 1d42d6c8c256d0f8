"""Issue 13 acceptance on a CPU: multi-view synthetic archive -> view model from random init ->
PLAX dataset filtered with it (precision / recall against the true views).

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/view_acceptance.py OUT_DIR [EPOCHS]

Writes OUT_DIR/{raw,data,view_run} and OUT_DIR/acceptance.json; prints the figures
(docs/BENCHMARKS.md, "View model and PLAX filter"). About 1 minute on one CPU core for 30 epochs.
"""

import json
import sys
import time
from pathlib import Path

import pandas as pd

from echoclr_cli.config.load import deep_merge, load_config
from echoclr_cli.config.schema import Config
from echoclr_cli.config.sections import SynthConfig
from echoclr_cli.finetune.run import run_finetune
from echoclr_cli.preprocess.view_filter import preprocess_with_view_filter
from echoclr_cli.synth import archive as synth

root = Path(sys.argv[1])
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 30
root.mkdir(parents=True, exist_ok=True)
t0 = time.time()
cfg = Config()
cfg.synth = SynthConfig(studies=60, seed=0, height=96, width=128, min_frames=16, max_frames=20,
                        views=["plax", "psax", "a4c", "a2c"], workers=1, extras=False)  # fmt: skip
cfg.preprocess.size, cfg.preprocess.workers, cfg.preprocess.salt = 32, 1, "accept"
cfg.runtime.workers = 0
if not (root / "raw" / "synth.json").exists():
    synth.synthesize(cfg, root / "raw")
res, _ = preprocess_with_view_filter(cfg, root / "raw", root / "data")  # every view
print(f"preprocess: {res.n_videos} videos, {res.split_sizes} ({time.time() - t0:.0f} s)")
ft = load_config(profile="demo", overrides=deep_merge({}, {
    "model": {"width": 0.25}, "runtime": {"device": "cpu", "workers": 0},
    "preprocess": {"size": 32},
    "finetune": {"task": "view", "init": "random", "epochs": epochs, "batch_size": 16,
                 "clip_len": 4, "stride": 2, "monitor": "val_auroc", "patience": 0},
    "evaluate": {"bootstrap": 200, "clips_per_video": 2}}))  # fmt: skip
run = run_finetune(ft, root / "data", root / "view_run", overwrite=True)
print(f"view model: best epoch {run.best_epoch} ({time.time() - t0:.0f} s)")
for split in ("val", "test", "ext_test"):
    v = run.metrics[split]["video"]
    print(split, {k: (round(v[k]["value"], 4), round(v[k]["ci_low"], 4), round(v[k]["ci_high"], 4))
                  for k in ("accuracy", "balanced_accuracy", "auroc")})  # fmt: skip
full = pd.read_csv(root / "data" / "manifest.csv", keep_default_na=False)
cfg.preprocess.view_model, cfg.preprocess.keep_view, cfg.preprocess.view_clips = (
    root / "view_run", "plax", 2)  # fmt: skip
res, vf = preprocess_with_view_filter(cfg, root / "raw", root / "data")  # reuses the videos
kept = pd.read_csv(root / "data" / "manifest.csv", keep_default_na=False)
print(f"filter: {vf} ({time.time() - t0:.0f} s)")
out = {}
parts = {
    "all": full,
    "held_out": full[full["split"] != "train"],
    "test": full[full["split"] == "test"],
}
for name, part in parts.items():
    k = kept[kept["video_id"].isin(part["video_id"])]
    tp, n_plax = int((k["view"] == "plax").sum()), int((part["view"] == "plax").sum())
    out[name] = {"videos": len(part), "true_plax": n_plax, "kept": len(k),
                 "precision": tp / max(len(k), 1), "recall": tp / max(n_plax, 1)}  # fmt: skip
print("plax filter:", json.dumps(out))
summary = {"view_model": {s: run.metrics[s]["video"] for s in ("val", "test", "ext_test")},
           "plax_filter": out, "filter": vf.__dict__, "epochs": epochs}  # fmt: skip
(root / "acceptance.json").write_text(json.dumps(summary, indent=1, default=str))
