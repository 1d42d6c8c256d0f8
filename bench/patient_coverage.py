"""Patients as the statistical unit (issue 24 point 3): coverage of the patient-cluster bootstrap
CI and type-I error of the clustered DeLong test when patients repeat.

    python bench/patient_coverage.py [--reps 1000] [--patients 100] [--boot 1000] [--seed 0]
    python bench/patient_coverage.py --sweep SWEEP_DIR   # a finished sweep's test predictions

Each simulated dataset has N patients with 1-3 studies each (uniform). A patient's studies share
a patient random effect u ~ N(0, sd_patient^2) and, with probability 1 - flip, the patient's
label (prevalence 0.4); the study score is ``mu * y + u + e`` with e ~ N(0, sd_study^2). The
true study-level AUROC is ``Phi(mu / sqrt(2 (sd_patient^2 + sd_study^2)))`` (a positive and a
negative study of two different patients). Printed as one JSON line:

- ``coverage``: the share of datasets whose 95% percentile bootstrap CI of the AUROC covers the
  truth, resampling patients (``metrics.bootstrap_ci(clusters=patient)``, the default of every
  CI now) or studies (the previous default), and the mean CI widths;
- ``type_one_error``: the share of datasets where two models of equal true AUROC (each with its
  own patient effects) differ at p < 0.05 by DeLong's test, clustered by patient (Obuchowski)
  or with studies as independent units (the previous test).

tests/test_cluster_stats.py runs a small version of both in CI and the full one as a slow test.

``--sweep DIR`` measures the change on real predictions instead: for every run's
``predictions_test_study.csv`` under ``DIR/runs`` the study-level AUROC with its 95% CI
resampling studies (before) and patients (now), and for every pair of inits at the same task,
ratio and seed the DeLong p-value with studies as units (before) and clustered by patient (now).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from echoclr_cli.metrics.bootstrap import bootstrap_ci
from echoclr_cli.metrics.compare import delong_test
from echoclr_cli.metrics.splits import evaluate_frame

UNITS = ("study", "patient")
MODEL = {"mu": 1.0, "sd_patient": 1.0, "sd_study": 0.3, "flip": 0.1, "prevalence": 0.4}


def true_auroc(mu: float, sd_patient: float, sd_study: float, **_: Any) -> float:
    return float(norm.cdf(mu / math.sqrt(2 * (sd_patient**2 + sd_study**2))))


def patients(
    rng: np.random.Generator, n_patients: int, flip: float, prevalence: float, **_: Any
) -> tuple[np.ndarray, np.ndarray]:
    """``(y, pid)``: study labels and patient ids, 1-3 studies per patient."""
    pid = np.repeat(np.arange(n_patients), rng.integers(1, 4, n_patients))
    y_patient = rng.random(n_patients) < prevalence
    y = y_patient[pid] ^ (rng.random(len(pid)) < flip)
    return y.astype(np.int64), pid


def scores(
    rng: np.random.Generator, y: np.ndarray, pid: np.ndarray, mu: float, sd_patient: float,
    sd_study: float, **_: Any,
) -> np.ndarray:  # fmt: skip
    u = rng.normal(0.0, sd_patient, int(pid.max()) + 1)
    return mu * y + u[pid] + rng.normal(0.0, sd_study, len(y))


def coverage(reps: int, n_patients: int, n_boot: int, seed: int = 0, **model: Any) -> dict:
    """Coverage and mean width of the 95% CI resampling patients vs studies."""
    model = {**MODEL, **model}
    truth = true_auroc(**model)
    rng = np.random.default_rng(seed)
    hits = {"patient": 0, "study": 0}
    widths: dict[str, list[float]] = {"patient": [], "study": []}
    for _ in range(reps):
        y, pid = patients(rng, n_patients, **model)
        s = scores(rng, y, pid, **model)
        boot_seed = int(rng.integers(1 << 30))
        for unit in hits:
            clusters = pid if unit == "patient" else None
            lo, hi = bootstrap_ci(y, s, ["auroc"], n=n_boot, seed=boot_seed, clusters=clusters)[
                "auroc"
            ]
            hits[unit] += bool(lo <= truth <= hi)
            widths[unit].append(hi - lo)
    return {
        "truth": truth,
        "coverage": {k: v / reps for k, v in hits.items()},
        "mean_width": {k: float(np.mean(v)) for k, v in widths.items()},
    }


def type_one_error(reps: int, n_patients: int, seed: int = 0, **model: Any) -> dict:
    """Share of p < 0.05 for two models of equal true AUROC: clustered vs naive DeLong."""
    model = {**MODEL, **model}
    rng = np.random.default_rng(seed)
    rejected = {"clustered": 0, "naive": 0}
    for _ in range(reps):
        y, pid = patients(rng, n_patients, **model)
        sa, sb = scores(rng, y, pid, **model), scores(rng, y, pid, **model)
        rejected["clustered"] += delong_test(y, sa, sb, clusters=pid)["p_value"] < 0.05
        rejected["naive"] += delong_test(y, sa, sb)["p_value"] < 0.05
    return {k: v / reps for k, v in rejected.items()}


def sweep_change(sweep_dir: Path, n_boot: int = 1000) -> dict:
    """Study- vs patient-resampled CIs and naive vs clustered DeLong on a sweep's test split."""
    runs, rows, pairs = {}, [], []
    paths = sorted(sweep_dir.glob("runs/*/*/*/predictions_test_study.csv"))
    if (sweep_dir / "selection.csv").exists():  # the selected run of each cell only
        chosen = set(pd.read_csv(sweep_dir / "selection.csv")["run_dir"].dropna().astype(str))
        paths = [p for p in paths if str(p.parent.relative_to(sweep_dir)) in chosen]
    for path in paths:
        task, init, name = path.parts[-4:-1]
        df = pd.read_csv(path)
        runs[(task, init, name.split("_lr")[0] + "_s" + name.rsplit("_s", 1)[1])] = df
        cells = {u: evaluate_frame(df, None, n_boot, 0.95, 0, u)[0]["auroc"] for u in UNITS}
        width = {u: c["ci_high"] - c["ci_low"] for u, c in cells.items()}
        rows.append({"run": f"{task}/{init}/{name}", "auroc": cells["patient"]["value"],
                     "ci_study": [cells["study"]["ci_low"], cells["study"]["ci_high"]],
                     "ci_patient": [cells["patient"]["ci_low"], cells["patient"]["ci_high"]],
                     "width_ratio": width["patient"] / width["study"]})  # fmt: skip
    for (task, a, cell), da in runs.items():
        for (task_b, b, cell_b), db in runs.items():
            if (task_b, cell_b) != (task, cell) or a >= b:
                continue
            m = da.merge(db[["study_id", "y_prob"]], on="study_id", suffixes=("_a", "_b"))
            y, pa, pb = m["y_true"].to_numpy(), m["y_prob_a"], m["y_prob_b"]
            pairs.append({"task": task, "cell": cell, "a": a, "b": b,
                          "p_study": delong_test(y, pa, pb)["p_value"],
                          "p_patient": delong_test(y, pa, pb, clusters=m["patient_id"])["p_value"]})  # fmt: skip
    any_df = next(iter(runs.values()), pd.DataFrame(columns=["study_id", "patient_id"]))
    ratios = [r["width_ratio"] for r in rows]
    return {
        "test_studies": len(any_df), "test_patients": int(any_df["patient_id"].nunique()),
        "runs": len(rows), "width_ratio_mean": float(np.mean(ratios)) if ratios else None,
        "width_ratio_range": [float(min(ratios)), float(max(ratios))] if ratios else None,
        "per_run": rows, "delong_pairs": pairs,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1000, help="simulated datasets")
    ap.add_argument("--patients", type=int, default=100, help="patients per dataset")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples per CI")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sd-patient", type=float, default=MODEL["sd_patient"])
    ap.add_argument("--sd-study", type=float, default=MODEL["sd_study"])
    ap.add_argument("--sweep", type=Path, help="a finished sweep dir: measure on its test split")
    a = ap.parse_args()
    if a.sweep is not None:
        print(json.dumps(sweep_change(a.sweep, a.boot)))
        return
    model = {**MODEL, "sd_patient": a.sd_patient, "sd_study": a.sd_study}
    out = {
        "reps": a.reps,
        "patients": a.patients,
        "boot": a.boot,
        "model": model,
        **coverage(a.reps, a.patients, a.boot, a.seed, **model),
        "type_one_error": type_one_error(2 * a.reps, a.patients, a.seed + 1, **model),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
