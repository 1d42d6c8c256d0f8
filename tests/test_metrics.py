"""Evaluation maths: metrics vs scikit-learn, thresholds vs brute force, bootstrap, DeLong."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.metrics.aggregate import aggregate, aggregate_levels
from echoclr_cli.metrics.bootstrap import batch_metrics, bootstrap_ci, bootstrap_distribution
from echoclr_cli.metrics.compare import compare_runs, delong_covariance, delong_test
from echoclr_cli.metrics.core import (
    auroc_rank,
    choose_thresholds,
    compute_metrics,
    compute_metrics_with_reasons,
)
from echoclr_cli.metrics.splits import evaluate_predictions, metrics_to_frame


def _data(n: int, seed: int, ties: bool = True, prevalence: float = 0.3):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = [0, 1]
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    if ties:
        p = np.round(p, 1)  # many tied scores, including ties across classes
    return y, p


def _sk_threshold(y, p, t):
    pred = (p >= t).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "mcc": skm.matthews_corrcoef(y, pred),
        "f1": skm.f1_score(y, pred, zero_division=0),
        "sensitivity": skm.recall_score(y, pred),
        "specificity": tn / (tn + fp),
        "precision": skm.precision_score(y, pred, zero_division=np.nan),
    }


def _sk_all(y, p, thresholds=None):
    prec, rec, _ = skm.precision_recall_curve(y, p)
    out = {
        "auroc": skm.roc_auc_score(y, p),
        "ap": skm.average_precision_score(y, p),
        "aupr_trapz": skm.auc(rec, prec),
        **_sk_threshold(y, p, 0.5),
        "n": len(y),
        "n_pos": int(y.sum()),
        "prevalence": y.mean(),
    }
    for name, t in (thresholds or {}).items():
        out.update({f"{k}@{name}": v for k, v in _sk_threshold(y, p, t).items()})
    return out


def _assert_close(ours: dict, ref: dict, keys=None):
    for k in keys or ref:
        a, b = ours[k], ref[k]
        if isinstance(b, float) and math.isnan(b):
            assert math.isnan(a), k
        else:
            assert a == pytest.approx(b, abs=1e-6), k


# --------------------------------------------------------------------------- point metrics
@pytest.mark.parametrize("seed,ties", [(0, True), (1, True), (2, False), (3, True)])
def test_metrics_match_sklearn(seed, ties):
    y, p = _data(157, seed, ties)
    thresholds = {"low": 0.2, "max": float(p.max()), "above": 1.5}
    ours = compute_metrics(y, p, thresholds)
    ref = _sk_all(y, p, thresholds)
    assert set(ours) == set(ref)
    _assert_close(ours, ref)
    assert ours["ap"] != pytest.approx(ours["aupr_trapz"], abs=1e-4)  # distinct numbers


@pytest.mark.parametrize("seed,ties", [(0, True), (4, False)])
def test_batch_metrics_match_point_metrics(seed, ties):
    """The vectorised bootstrap path computes the same numbers as compute_metrics."""
    rows = [_data(60, seed + i, ties) for i in range(5)]
    thresholds = {"youden": 0.45}
    y = np.stack([r[0] for r in rows])
    p = np.stack([r[1] for r in rows])
    order = np.argsort(-p, axis=1, kind="stable")
    ys, ps = np.take_along_axis(y, order, 1), np.take_along_axis(p, order, 1)
    names = [k for k in compute_metrics(y[0], p[0], thresholds)]
    batch = batch_metrics(ys, ps, names, thresholds)
    for i in range(len(rows)):
        _assert_close({k: v[i] for k, v in batch.items()}, compute_metrics(y[i], p[i], thresholds))


def test_auroc_rank_matches_sklearn_with_ties():
    y, p = _data(300, 5, ties=True)
    assert auroc_rank(y[None], p[None])[0] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)


def test_no_predicted_positive_gives_nan_precision_with_reason():
    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4])
    values, reasons = compute_metrics_with_reasons(y, p)
    assert (
        math.isnan(values["precision"]) and "no prediction >= threshold 0.5" in reasons["precision"]
    )
    assert values["f1"] == 0.0 and values["mcc"] == 0.0 and values["sensitivity"] == 0.0


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_gives_nan_with_reason(label):
    y = np.full(6, label)
    p = np.linspace(0.1, 0.9, 6)
    values, reasons = compute_metrics_with_reasons(y, p, {"youden": 0.5})
    for k in (
        "auroc",
        "ap",
        "aupr_trapz",
        "balanced_accuracy",
        "mcc",
        "f1",
        "precision",
        "f1@youden",
    ):
        assert math.isnan(values[k]), k
        assert reasons[k] == f"only one class in y_true: n_pos={6 * label}, n=6"
    assert values["accuracy"] == 0.5
    missing = "sensitivity" if label == 0 else "specificity"
    present = "specificity" if label == 0 else "sensitivity"
    assert math.isnan(values[missing]) and missing in reasons
    assert values[present] == 0.5 and present not in reasons
    chosen = choose_thresholds(y, p)
    assert set(chosen) == {"youden", "f1", "f2", "sens90"}
    assert all(math.isnan(t) for t in chosen.values())
    ci = bootstrap_ci(y, p, ["auroc", "accuracy"], n=50)
    assert all(math.isnan(v) for v in ci["auroc"])
    assert not math.isnan(ci["accuracy"][0])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="0/1"):
        compute_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="non-finite"):
        compute_metrics([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="equal length"):
        compute_metrics([0, 1], [0.1])


# --------------------------------------------------------------------------- thresholds
def _brute_threshold(y, p, score):
    best_t, best = None, -np.inf
    for t in sorted(set(p), reverse=True):  # highest first: ties keep the highest threshold
        s = score(y, (p >= t).astype(int))
        if s > best + 1e-12:
            best_t, best = t, s
    return best_t


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_thresholds_match_brute_force(seed):
    y, p = _data(80, seed, ties=seed % 2 == 0)
    t = choose_thresholds(y, p)

    def youden(yy, pred):
        return skm.recall_score(yy, pred) + skm.recall_score(yy, pred, pos_label=0) - 1

    assert t["youden"] == _brute_threshold(y, p, youden)
    assert t["f1"] == _brute_threshold(y, p, lambda yy, pr: skm.f1_score(yy, pr, zero_division=0))
    assert t["f2"] == _brute_threshold(
        y, p, lambda yy, pr: skm.fbeta_score(yy, pr, beta=2, zero_division=0)
    )
    reaching = [c for c in set(p) if skm.recall_score(y, (p >= c).astype(int)) >= 0.9]
    assert t["sens90"] == max(reaching)


def test_threshold_ties_pick_highest():
    # thresholds 0.8 and 0.6 both give Youden 0.5: the higher one wins
    y = np.array([1, 0, 1, 0])
    p = np.array([0.8, 0.7, 0.6, 0.1])
    assert choose_thresholds(y, p)["youden"] == 0.8


# --------------------------------------------------------------------------- bootstrap
def test_bootstrap_seeded_contains_estimate_and_narrows():
    y, p = _data(400, 0)
    names = ["auroc", "ap", "aupr_trapz", "f1", "accuracy"]
    a = bootstrap_ci(y, p, names, n=300, seed=3)
    assert a == bootstrap_ci(y, p, names, n=300, seed=3)
    assert a != bootstrap_ci(y, p, names, n=300, seed=4)
    point = compute_metrics(y, p)
    for k in names:
        assert a[k][0] <= point[k] <= a[k][1], k
    small = bootstrap_ci(y[:80], p[:80], ["auroc"], n=300, seed=3)["auroc"]
    assert (a["auroc"][1] - a["auroc"][0]) < (small[1] - small[0])
    ci90 = bootstrap_ci(y, p, ["auroc"], n=300, ci=0.90, seed=3)["auroc"]
    assert a["auroc"][0] <= ci90[0] <= ci90[1] <= a["auroc"][1]
    assert (ci90[1] - ci90[0]) < (a["auroc"][1] - a["auroc"][0])


def test_bootstrap_percentiles_are_2_5_and_97_5():
    y, p = _data(100, 1)
    dist = bootstrap_distribution(y, p, ["auroc"], n=200, seed=0)["auroc"]
    low, high = bootstrap_ci(y, p, ["auroc"], n=200, seed=0)["auroc"]
    assert (low, high) == tuple(np.percentile(dist, [2.5, 97.5]))


def test_bootstrap_stratified_keeps_counts_and_callables_agree():
    y, p = _data(50, 2)
    n_pos = int(y.sum())

    def count_pos(yy, pp):
        return float(yy.sum())

    strat = bootstrap_distribution(y, p, {"n_pos": count_pos}, n=100, seed=0)["n_pos"]
    assert (strat == n_pos).all()
    plain = bootstrap_distribution(y, p, {"n_pos": count_pos}, n=100, seed=0, stratified=False)
    assert len(set(plain["n_pos"])) > 1
    # vectorised and per-resample callables see the same resamples
    vec = bootstrap_distribution(y, p, ["auroc"], n=50, seed=7)["auroc"]
    fn = bootstrap_distribution(y, p, {"auroc": skm.roc_auc_score}, n=50, seed=7)["auroc"]
    np.testing.assert_allclose(vec, fn, atol=1e-12)


def test_bootstrap_chunking_matches_single_block(monkeypatch):
    import echoclr_cli.metrics.bootstrap as m

    y, p = _data(120, 3)
    whole = bootstrap_distribution(y, p, ["auroc", "ap", "f1"], n=40, seed=1)
    monkeypatch.setattr(m, "_BOOT_CHUNK_ELEMENTS", 7 * 120)
    chunked = bootstrap_distribution(y, p, ["auroc", "ap", "f1"], n=40, seed=1)
    for k in whole:
        np.testing.assert_array_equal(whole[k], chunked[k])


def test_bootstrap_speed_1000_by_1000():
    y, p = _data(1000, 0)
    start = time.perf_counter()
    bootstrap_ci(y, p, ["auroc", "ap", "aupr_trapz", "f1", "mcc"], n=1000)
    assert time.perf_counter() - start < 4.0  # ~1 s on one core; slack for a shared machine


# --------------------------------------------------------------------------- aggregation
def _clips():
    return pd.DataFrame(
        {
            "video_id": ["v1", "v1", "v2", "v3", "v3", "v3"],
            "study_id": ["s1", "s1", "s1", "s2", "s2", "s2"],
            "patient_id": ["p1"] * 3 + ["p2"] * 3,
            "y_true": [1, 1, 1, 0, 0, 0],
            "y_prob": [0.2, 0.4, 0.9, 0.1, 0.2, 0.6],
        }
    )


def test_aggregate_means_clip_video_study():
    levels = aggregate_levels(_clips())
    video, study = levels["video"], levels["study"]
    assert list(video.columns) == [
        "video_id",
        "study_id",
        "patient_id",
        "y_true",
        "y_prob",
        "n_clips",
    ]
    assert video["y_prob"].tolist() == pytest.approx([0.3, 0.9, 0.3])
    assert video["n_clips"].tolist() == [2, 1, 3]
    assert list(study.columns) == ["study_id", "patient_id", "y_true", "y_prob", "n_videos"]
    # study = mean of video means (0.3, 0.9), not the clip mean 0.5
    assert study["y_prob"].tolist() == pytest.approx([0.6, 0.3])
    assert study["n_videos"].tolist() == [2, 1]
    # video-level input gives the same study level and keeps n_clips
    again = aggregate(video, "study")
    pd.testing.assert_frame_equal(again, study)
    assert aggregate(video, "video")["n_clips"].tolist() == [2, 1, 3]


def test_aggregate_refuses_inconsistent_labels():
    df = _clips()
    df.loc[2, "y_true"] = 0  # v2 disagrees with v1 in study s1
    with pytest.raises(UserError, match="y_true differs within study_id: s1"):
        aggregate(df, "study")
    df = _clips()
    df.loc[1, "y_true"] = 0
    with pytest.raises(UserError, match="within video_id: v1"):
        aggregate(df, "video")
    with pytest.raises(UserError, match="missing columns"):
        aggregate(_clips().drop(columns="patient_id"), "video")


# --------------------------------------------------------------------------- metrics.json
def _video_frame(n_studies: int, seed: int, one_class: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_studies):
        label = 0 if one_class else int(rng.random() < 0.4)
        for v in range(1 + s % 3):
            rows.append(
                (
                    f"{seed}v{s}_{v}",
                    f"{seed}s{s}",
                    f"{seed}p{s}",
                    label,
                    float(np.clip(rng.normal(0.3 + 0.4 * label, 0.25), 0, 1)),
                )
            )
    return pd.DataFrame(rows, columns=["video_id", "study_id", "patient_id", "y_true", "y_prob"])


def test_evaluate_predictions_shape_and_thresholds():
    cfg = Config()
    cfg.evaluate.bootstrap = 100
    preds = {
        "val": _video_frame(40, 1),
        "test": _video_frame(50, 2),
        "ext_test": _video_frame(8, 3, True),
    }
    events = []
    out = evaluate_predictions(preds, cfg, progress=events.append)
    assert [e.split(":")[0] for e in events] == [
        f"metrics {s}/{lv}" for s in ("val", "test", "ext_test") for lv in ("video", "study")
    ]
    assert set(out) == {"val", "test", "ext_test", "thresholds", "reasons"}
    for level in ("video", "study"):
        df = aggregate_levels(preds["val"])[level]
        assert out["thresholds"][level] == choose_thresholds(df["y_true"], df["y_prob"])
        test = aggregate_levels(preds["test"])[level]
        ref = compute_metrics(test["y_true"], test["y_prob"], out["thresholds"][level])
        cell = out["test"][level]["f1@youden"]
        assert cell["value"] == pytest.approx(ref["f1@youden"])
        assert cell["ci_low"] <= cell["value"] <= cell["ci_high"] and cell["n"] == len(test)
        assert "f1@youden" not in out["val"][level]  # thresholds are not applied in-sample
        assert out["test"][level]["n"]["ci_low"] is None
        assert out["test"][level]["n_pos"]["value"] == int(test["y_true"].sum())
    ext = out["ext_test"]["study"]
    assert ext["auroc"]["value"] is None and ext["auroc"]["ci_low"] is None
    assert out["reasons"]["ext_test"]["study"]["auroc"] == "only one class in y_true: n_pos=0, n=8"
    assert "test" not in out["reasons"] or "auroc" not in out["reasons"]["test"]["study"]
    import json

    json.dumps(out, allow_nan=False)  # strict JSON: NaN became None
    table = metrics_to_frame(out)
    cols = ["split", "level", "metric", "value", "ci_low", "ci_high", "n", "ci_unit"]
    assert list(table.columns) == cols
    assert set(table.loc[table["ci_low"].notna(), "ci_unit"]) == {"patient"}
    assert len(table) == sum(len(t) for s in ("val", "test", "ext_test") for t in out[s].values())


def test_evaluate_predictions_with_given_thresholds():
    cfg = Config()
    cfg.evaluate.bootstrap = 20
    given = {"study": {"youden": 0.4, "f1": None}}
    out = evaluate_predictions(
        {"val": _video_frame(30, 1), "test": _video_frame(30, 2)}, cfg, thresholds=given
    )
    assert out["thresholds"] == given
    study = aggregate_levels(_video_frame(30, 2))["study"]
    ref = compute_metrics(study["y_true"], study["y_prob"], {"youden": 0.4})
    assert out["test"]["study"]["mcc@youden"]["value"] == pytest.approx(ref["mcc@youden"])
    assert out["test"]["study"]["mcc@f1"]["value"] is None
    assert "mcc@youden" not in out["test"]["video"]  # no thresholds given for video level


def test_evaluate_predictions_without_val_or_bootstrap():
    cfg = Config()
    cfg.evaluate.bootstrap = 0
    out = evaluate_predictions({"test": _video_frame(20, 4)}, cfg)
    assert out["thresholds"] == {}
    assert not any("@" in k for k in out["test"]["study"])
    assert out["test"]["study"]["auroc"]["ci_low"] is None


# --------------------------------------------------------------------------- comparisons
def _delong_bruteforce(y, scores):
    """DeLong (1988) with structural components computed naively from the psi kernel."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)  # (k, m), (k, n)
    aucs = psi.mean(axis=(1, 2))
    cov = np.cov(v10) / pos.shape[1] + np.cov(v01) / neg.shape[1]
    return aucs, cov


