"""The patient as the statistical unit (issue 24 point 3): patient-cluster bootstrap CIs, the
clustered DeLong test (Obuchowski 1997), the unit every table names, and a coverage simulation."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from echoclr_cli.clinical import core as clin
from echoclr_cli.clinical.logistic import logistic_fit_batch
from echoclr_cli.metrics import aggregate, splits
from echoclr_cli.metrics.bootstrap import (
    cluster_labels,
    cluster_weights,
    resample_indices,
)
from echoclr_cli.metrics.clustered import obuchowski_covariance, resolve_clusters
from echoclr_cli.metrics.compare import compare_runs, delong_covariance, delong_test

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "patient_coverage", ROOT / "bench/patient_coverage.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _clustered(n_patients=40, seed=0, ties=False):
    """Study rows of patients with 1-3 studies, some patients with both labels."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(n_patients), rng.integers(1, 4, n_patients))
    y = ((rng.random(n_patients) < 0.4)[pid] ^ (rng.random(len(pid)) < 0.15)).astype(int)
    u = rng.normal(0, 1, n_patients)[pid]
    s = np.stack([y + u + rng.normal(0, 0.5, len(y)), 0.7 * y + u + rng.normal(0, 0.5, len(y))])
    return y, (np.round(s, 1) if ties else s), pid


# --------------------------------------------------------------------------- clustered DeLong
@pytest.mark.parametrize("ties", [False, True])
def test_obuchowski_is_delong_with_one_unit_per_cluster(ties):
    y, s, _ = _clustered(seed=1, ties=ties)
    ids = np.random.default_rng(0).permutation(len(y))  # every unit its own cluster
    aucs, cov = obuchowski_covariance(y, s, ids)
    ref_aucs, ref_cov = delong_covariance(y, s)
    np.testing.assert_allclose(aucs, ref_aucs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=0, atol=1e-12)
    a, b = delong_test(y, s[0], s[1], clusters=ids), delong_test(y, s[0], s[1])
    for k in ("diff", "se", "z", "p_value", "ci_low", "ci_high"):
        assert a[k] == pytest.approx(b[k], rel=0, abs=1e-12), k
    assert a["test"] == "delong-obuchowski (item clusters)" and b["test"] == "delong"


