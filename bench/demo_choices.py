"""The demo with each choice of issue 12's options, chosen on validation (issue 24 point 6).

    python bench/demo_choices.py DEMO_ROOT [--only eval,finetune,pretrain,preprocess]
        [--seeds 0,1,2] [--no-final]

Run after `make demo` (it reuses the demo's raw archive, dataset, pretraining runs and sweep).
Each variant changes ONE option from the demo profile to the other value (the profile's own value
is read from the demo's ``sweep.yaml`` / ``dataset.json``) and is scored at the lowest ratio by
the study-level VALIDATION AUROC (mean ± sd over the sweep's seeds, per init; the choice uses the
mean over every init and seed, each init weighted equally). The test split is never read for a
variant:

- eval (no training; ``echoclr evaluate`` on the demo's finished lowest-ratio runs, val only):
  ``evaluate.clip_starts``, ``evaluate.scaling`` and both together;
- finetune (a lowest-ratio sweep per variant, same pretraining runs):
  ``finetune.early_stop``, ``finetune.label_smoothing``;
- pretrain (pretrain the demo's methods again, then the lowest-ratio sweep):
  ``pretrain.view_forward``;
- preprocess (preprocess the demo's raw archive again, pretrain, lowest-ratio sweep):
  ``preprocess.resize``; ``preprocess.short_videos`` is reported as the number of videos it
  would change (shorter than a fine-tuning clip).

The rule: an option takes the variant's value when the variant's validation mean is higher
than the profile's, else it keeps the profile's. The chosen profile (the profile with every
chosen change) is then the only thing whose test AUROC is printed, once: the demo's own runs when
nothing changes; the demo's runs evaluated on test with the chosen options when only evaluation
options change; the variant's own runs when one trained option changes (they are the chosen
profile); else a lowest-ratio run of the chosen profile (``choices/chosen/``), pretrained again
when a pretraining or preprocessing option changed.

A re-run resumes: finished sweeps, pretraining runs and preprocessing are reused by the commands
themselves, and an ``eval/choice_*`` evaluation newer than its run's checkpoint is reused.

Everything is written under ``DEMO_ROOT/choices/`` (never inside the demo's own runs except the
``eval/choice_*`` folders ``echoclr evaluate`` writes in each run). Prints one JSON line per
variant, a markdown table of the validation values, the choices and the chosen profile's test
values at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import pandas as pd
import yaml

# option -> its two values (published first); a variant sets the one the profile does not use
OPTIONS = {
    "evaluate.clip_starts": ("published", "linspace"),
    "evaluate.scaling": ("video", "clip"),
    "finetune.early_stop": ("published", "ours"),
    "finetune.label_smoothing": (0.0, 0.1),
    "pretrain.view_forward": ("separate", "joint"),
    "preprocess.resize": ("whole_frame", "sector_crop"),
}
PART = {  # which stage an option needs redone
    "evaluate.clip_starts": "eval",
    "evaluate.scaling": "eval",
    "finetune.early_stop": "finetune",
    "finetune.label_smoothing": "finetune",
    "pretrain.view_forward": "pretrain",
    "preprocess.resize": "preprocess",
}
PROFILE = "demo profile (as run by make demo)"


def _run(args: list[str]) -> None:
    """``echoclr ARGS -q`` through the CLI's own code path, in this process (the package is
    imported once for all the bench's commands); a non-zero exit stops the bench."""
    import typer

    from echoclr_cli.cli import app

    os.environ.setdefault("COLUMNS", "120")
    code = typer.main.get_command(app).main([*args, "-q"], standalone_mode=False)
    if code:
        raise SystemExit(f"echoclr {' '.join(args)} exited with {code}")


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def _study_auroc(metrics: Path, split: str) -> float:
    return float(json.loads(metrics.read_text())[split]["study"]["auroc"]["value"])


def _lowest_runs(sweep: Path, seeds: set[int] | None = None) -> dict[str, list[Path]]:
    """Run dirs of the lowest ratio per init (of ``seeds`` only, when given)."""
    sel = pd.read_csv(sweep / "selection.csv")
    low = sel[sel["ratio"] == sel["ratio"].min()]
    if seeds is not None:
        low = low[low["seed"].isin(seeds)]
    out: dict[str, list[Path]] = {}
    for _, r in low.iterrows():
        out.setdefault(str(r["init"]), []).append(sweep / str(r["run_dir"]))
    return out


def _sweep_values(
    sweep: Path, split: str = "val", seeds: set[int] | None = None
) -> dict[str, list[float]]:
    return {
        init: [_study_auroc(r / "metrics.json", split) for r in runs]
        for init, runs in _lowest_runs(sweep, seeds).items()
    }