@pytest.mark.parametrize("ties", [True, False])
def test_delong_matches_bruteforce(ties):
    y, pa = _data(90, 8, ties)
    rng = np.random.default_rng(1)
    pb = np.clip(pa + rng.normal(0, 0.2, len(pa)), 0, 1)
    if ties:
        pb = np.round(pb, 1)
    scores = np.vstack([pa, pb])
    aucs, cov = delong_covariance(y, scores)
    ref_aucs, ref_cov = _delong_bruteforce(y, scores)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)
    np.testing.assert_allclose(aucs, [skm.roc_auc_score(y, s) for s in scores], atol=1e-12)
    res = delong_test(y, pa, pb)
    var = ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1]
    from scipy.stats import norm

    z = (ref_aucs[0] - ref_aucs[1]) / np.sqrt(var)
    assert res["z"] == pytest.approx(z) and res["p_value"] == pytest.approx(2 * norm.sf(abs(z)))
    assert res["ci_low"] == pytest.approx(res["diff"] - 1.959964 * np.sqrt(var), abs=1e-6)


def _study_frame(y, p, ids=None):
    ids = ids if ids is not None else [f"s{i}" for i in range(len(y))]
    return pd.DataFrame({"study_id": ids, "y_true": y, "y_prob": p})


def test_compare_runs_identical_and_different():
    y, pa = _data(120, 9)
    a = _study_frame(y, pa)
    same = compare_runs(a, a.sample(frac=1.0, random_state=0), n=200)
    assert same["diff"] == 0 and same["bootstrap"]["p_value"] == 1.0
    assert same["bootstrap"]["ci_low"] == 0 and same["bootstrap"]["ci_high"] == 0
    assert same["delong"]["p_value"] == 1.0 and same["delong"]["diff"] == 0
    noise = np.random.default_rng(0).random(len(y))
    worse = compare_runs(a, _study_frame(y, noise), n=500, seed=1)
    assert worse["diff"] == pytest.approx(skm.roc_auc_score(y, pa) - skm.roc_auc_score(y, noise))
    assert worse["bootstrap"]["p_value"] < 0.01 and worse["delong"]["p_value"] < 0.01
    assert worse["bootstrap"]["ci_low"] > 0
    assert compare_runs(a, _study_frame(y, noise), n=500, seed=1) == worse