def _obuchowski_bruteforce(y, s, pid):
    """The paper's formulas written out with the pairwise kernel psi, cluster by cluster."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)
    k = s.shape[0]
    psi = [(s[r][pos][:, None] > s[r][neg][None]) + 0.5 * (s[r][pos][:, None] == s[r][neg][None])
           for r in range(k)]  # fmt: skip
    theta = [p.mean() for p in psi]
    clusters = sorted(set(pid))
    v10 = {c: [sum(psi[r][i, :].sum() / n for i, j in enumerate(pos) if pid[j] == c)
               for r in range(k)] for c in clusters}  # fmt: skip
    v01 = {c: [sum(psi[r][:, i].sum() / m for i, j in enumerate(neg) if pid[j] == c)
               for r in range(k)] for c in clusters}  # fmt: skip
    mi = {c: int(sum(pid[j] == c for j in pos)) for c in clusters}
    ni = {c: int(sum(pid[j] == c for j in neg)) for c in clusters}
    i10, i01, big_i = (
        sum(v > 0 for v in mi.values()),
        sum(v > 0 for v in ni.values()),
        len(clusters),
    )
    cov = np.zeros((k, k))
    for r in range(k):
        for q in range(k):
            s10 = (
                i10
                / ((i10 - 1) * m)
                * sum(
                    (v10[c][r] - mi[c] * theta[r]) * (v10[c][q] - mi[c] * theta[q])
                    for c in clusters
                )
            )
            s01 = (
                i01
                / ((i01 - 1) * n)
                * sum(
                    (v01[c][r] - ni[c] * theta[r]) * (v01[c][q] - ni[c] * theta[q])
                    for c in clusters
                )
            )
            s11 = (
                big_i
                / (big_i - 1)
                * sum(
                    (v10[c][r] - mi[c] * theta[r]) * (v01[c][q] - ni[c] * theta[q])
                    + (v10[c][q] - mi[c] * theta[q]) * (v01[c][r] - ni[c] * theta[r])
                    for c in clusters
                )
            )
            cov[r, q] = s10 / m + s01 / n + s11 / (m * n)
    return np.array(theta), cov


@pytest.mark.parametrize("ties", [False, True])
def test_obuchowski_matches_the_formulas_written_out(ties):
    y, s, pid = _clustered(n_patients=18, seed=3, ties=ties)
    assert len(set(pid[y == 1]) & set(pid[y == 0])) > 0  # some patient has both labels
    aucs, cov = obuchowski_covariance(y, s, pid)
    ref_aucs, ref_cov = _obuchowski_bruteforce(y, s, pid)
    np.testing.assert_allclose(aucs, ref_aucs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=0, atol=1e-12)


def test_duplicated_studies_add_no_information():
    """Every patient's study repeated k times: the clustered variance is DeLong's over the
    patients; the naive one shrinks about k-fold."""
    y, s, _ = _clustered(seed=4)
    k = 3
    rep_y, rep_s, rep_id = np.repeat(y, k), np.repeat(s, k, axis=1), np.repeat(np.arange(len(y)), k)
    _, cov = obuchowski_covariance(rep_y, rep_s, rep_id)
    _, ref = delong_covariance(y, s)
    np.testing.assert_allclose(cov, ref, rtol=1e-10, atol=1e-14)
    _, naive = delong_covariance(rep_y, rep_s)
    assert naive[0, 0] < 0.4 * ref[0, 0]


def test_clustered_delong_needs_two_clusters_per_class():
    y = np.array([1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="2 clusters with positives"):
        obuchowski_covariance(y, np.array([[0.9, 0.8, 0.1, 0.2, 0.3]]), ["a", "a", "b", "c", "d"])


# --------------------------------------------------------------------------- cluster bootstrap
def test_patient_strata_keep_their_counts_and_equal_the_plain_draws():
    """Patients are stratified by 'holds a positive study' vs 'all negative': each stratum keeps
    its number of patients, and the draws are the stratified bootstrap over the patients."""
    y = np.array([1, 0, 1, 1, 0, 0, 0])
    ids = np.array(["b", "b", "a", "c", "d", "e", "e"])  # b has both labels
    inv, y_c = cluster_labels(y, ids)
    assert inv.tolist() == [1, 1, 0, 2, 3, 4, 4] and y_c.tolist() == [1, 1, 1, 0, 0]
    w = cluster_weights(y_c, 50, np.random.default_rng(7))
    assert (w[:, y_c == 1].sum(axis=1) == 3).all() and (w[:, y_c == 0].sum(axis=1) == 2).all()
    assert w[:, 1].std() > 0  # the mixed patient is resampled like any other
    idx = resample_indices(y_c, 50, True, np.random.default_rng(7))
    np.testing.assert_array_equal(w, np.stack([np.bincount(r, minlength=5) for r in idx]))


def test_patient_ci_is_wider_and_the_auroc_unchanged():
    y, s, pid = _clustered(n_patients=60, seed=5)
    frame = pd.DataFrame(
        {"study_id": [f"s{i}" for i in range(len(y))], "patient_id": [f"p{p}" for p in pid],
         "y_true": y, "y_prob": 1 / (1 + np.exp(-s[0]))}
    )  # fmt: skip
    pat, _ = splits.evaluate_frame(frame, None, 400, 0.95, 0, unit="patient")
    st, _ = splits.evaluate_frame(frame, None, 400, 0.95, 0, unit="study")
    assert pat["auroc"]["value"] == st["auroc"]["value"]  # the point estimate never changes
    assert pat["auroc"]["ci_unit"] == "patient" and st["auroc"]["ci_unit"] == "study"
    width = lambda c: c["auroc"]["ci_high"] - c["auroc"]["ci_low"]  # noqa: E731
    assert width(pat) > 1.1 * width(st)
    # the same at video level: two videos per study, patients resampled whole
    videos = frame.loc[frame.index.repeat(2)].assign(
        video_id=[f"v{i}" for i in range(2 * len(frame))]
    )
    vid, _ = splits.evaluate_frame(aggregate.aggregate(videos, "video"), None, 400, 0.95, 0,
                                   unit="patient")  # fmt: skip
    assert vid["auroc"]["ci_unit"] == "patient"
    assert vid["auroc"]["ci_low"] == pytest.approx(pat["auroc"]["ci_low"], abs=1e-12)


def test_resolve_clusters_names_the_unit_and_falls_back_to_the_study():
    st = pd.DataFrame({"study_id": ["s1", "s2", "s3"], "patient_id": ["p1", "p1", "p2"]})
    assert resolve_clusters(st, "patient")[1] == "patient"
    assert resolve_clusters(st, "study") == (None, "study")
    assert resolve_clusters(st.drop(columns="patient_id"), "patient") == (
        None, "study (no patient id)"
    )  # fmt: skip
    assert resolve_clusters(st.assign(patient_id=""), "patient")[1] == "study (no patient id)"
    part, unit = resolve_clusters(st.assign(patient_id=["p1", None, "p1"]), "patient")
    assert unit == "patient (1 studies without one: own cluster)"
    assert part[0] == part[2] != part[1]
    vid = st.assign(video_id=["v1", "v2", "v3"]).drop(columns="patient_id")
    clusters, unit = resolve_clusters(vid, "patient")
    assert unit == "study (no patient id)" and clusters.tolist() == ["s1", "s2", "s3"]
    assert resolve_clusters(vid, "item") == (None, "video")
    with pytest.raises(ValueError, match="bootstrap unit"):
        resolve_clusters(st, "video")


def test_compare_runs_uses_the_clustered_delong_by_patient():
    y, s, pid = _clustered(n_patients=50, seed=6)
    base = pd.DataFrame({"study_id": [f"s{i}" for i in range(len(y))],
                         "patient_id": [f"p{p}" for p in pid], "y_true": y})  # fmt: skip
    a, b = base.assign(y_prob=s[0]), base.assign(y_prob=s[1])
    pat = compare_runs(a, b, n=300, seed=0)
    naive = compare_runs(a, b, n=300, seed=0, unit="item")
    assert pat["delong"]["test"] == "delong-obuchowski (patient clusters)"
    assert pat["delong"]["unit"] == pat["bootstrap"]["unit"] == "patient"
    assert naive["delong"]["test"] == "delong" and naive["delong"]["unit"] == "study"
    assert pat["diff"] == naive["diff"]
    direct = delong_test(y, s[0], s[1], clusters=pid)
    assert pat["delong"]["p_value"] == pytest.approx(direct["p_value"], abs=1e-15)
    assert pat["delong"]["se"] != pytest.approx(naive["delong"]["se"], rel=1e-3)


def test_clinical_cis_resample_patients():
    y, s, pid = _clustered(n_patients=60, seed=8)
    p = 1 / (1 + np.exp(-s[0]))
    opts = clin.ClinicalOptions(n_boot=200)
    ones = np.arange(len(y))  # one study per patient: the study bootstrap, exactly
    a, b = clin.calibration_cells(y, p, opts, ones), clin.calibration_cells(y, p, opts)
    for k in clin.CALIBRATION_METRICS:
        assert a[k]["ci_low"] == pytest.approx(b[k]["ci_low"], abs=1e-9), k
        assert a[k]["ci_high"] == pytest.approx(b[k]["ci_high"], abs=1e-9), k
    c = clin.calibration_cells(y, p, opts, pid)
    assert c["brier"]["value"] == b["brier"]["value"]
    wide = lambda cell: cell["ci_high"] - cell["ci_low"]  # noqa: E731
    assert wide(c["calibration_slope"]) > wide(b["calibration_slope"])
    op = clin.operating_cells(y, p, 0.5, opts, pid)
    assert math.isfinite(op["npv"]["ci_low"]) and op["npv"]["value"] == pytest.approx(
        clin.operating_values(y, p, 0.5)["npv"]
    )
    # a count-weighted fit is the fit of the sample that repeats each item as often
    x = np.log(p / (1 - p))
    w = np.random.default_rng(0).integers(0, 3, (2, len(y)))
    got = logistic_fit_batch(np.stack([x, x]), np.stack([y, y]), offset=False, weights=w)
    for r in range(2):
        rows = np.repeat(np.arange(len(y)), w[r])
        ref = logistic_fit_batch(x[rows][None], y[rows][None], offset=False)
        assert got[0][r] == pytest.approx(ref[0][0], abs=1e-8)
        assert got[1][r] == pytest.approx(ref[1][0], abs=1e-8)


# --------------------------------------------------------------------------- coverage simulation
def test_patient_ci_covers_and_the_clustered_delong_holds_its_level():
    """150 datasets of 60 patients with 1-3 strongly correlated studies (within-patient score
    correlation 0.92): the patient-cluster 95% CI covers the true AUROC about 95% of the time,
    the study bootstrap (the old default) clearly less; the clustered DeLong rejects a true null
    about 5% of the time, the naive one far more. (bench/patient_coverage.py: the full run.)"""
    sim = _bench()
    cov = sim.coverage(reps=150, n_patients=60, n_boot=200, seed=0)
    assert 0.92 <= cov["coverage"]["patient"] <= 0.98, cov
    assert cov["coverage"]["study"] <= cov["coverage"]["patient"] - 0.05, cov
    assert cov["mean_width"]["patient"] > 1.15 * cov["mean_width"]["study"], cov
    err = sim.type_one_error(reps=300, n_patients=60, seed=1)
    assert 0.02 <= err["clustered"] <= 0.09, err
    assert err["naive"] >= 0.1, err


@pytest.mark.slow
def test_patient_ci_coverage_full():
    """The run docs/BENCHMARKS.md records (``python bench/patient_coverage.py``): 1000 datasets
    of 100 patients, 1000 resamples per CI; 2000 datasets for the type-I error."""
    sim = _bench()
    cov = sim.coverage(reps=1000, n_patients=100, n_boot=1000, seed=0)
    assert 0.92 <= cov["coverage"]["patient"] <= 0.98, cov
    assert cov["coverage"]["study"] <= 0.88, cov
    err = sim.type_one_error(reps=2000, n_patients=100, seed=1)
    assert 0.035 <= err["clustered"] <= 0.065, err
    assert err["naive"] >= 0.1, err
