"""Digest of the pipeline's outputs stage by stage, for "behaviour unchanged" checks of a refactor.

Runs, through the CLI only (so it works on any package layout), on a tiny synthetic archive:
synth -> preprocess -> 1-epoch pretraining of each SSL method -> a 5% fine-tune (random and
EchoCLR init) -> a tiny sweep, and prints one JSON object {stage/file: sha256}. Values that are
not behaviour (wall times, dates, absolute paths, the package version) are removed before hashing;
everything else (pixels, ids, splits, losses, metrics, predictions, tables) is compared bit for bit.

    python bench/behaviour_digest.py --work /tmp/digest > before.json
    ... refactor ...
    python bench/behaviour_digest.py --work /tmp/digest2 > after.json
    python bench/behaviour_digest.py --diff before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

PROFILE = ["--profile", "demo"]
TINY = [*PROFILE, "--device", "cpu", "--set", "model.width=0.125",
        "--set", "runtime.deterministic=true"]  # fmt: skip
VOLATILE_COL = re.compile(r"(^|_)(time|sec|secs|seconds|elapsed|wall|date|created|started|"
                          r"finished|clips_per_s|duration|eta)($|_)", re.I)  # fmt: skip
# a checkpoint file's sha256 covers its volatile parts too (wall times, RNG of the loader); the
# checkpoint's tensors are digested themselves
VOLATILE_KEY = re.compile(VOLATILE_COL.pattern + r"|^sha256$", re.I)
SKIP_FILE = re.compile(r"(\.log$|\.png$|\.html$|events\.out|journal\.jsonl$|\.lock$|progress)")


def run(*args: str, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "echoclr_cli", *args]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


def _clean(obj, root: str):
    if isinstance(obj, dict):
        return {k: _clean(v, root) for k, v in obj.items() if not VOLATILE_KEY.search(str(k))}
    if isinstance(obj, list):
        return [_clean(v, root) for v in obj]
    if isinstance(obj, str):
        return obj.replace(root, "<work>")
    return obj


def digest_file(path: Path, root: str) -> str | None:
    if SKIP_FILE.search(path.name):
        return None
    h = hashlib.sha256()
    if path.suffix == ".csv":
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        df = df[[c for c in df.columns if not VOLATILE_COL.search(c)]]
        h.update(df.to_csv(index=False).replace(root, "<work>").encode())
    elif path.suffix == ".json":
        try:
            obj = json.loads(path.read_text())
        except ValueError:
            obj = path.read_text()
        h.update(json.dumps(_clean(obj, root), sort_keys=True).encode())
    elif path.suffix in (".yaml", ".yml"):
        text = "\n".join(ln for ln in path.read_text().splitlines()
                         if not VOLATILE_KEY.search(ln.split(":", 1)[0]))  # fmt: skip
        h.update(text.replace(root, "<work>").encode())
    elif path.suffix == ".npy":
        h.update(np.load(path).tobytes())
    elif path.suffix == ".pt":
        import torch

        ck = torch.load(path, map_location="cpu", weights_only=True)
        state = ck.get("model", ck) if isinstance(ck, dict) else ck
        buf = io.BytesIO()
        for k in sorted(state):
            v = state[k]
            buf.write(k.encode())
            if hasattr(v, "numpy"):
                buf.write(v.detach().cpu().contiguous().numpy().tobytes())
        h.update(buf.getvalue())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def digest_tree(root: Path, label: str, base: str) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and "private" not in p.parts:
            d = digest_file(p, base)
            if d is not None:
                out[f"{label}/{p.relative_to(root)}"] = d
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, help="empty folder to run in")
    ap.add_argument("--diff", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    a = ap.parse_args()
    if a.diff:
        before, after = (json.loads(p.read_text()) for p in a.diff)
        keys = sorted(set(before) | set(after))
        bad = [k for k in keys if before.get(k) != after.get(k)]
        for k in bad:
            print(f"DIFF {k}: {before.get(k)} -> {after.get(k)}")
        print(json.dumps({"files": len(keys), "different": len(bad)}))
        raise SystemExit(1 if bad else 0)
    w = a.work.resolve()
    w.mkdir(parents=True, exist_ok=True)
    base = str(w)
    run("synth", "raw", "--studies", "16", "--seed", "3", *PROFILE, cwd=w)
    run("preprocess", "--input", "raw", "--output", "data", "--size", "32", *PROFILE, cwd=w)
    for m in ("simclr", "mi-simclr", "echoclr"):
        run("pretrain", "--method", m, "--data", "data", "--out", f"runs/pt/{m}", "--epochs", "1",
            "--batch-size", "8", *TINY, cwd=w)  # fmt: skip
    for init in ("random", "runs/pt/echoclr"):
        name = "ft-" + Path(init).name
        run("finetune", "--data", "data", "--task", "lvh", "--init", init, "--frac", "0.05",
            "--epochs", "2", "--batch-size", "4", "--out", f"runs/{name}", *TINY, cwd=w)  # fmt: skip
    run("sweep", "--data", "data", "--ratios", "0.5,1.0", "--inits", "random", "--out",
        "runs/sweep", "--set", "finetune.epochs=1", *TINY, cwd=w)  # fmt: skip
    res: dict[str, str] = {}
    for label in ("raw", "data", "runs"):
        res |= digest_tree(w / label, label, base)
    print(json.dumps(res, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