def _score(values: dict[str, list[float]]) -> float:
    """Mean over inits of each init's mean over seeds (every init weighted equally)."""
    means = [statistics.mean(v) for v in values.values() if v]
    return statistics.mean(means) if means else float("nan")


def _evaluate(run: Path, split: str, name: str, sets: list[str]) -> Path:
    """``echoclr evaluate RUN --split SPLIT --name NAME --set ...``; a finished evaluation newer
    than the run's checkpoint is reused (a re-run of the bench resumes)."""
    metrics = run / "eval" / name / "metrics.json"
    ckpt = run / "checkpoints" / "best.pt"
    if not (metrics.exists() and ckpt.exists() and metrics.stat().st_mtime > ckpt.stat().st_mtime):
        args = ["evaluate", str(run), "--split", split, "--name", name]
        for s in sets:
            args += ["--set", s]
        _run(args)
    return metrics


def _get(cfg: dict, key: str):
    node = cfg
    for part in key.split("."):
        node = (node or {}).get(part)
    return node


class Choices:
    def __init__(self, root: Path, seeds: str | None = None):
        self.root = root.resolve()
        self.data = self.root / "data"
        self.sweep = self.root / "runs" / "sweep"
        self.out = self.root / "choices"
        self.cfg = yaml.safe_load((self.sweep / "sweep.yaml").read_text())
        grid = self.cfg.get("sweep", self.cfg)
        self.ratio = min(float(r) for r in grid["ratios"])
        low = grid.get("low_ratio_seeds") or grid["seeds"]
        self.seeds = seeds or ",".join(str(s) for s in low)
        self.keep = {int(s) for s in self.seeds.split(",")}
        self.inits = [i for i in grid["inits"] if i != "auto"]
        self.methods = [i for i in self.inits if i not in ("random", "random-bn", "kinetics")]
        dataset = json.loads((self.data / "dataset.json").read_text())
        self.size = dataset["size"]
        self.split = dataset["config"]["split"]  # the demo dataset's own split
        self.current = {k: self.profile_value(k, dataset) for k in OPTIONS}
        self.rows: list[dict] = []
        self.scores: dict[str, float] = {}

    def profile_value(self, key: str, dataset: dict):
        if key.startswith("preprocess."):
            value = _get(dataset.get("config") or {}, key) or _get(dataset.get("config") or {},
                                                                    key.split(".", 1)[1])  # fmt: skip
        else:
            value = _get(self.cfg, key)
        return OPTIONS[key][0] if value is None else value

    def other(self, key: str):
        a, b = OPTIONS[key]
        return b if self.current[key] == a else a

    def set_of(self, key: str) -> str:
        return f"{key}={self.other(key)}"

    def record(self, variant: str, values: dict[str, list[float]]) -> None:
        row = {"variant": variant, "split": "val", "score": round(_score(values), 4)}
        row |= {i: _stats(values.get(i, [])) for i in self.inits}
        row["values"] = values
        self.rows.append(row)
        self.scores[variant] = _score(values)
        print(json.dumps(row), flush=True)

    def lowest_sweep(self, out: Path, data: Path, pretrain: Path, sets: list[str]) -> Path:
        sweep = out / "sweep"
        args = ["sweep", "--profile", "demo", "--data", str(data), "--out", str(sweep),
                "--inits", ",".join(self.inits), "--pretrain-dir", str(pretrain),
                "--ratios", str(self.ratio), "--seeds", self.seeds, "--low-ratio-seeds",
                self.seeds]  # fmt: skip
        for s in sets:
            args += ["--set", s]
        _run(args)
        return sweep

    def pretrain_all(self, root: Path, data: Path, sets: list[str]) -> Path:
        for method in self.methods:
            args = ["pretrain", "--profile", "demo", "--method", method, "--data", str(data),
                    "--out", str(root / method)]  # fmt: skip
            if (root / method / "checkpoints" / "last.pt").exists():
                args.append("--resume")
            for s in sets:
                args += ["--set", s]
            _run(args)
        return root

    def preprocess_again(self, data: Path, sets: list[str]) -> None:
        # an explicit --input is a user archive, which gets the paper's 112 px, split and resize
        # unless given: pass the demo dataset's own size and split so only the resize changes
        # (the first version passed the size only: the variant's splits were the paper's 75/10/15)
        split = "[" + ",".join(str(x) for x in self.split) + "]"
        args = ["preprocess", "--profile", "demo", "--input", str(self.root / "raw"),
                "--output", str(data), "--size", str(self.size),
                "--set", f"preprocess.split={split}"]  # fmt: skip
        for s in sets:
            args += ["--set", s]
        _run(args)

    def train_variant(self, name: str, sets: list[str]) -> Path:
        """A lowest-ratio sweep of the profile with ``sets``, redoing what they need."""
        out = self.out / name
        pre = [s for s in sets if s.startswith("preprocess.")]
        pt = [s for s in sets if s.startswith("pretrain.")]
        ft = [s for s in sets if not s.startswith(("preprocess.", "pretrain."))]
        data = self.data
        if pre:
            data = out / "data"
            self.preprocess_again(data, pre)
        pretrain = self.root / "runs" / "pretrain"
        if pre or pt:
            pretrain = self.pretrain_all(out / "pretrain", data, pt)
        return self.lowest_sweep(out, data, pretrain, ft)

    # ------------------------------------------------------------------ variants
    def demo(self) -> None:
        self.record(PROFILE, _sweep_values(self.sweep, "val", self.keep))

    def eval(self) -> None:
        keys = ["evaluate.clip_starts", "evaluate.scaling"]
        variants = {self.set_of(k): [self.set_of(k)] for k in keys}
        variants["both evaluation options"] = [self.set_of(k) for k in keys]
        runs = _lowest_runs(self.sweep, self.keep)
        for i, (variant, sets) in enumerate(variants.items()):
            values: dict[str, list[float]] = {}
            for init, dirs in runs.items():
                for run in dirs:
                    name = f"choice_val_{i}"
                    metrics = _evaluate(run, "val", name, sets)
                    values.setdefault(init, []).append(_study_auroc(metrics, "val"))
            self.record(variant, values)

    def one_option(self, key: str) -> None:
        sets = [self.set_of(key)]
        self.record(sets[0], _sweep_values(self.train_variant(sets[0], sets)))

    def finetune(self) -> None:
        self.one_option("finetune.early_stop")
        self.one_option("finetune.label_smoothing")

    def pretrain(self) -> None:
        self.one_option("pretrain.view_forward")

    def preprocess(self) -> None:
        self.one_option("preprocess.resize")
        m = pd.read_csv(self.data / "manifest.csv")
        clip = int(self.cfg.get("finetune", {}).get("clip_len", 4))
        short = int((m["n_frames"] < clip).sum())
        print(json.dumps({"variant": "preprocess.short_videos", "videos_shorter_than_clip":
                          short, "clip_len": clip, "videos": len(m)}), flush=True)  # fmt: skip

    # ------------------------------------------------------------------ the choice
    def chosen(self) -> list[str]:
        """The options whose variant beat the profile on validation (one at a time)."""
        base = self.scores[PROFILE]
        return [self.set_of(k) for k in OPTIONS if self.scores.get(self.set_of(k), -1.0) > base]

    def final_test(self, sets: list[str]) -> dict[str, list[float]]:
        """Test AUROC of the chosen profile (read once): the demo's runs when nothing changes;
        the demo's runs evaluated again when only evaluation options change; the variant's own
        runs when one trained option changes (the same profile, already trained); else a run of
        the chosen profile."""
        if not sets:
            return _sweep_values(self.sweep, "test", self.keep)
        if all(PART[s.split("=", 1)[0]] == "eval" for s in sets):
            return {
                init: [
                    _study_auroc(_evaluate(r, "test", "choice_test", sets), "test") for r in runs
                ]
                for init, runs in _lowest_runs(self.sweep, self.keep).items()
            }
        if len(sets) == 1 and (self.out / sets[0] / "sweep" / "selection.csv").exists():
            return _sweep_values(self.out / sets[0] / "sweep", "test")
        return _sweep_values(self.train_variant("chosen", sets), "test")

    def table(self) -> str:
        head = "| variant (one option changed), val | mean | " + " | ".join(self.inits) + " |"
        sep = "|---" * (len(self.inits) + 2) + "|"
        body = [
            f"| {r['variant']} | {r['score']:.3f} | " + " | ".join(r[i] for i in self.inits) + " |"
            for r in self.rows
        ]
        return "\n".join([head, sep, *body])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--only", default="eval,finetune,pretrain,preprocess")
    ap.add_argument("--seeds", default=None, help="seeds at the lowest ratio (default: the demo's)")
    ap.add_argument("--no-final", action="store_true", help="skip the chosen profile's test run")
    args = ap.parse_args()
    ch = Choices(args.root, args.seeds)
    ch.demo()
    for part in args.only.split(","):
        getattr(ch, part.strip())()
    print(ch.table())
    measured = {PART[k] for k in OPTIONS if ch.set_of(k) in ch.scores}
    sets = ch.chosen()
    print(json.dumps({"options_measured": sorted(measured), "chosen_changes": sets}), flush=True)
    if args.no_final:
        return
    test = ch.final_test(sets)
    row = {"chosen_profile": sets or "the demo profile unchanged", "split": "test"}
    row |= {i: _stats(test.get(i, [])) for i in ch.inits} | {"values": test}
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
