"""Patients as the statistical unit (issue 24 point 3): coverage of the patient-cluster bootstrap
CI and type-I error of the clustered DeLong test when patients repeat.

    python bench/patient_coverage.py [--reps 1000] [--patients 100] [--boot 1000] [--seed 0]

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
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np
from scipy.stats import norm

from echoclr_cli.metrics.bootstrap import bootstrap_ci
from echoclr_cli.metrics.compare import delong_test

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1000, help="simulated datasets")
    ap.add_argument("--patients", type=int, default=100, help="patients per dataset")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples per CI")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sd-study", type=float, default=MODEL["sd_study"])
    a = ap.parse_args()
    model = {**MODEL, "sd_study": a.sd_study}
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