def test_compare_runs_refuses_different_ids_and_labels():
    y, p = _data(20, 0)
    a = _study_frame(y, p)
    b = _study_frame(y, p, [f"s{i}" for i in range(19)] + ["x99"])
    with pytest.raises(UserError, match=r"only in A \['s19'\].*only in B \['x99'\]"):
        compare_runs(a, b)
    with pytest.raises(UserError, match="y_true differs"):
        compare_runs(a, _study_frame(1 - y, p))
    with pytest.raises(UserError, match="repeated study_id"):
        compare_runs(pd.concat([a, a]), a)


def test_compare_runs_one_class_and_video_key():
    a = _study_frame(np.zeros(5, int), np.linspace(0, 1, 5))
    out = compare_runs(a, a)
    assert out["diff"] is None and out["reason"] == "only one class in y_true: n_pos=0, n=5"
    y, p = _data(30, 1)
    vids = pd.DataFrame({"video_id": [f"v{i}" for i in range(30)], "y_true": y, "y_prob": p})
    res = compare_runs(vids, vids.assign(y_prob=1 - p), n=50, on="video_id")
    assert res["on"] == "video_id" and res["diff"] == pytest.approx(2 * skm.roc_auc_score(y, p) - 1)
    tiny = _study_frame(np.array([0, 0, 1, 0]), np.array([0.1, 0.2, 0.9, 0.3]))
    assert "reason" in compare_runs(tiny, tiny, n=20)["delong"]  # 1 positive: no DeLong variance


def test_evaluate_predictions_one_class_val():
    cfg = Config()
    cfg.evaluate.bootstrap = 20
    out = evaluate_predictions({"val": _video_frame(10, 5, True), "test": _video_frame(30, 6)}, cfg)
    assert out["thresholds"]["study"] == dict.fromkeys(("youden", "f1", "f2", "sens90"))
    assert out["reasons"]["thresholds"]["study"]["youden"].startswith("val split: only one class")
    assert out["test"]["study"]["f1@youden"]["value"] is None
    assert "could not be chosen" in out["reasons"]["test"]["study"]["f1@youden"]
    assert out["test"]["study"]["auroc"]["value"] is not None


def test_bootstrap_ci_independent_of_row_order():
    """Resamples are drawn in score order, so shuffling the input rows changes nothing."""
    y, p = _data(150, 6)
    perm = np.random.default_rng(0).permutation(len(y))
    names = ["auroc", "ap", "f1"]
    a, b = bootstrap_ci(y, p, names, n=100), bootstrap_ci(y[perm], p[perm], names, n=100)
    for k in names:  # equal up to summation order within tie groups
        assert a[k] == pytest.approx(b[k], abs=1e-12)
