"""Run README.md's "Your own data" commands verbatim on a hospital-style export, on this machine.

Builds a small export (MRN/DATE_ACC/SEnnnn/IMnnnnn, a labels CSV keyed by Accession Number with
av_stenosis grades and lvh_category), a fake Kinetics-400 weight file in a private torch hub cache
(TORCH_HOME; random weights of the right shape, so `--init kinetics` finds a file: nothing is
downloaded), then runs every `echoclr ...` line of the README's block in a scratch folder with
/archive/echo and /archive/new_studies pointing at the export and a worklist. `torchrun` lines
and lines with `...` are listed as not run. Only --epochs/--batch-size are appended (to keep a CPU
run short); nothing else is added: no --set, no --profile.

    python bench/readme_own_data.py --work /tmp/own
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHORT = {
    "pretrain": ["--epochs", "1", "--batch-size", "8"],
    "finetune": ["--epochs", "2", "--batch-size", "4"],
}


def readme_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Your own data", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines, cur = [], ""
    for raw in block.splitlines():
        line = raw.split("  #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line and not cur:
            continue
        cur += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            lines.append(cur.strip())
            cur = ""
    return [ln for ln in lines if ln]


def build_inputs(work: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import pandas as pd
    import torch

    from tests.e2e.test_hospital_path import accession, hospital_export

    hospital_export(work / "archive/echo", range(24))
    hospital_export(work / "archive/new_studies", range(24, 26))
    grades = ["None", "Severe", "Mild", "Moderate"]
    pd.DataFrame({
        "Accession Number": [accession(i) for i in range(24)],
        "av_stenosis": [grades[i % 4] for i in range(24)],
        "lvh_category": ["Hypertrophy" if i % 3 == 0 else "Normal" for i in range(24)],
    }).to_csv(work / "labels.csv", index=False)  # fmt: skip
    from echoclr_cli.models.backbones import build_backbone
    from echoclr_cli.models.weights import kinetics_weight_path

    os.environ["TORCH_HOME"] = str(work / "torch_home")
    path = kinetics_weight_path("r3d_18")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_backbone("r3d_18", 1.0).state_dict(), path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    a = ap.parse_args()
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    build_inputs(work)
    env = dict(os.environ, TORCH_HOME=str(work / "torch_home"))
    echoclr = str(Path(sys.executable).parent / "echoclr")
    failed = 0
    for line in readme_block():
        if not line.startswith("echoclr ") or "..." in line:
            print(f"NOT RUN  {line}")
            continue
        args = shlex.split(line.replace("/archive/", str(work / "archive") + "/"))[1:]
        args += SHORT.get(args[0], [])
        t0 = time.time()
        res = subprocess.run([echoclr, *args], cwd=work, env=env, capture_output=True, text=True)
        ok = res.returncode == 0
        failed += not ok
        first = (res.stdout.splitlines() or [""])[0]
        print(f"{'OK' if ok else 'FAIL'} {time.time() - t0:6.1f}s  {line}\n         {first}")
        if not ok:
            print(re.sub(r"^", "         ", (res.stdout + res.stderr)[-1500:], flags=re.M))
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
