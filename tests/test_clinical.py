"""Clinical metrics: calibration, operating points, subgroups, sweep columns, DICOM fields.

Point values are checked against scikit-learn or a direct computation; the bootstrap CIs are
checked by simulation against values computed analytically from the generating distribution.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.integrate import quad
from scipy.special import expit
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, confusion_matrix

from echoclr_cli.clinical import core as c
from echoclr_cli.clinical import write
from echoclr_cli.clinical.subgroups import frame_rate_band
from echoclr_cli.clinical.sweep import holm, paired_pvalues, sweep_clinical_columns
from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.metrics.compare import delong_test


def scores(n: int, seed: int = 0, shift: float = 1.2, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = rng.normal(shift * y, 1.0)
    p = expit(s)
    if ties:
        p = np.round(p, 1)
    return y, p


# --------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("ties", [False, True])
def test_brier_and_quantile_bins_match_sklearn(ties):
    y, p = scores(500, ties=ties)
    assert c.brier_score(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    bins = c.quantile_bins(y, p, 10)
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="quantile")
    np.testing.assert_allclose(bins["frac_pos"], frac, atol=1e-12)
    np.testing.assert_allclose(bins["mean_pred"], mean, atol=1e-12)
    assert bins["n"].sum() == len(y)
    # ECE = bin-share weighted |observed - predicted| over those bins (direct computation)
    w = bins["n"].to_numpy() / len(y)
    assert c.expected_calibration_error(y, p) == pytest.approx(np.sum(w * np.abs(frac - mean)))


def test_calibration_slope_matches_unpenalised_logistic_regression_and_intercept_is_citl():
    y, p = scores(800, seed=1)
    slope, intercept = c.calibration_slope_intercept(y, p)
    lr = LogisticRegression(C=1e12, tol=1e-12, max_iter=10_000).fit(c.logit(p)[:, None], y)
    assert slope == pytest.approx(float(lr.coef_[0, 0]), rel=1e-5)
    # calibration-in-the-large: the score equation of logit P = a + logit(p) holds at a
    assert abs(np.sum(y - expit(intercept + c.logit(p)))) < 1e-6


def test_perfectly_calibrated_probabilities_give_slope_1_intercept_0():
    rng = np.random.default_rng(3)
    p = expit(rng.normal(0, 1.5, 20_000))
    y = (rng.random(len(p)) < p).astype(int)
    slope, intercept = c.calibration_slope_intercept(y, p)
    assert slope == pytest.approx(1.0, abs=0.05)
    assert intercept == pytest.approx(0.0, abs=0.05)
    assert c.expected_calibration_error(y, p) < 0.02


def test_batched_slope_ci_uses_the_resamples_of_bootstrap_distribution():
    from echoclr_cli.metrics.bootstrap import bootstrap_distribution, percentile_interval

    y, p = scores(150, seed=4, ties=True)
    opts = c.ClinicalOptions(n_boot=60, seed=9)
    cells = c.calibration_cells(y, p, opts)
    fns = {
        "calibration_slope": lambda a, b: c.calibration_slope_intercept(a, b)[0],
        "calibration_intercept": lambda a, b: c.calibration_slope_intercept(a, b)[1],
    }
    dist = bootstrap_distribution(y, p, fns, n=60, seed=9)
    for k in fns:
        low, high = percentile_interval(dist[k], 0.95)
        assert cells[k]["ci_low"] == pytest.approx(low, rel=1e-7)
        assert cells[k]["ci_high"] == pytest.approx(high, rel=1e-7)
    assert cells["brier"]["ci_low"] < cells["brier"]["value"] < cells["brier"]["ci_high"]


def test_separable_data_have_no_finite_slope():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    slope, _ = c.calibration_slope_intercept(y, p)
    assert math.isnan(slope)
    assert math.isnan(c.calibration_slope_intercept([1, 1], [0.2, 0.3])[0])  # one class


def test_temperature_and_platt_recover_the_distortion():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 1.5, 20_000)
    y = (rng.random(len(z)) < expit(z)).astype(int)
    overconfident = expit(2.0 * z)
    assert c.fit_temperature(y, overconfident) == pytest.approx(2.0, rel=0.05)
    a, b = c.fit_platt(y, expit(2.0 * z + 1.0))  # truth: logit = (x - 1) / 2
    assert b == pytest.approx(0.5, rel=0.05) and a == pytest.approx(-0.5, abs=0.05)
    fitted = c.fit_recalibration(y, overconfident, "temperature")
    fixed = c.apply_recalibration(overconfident, fitted)
    assert c.expected_calibration_error(y, fixed) < c.expected_calibration_error(y, overconfident)
    assert c.fit_recalibration([1, 1, 1], [0.1, 0.2, 0.3], "platt")["params"] is None


# --------------------------------------------------------------------------- operating points
def test_operating_values_match_confusion_matrix_and_threshold_for_sensitivity():
    y, p = scores(300, seed=2, ties=True)
    for t in (0.3, 0.5, 0.7):
        tn, fp, fn, tp = confusion_matrix(y, (p >= t).astype(int)).ravel()
        v = c.operating_values(y, p, t)
        assert v["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert v["specificity"] == pytest.approx(tn / (tn + fp))
        assert v["ppv"] == pytest.approx(tp / (tp + fp))
        assert v["npv"] == pytest.approx(tn / (tn + fn))
    for target in (0.9, 0.95, 0.8):
        t = c.threshold_for_sensitivity(y, p, target)
        assert c.operating_values(y, p, t)["sensitivity"] >= target
        higher = np.unique(p)[np.unique(p) > t]
        if len(higher):  # the next higher candidate misses the target
            assert c.operating_values(y, p, higher.min())["sensitivity"] < target


def test_operating_points_come_from_val_only():
    opts = c.ClinicalOptions(at_sensitivity=0.8, at_threshold=0.42, n_boot=0)
    yv, pv = scores(200, seed=7)
    t = c.choose_operating_points(yv, pv, opts)
    assert set(t) == {"sens90", "sens95", "youden", "sens80", "fixed"}
    assert t["fixed"] == 0.42
    assert t["sens95"] <= t["sens90"] <= t["sens80"]
    assert c.sens_name(0.875) == "sens87.5"


def test_options_are_validated():
    with pytest.raises(UserError, match="calibrate"):
        c.ClinicalOptions(calibrate="isotonic")
    with pytest.raises(UserError, match="at_sensitivity"):
        c.ClinicalOptions(at_sensitivity=1.5)
    with pytest.raises(UserError, match="at_threshold"):
        c.ClinicalOptions(at_threshold=-0.1)
    cfg = Config()
    cfg.evaluate.at_sensitivity = 0.85
    cfg.evaluate.calibrate = "platt"
    opts = c.ClinicalOptions.from_config(cfg, n_boot=7)
    assert (opts.at_sensitivity, opts.calibrate, opts.n_boot) == (0.85, "platt", 7)


# --------------------------------------------------------------------------- CI coverage
def _sim(n_pos: int, n_neg: int, rng):
    """Scores ~ N(1, 1) for positives, N(0, 1) for negatives; probability = sigmoid(score)."""
    s = np.r_[rng.normal(1, 1, n_pos), rng.normal(0, 1, n_neg)]
    return np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)], expit(s)


def test_bootstrap_cis_cover_the_analytic_values():
    """200 simulated test sets (80 positives, 120 negatives, fixed class counts as the stratified
    bootstrap assumes): the 95% CIs of sensitivity and specificity at a fixed threshold and of
    the Brier score contain the analytic values in 88-99% of the simulations."""
    n_pos, n_neg, t = 80, 120, 0.6
    sens_true = 1 - norm.cdf(math.log(t / (1 - t)), loc=1)
    spec_true = norm.cdf(math.log(t / (1 - t)), loc=0)

    def e_sq(mu, target):
        return quad(lambda s: (expit(s) - target) ** 2 * norm.pdf(s, mu), -12, 12)[0]

    brier_true = (n_pos * e_sq(1, 1) + n_neg * e_sq(0, 0)) / (n_pos + n_neg)
    rng = np.random.default_rng(11)
    opts = c.ClinicalOptions(n_boot=200, seed=0)
    hits = np.zeros(3)
    n_sim = 200
    for i in range(n_sim):
        y, p = _sim(n_pos, n_neg, rng)
        opts.seed = i
        op = c.operating_cells(y, p, t, opts)
        br = c._cells(y, p, {"brier": c.brier_score}, opts)["brier"]
        for k, (cell, truth) in enumerate(
            [(op["sensitivity"], sens_true), (op["specificity"], spec_true), (br, brier_true)]
        ):
            hits[k] += cell["ci_low"] <= truth <= cell["ci_high"]
    coverage = hits / n_sim
    assert ((coverage >= 0.88) & (coverage <= 0.99)).all(), coverage


# --------------------------------------------------------------------------- whole evaluation
def predictions(manifest: pd.DataFrame, seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    out = {}
    for split, g in manifest.groupby("split"):
        y = g["as"].to_numpy()
        out[split] = pd.DataFrame({
            "video_id": g["video_id"], "study_id": g["study_id"], "patient_id": g["patient_id"],
            "y_true": y.astype(float), "y_prob": expit(rng.normal(1.5 * y - 0.7, 1.0)),
        })  # fmt: skip
    return out


def fake_manifest(n_studies: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_studies):
        split = ("train", "val", "test", "ext_test")[s % 4]
        label = int(rng.random() < 0.4)
        year = 2015 + s % 3
        for v in range(1 + (s // 4) % 2):
            rows.append({
                "video_id": f"S{s:04d}_V{v}", "study_id": f"S{s:04d}", "patient_id": f"P{s:04d}",
                "split": split, "path": f"videos/S{s:04d}_V{v}.npy", "n_frames": 30,
                "fps": 25.0 + 30 * v, "fps_source": "header", "height": 32, "width": 32, "channels": 1,
                "study_year": year, "source_hash": "x", "as": label,
                "manufacturer": "GE Healthcare" if s % 5 else "Philips",  # known vendors
            })  # fmt: skip
    return pd.DataFrame(rows)


def test_clinical_metrics_structure_subgroups_and_val_only_choice():
    man = fake_manifest()
    preds = predictions(man)
    opts = c.ClinicalOptions(calibrate="both", at_threshold=0.5, n_boot=50, subgroup_min_n=20)
    out = write.clinical_metrics({s: preds[s] for s in ("val", "test", "ext_test")}, opts, man)
    study = out["levels"]["study"]
    assert set(study["thresholds"]) == {"sens90", "sens95", "youden", "fixed"}
    assert set(study["recalibration"]) == {"temperature", "platt"}
    test = study["splits"]["test"]
    assert set(test["calibration"]) == {"raw", "temperature", "platt"}
    assert "operating_points" not in study["splits"]["val"]  # never in-sample on val
    cell = test["operating_points"]["youden"]["sensitivity"]
    assert cell["ci_low"] <= cell["value"] <= cell["ci_high"]
    # thresholds depend on val only: other test predictions leave them unchanged
    preds2 = dict(preds, test=preds["test"].assign(y_prob=0.5))
    out2 = write.clinical_metrics({s: preds2[s] for s in ("val", "test")}, opts, man)
    assert out2["levels"]["study"]["thresholds"] == study["thresholds"]
    # subgroups: study-constant columns at study level, fps varies within study -> video level
    sub = out["subgroups"]["test"]
    assert {"study_year", "manufacturer", "frame_rate_band"} <= set(sub)
    assert "as" not in sub and "video_id" not in sub and "path" not in sub
    assert sub["study_year"]["level"] == "study" and sub["frame_rate_band"]["level"] == "video"
    groups = {g["value"]: g for g in sub["study_year"]["groups"]}
    assert set(groups) == {"2015", "2016", "2017"}
    assert sum(g["n"] for g in groups.values()) == preds["test"]["study_id"].nunique()
    small = [g for g in sub["manufacturer"]["groups"] if g["n"] < 20]
    assert small and all("< 20" in g["warning"] for g in small)
    summary = write.summarize(out)
    assert {"split", "variant", "metric"} <= set(summary.calibration.columns)
    assert set(summary.operating["metric"]) == {"sensitivity", "specificity", "ppv", "npv"}
    assert not summary.subgroups.empty


def test_requested_subgroup_column_must_exist():
    man = fake_manifest(40)
    opts = c.ClinicalOptions(subgroups=["vendor"], n_boot=0)
    with pytest.raises(UserError, match="vendor"):
        write.clinical_metrics(predictions(man), opts, man)
    opts = c.ClinicalOptions(subgroups=["manufacturer"], n_boot=0)
    out = write.clinical_metrics(predictions(man), opts, man)
    assert set(out["subgroups"]["test"]) == {"manifest" and "manufacturer"}


def test_no_val_split_gives_a_reason_and_no_operating_points():
    man = fake_manifest(40)
    out = write.clinical_metrics({"test": predictions(man)["test"]}, c.ClinicalOptions(n_boot=0))
    study = out["levels"]["study"]
    assert "no val split" in study["reasons"]["thresholds"]
    assert study["splits"]["test"]["operating_points"] == {}
    assert "subgroups" not in out  # no manifest given


def test_write_clinical_adds_key_and_figures_without_touching_the_callers_dict(tmp_path):
    man = fake_manifest(40)
    cfg = Config()
    cfg.evaluate.bootstrap = 10
    cfg.evaluate.calibrate = "temperature"
    metrics = {"test": {"study": {}}, "thresholds": {}, "reasons": {}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    preds = {s: df for s, df in predictions(man).items() if s in ("val", "test")}
    paths = write.write_clinical(cfg, preds, tmp_path, manifest=man, metrics=metrics)
    assert "clinical" not in metrics
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["clinical"]["options"]["calibrate"] == "temperature"
    names = {p.name for p in paths}
    assert {"test_study_reliability.png", "test_study_decision_curve.png"} <= names
    cfg.evaluate.plots = False
    assert [p.name for p in write.write_clinical(cfg, preds, tmp_path)] == ["metrics.json"]


def test_frame_rate_band():
    assert [frame_rate_band(f) for f in (24, 30, 49.9, 50, 80, 120)] == [
        "<30", "30-49", "30-49", "50-79", ">=80", ">=80"]  # fmt: skip
    assert frame_rate_band(None) is None and frame_rate_band("x") is None


# --------------------------------------------------------------------------- sweep helpers
def fake_sweep(root, inits=("random", "echoclr"), ratios=(0.5, 1.0), seed: int = 0):
    """A sweep dir with selection.csv, results.csv and per-run prediction CSVs (no training)."""
    from echoclr_cli.metrics.aggregate import aggregate_levels
    from echoclr_cli.metrics.splits import evaluate_predictions

    man = fake_manifest(160)
    rng = np.random.default_rng(seed)
    sel, results = [], []
    cfg = Config()
    cfg.evaluate.bootstrap = 20
    for init_i, init in enumerate(inits):
        for ratio in ratios:
            run_dir = f"runs/as/{init}/r{ratio:g}_lr0.001_s0"
            d = root / run_dir
            d.mkdir(parents=True)
            preds = {}
            for split, g in man[man["split"] != "train"].groupby("split"):
                y = g["as"].to_numpy()
                strength = 0.8 + init_i * 1.2 + ratio
                preds[split] = pd.DataFrame({
                    "video_id": g["video_id"], "study_id": g["study_id"],
                    "patient_id": g["patient_id"], "y_true": y.astype(float),
                    "y_prob": expit(rng.normal(strength * y - strength / 2, 1.0)),
                })  # fmt: skip
            for split, lv in ((s, aggregate_levels(df)) for s, df in preds.items()):
                for level, df in lv.items():
                    df.to_csv(d / f"predictions_{split}_{level}.csv", index=False)
            metrics = evaluate_predictions(preds, cfg)
            (d / "metrics.json").write_text(json.dumps(metrics))
            n_studies = int(100 * ratio)
            sel.append({"task": "as", "init": init, "ratio": ratio, "n_studies": n_studies,
                        "seed": 0, "lr": 0.001, "run_dir": run_dir, "val_auroc":
                        metrics["val"]["study"]["auroc"]["value"], "val_loss": 0.5,
                        "candidates": 1, "finished": 1, "reason": "best"})  # fmt: skip
            for split in ("test", "ext_test"):
                for level in ("study", "video"):
                    for metric, cell in metrics[split][level].items():
                        results.append({"task": "as", "init": init, "ratio": ratio,
                                        "n_studies": n_studies, "seed": 0, "lr": 0.001,
                                        "split": split, "level": level, "metric": metric,
                                        **cell})  # fmt: skip
    selection = pd.DataFrame(sel)
    res = pd.DataFrame(results)
    res = res[["task", "init", "ratio", "n_studies", "seed", "lr", "split", "level", "metric",
               "value", "ci_low", "ci_high", "n"]]  # fmt: skip
    selection.to_csv(root / "selection.csv", index=False)
    res.to_csv(root / "results.csv", index=False)
    selection[["task", "init", "ratio", "n_studies", "seed", "lr", "run_dir"]].to_csv(
        root / "plan.csv", index=False
    )
    return selection, res, man


def test_paired_pvalues_equal_direct_delong_and_holm(tmp_path):
    selection, _, _ = fake_sweep(tmp_path)
    pairs = paired_pvalues(selection, tmp_path, ["test", "ext_test"], ["random", "echoclr"])
    assert len(pairs) == 4  # 2 ratios x 2 splits x 1 pair
    row = pairs[(pairs["ratio"] == 1.0) & (pairs["split"] == "test")].iloc[0]
    a = pd.read_csv(tmp_path / "runs/as/random/r1_lr0.001_s0/predictions_test_study.csv")
    b = pd.read_csv(tmp_path / "runs/as/echoclr/r1_lr0.001_s0/predictions_test_study.csv")
    m = a.merge(b, on="study_id")
    direct = delong_test(m["y_true_x"], m["y_prob_x"], m["y_prob_y"])
    assert row["p_value"] == pytest.approx(direct["p_value"])
    assert row["diff"] == pytest.approx(direct["diff"])
    assert (row["init_a"], row["init_b"]) == ("random", "echoclr")
    assert (pairs["p_holm"] >= pairs["p_value"] - 1e-15).all()
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])
    # a run without predictions: named reason, no p-value
    (tmp_path / "runs/as/echoclr/r0.5_lr0.001_s0/predictions_test_study.csv").unlink()
    pairs = paired_pvalues(selection, tmp_path, ["test"])
    bad = pairs[pairs["ratio"] == 0.5].iloc[0]
    assert math.isnan(bad["p_value"]) and "no predictions_test_study.csv" in bad["reason"]


def test_sweep_clinical_columns_add_calibration_rows(tmp_path):
    selection, results, _ = fake_sweep(tmp_path)
    opts = c.ClinicalOptions(n_boot=10)
    out = sweep_clinical_columns(results, selection, tmp_path, ["test", "ext_test"], opts)
    assert list(out.columns) == list(results.columns)
    added = out[out["metric"].isin(c.CALIBRATION_METRICS)]
    assert len(added) == 4 * 2 * 2 * 4  # runs x splits x levels x metrics
    row = added[(added["init"] == "random") & (added["ratio"] == 1.0) & (added["split"] == "test")
                & (added["level"] == "study") & (added["metric"] == "brier")].iloc[0]  # fmt: skip
    pred = pd.read_csv(tmp_path / "runs/as/random/r1_lr0.001_s0/predictions_test_study.csv")
    assert row["value"] == pytest.approx(brier_score_loss(pred["y_true"], pred["y_prob"]))
    again = sweep_clinical_columns(out, selection, tmp_path, ["test"], opts)
    assert len(again) == len(out)  # idempotent


# --------------------------------------------------------------------------- DICOM fields
def test_deidentified_fields_keep_only_coarse_values():
    from pydicom.dataset import Dataset

    from echoclr_cli.data.dicom_fields import FIELDS, age_band, deidentified_fields

    ds = Dataset()
    ds.Manufacturer = "GE Vingmed Ultrasound"
    ds.ManufacturerModelName = "Vivid E95 SN 1234567"
    ds.StudyDate = "20190314"
    ds.PatientBirthDate = "19550601"
    ds.PatientSex = "f"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-778899"
    ds.StudyInstanceUID = "1.2.840.113619.2.55.3.1234"
    ds.FrameTime = "20.0"
    out = deidentified_fields(ds)
    assert set(out) == set(FIELDS)
    assert out == {"manufacturer": "GE Healthcare", "model": "Vivid",  # the allow-list
                   "study_year": 2019, "sex": "F", "age_band": "60-69",
                   "frame_rate_band": "50-79"}  # fmt: skip
    text = json.dumps(out)
    for secret in ("Doe", "778899", "1.2.840", "20190314", "1955", "1234567"):
        assert secret not in text
    ds.PatientAge = "093Y"  # PatientAge wins over dates; >= 90 pooled
    ds.CineRate = "30"
    ds.Manufacturer = "1.2.3.4.5"  # a UID in a text field is no known vendor
    out = deidentified_fields(ds)
    assert (out["age_band"], out["frame_rate_band"], out["manufacturer"]) == (">=90", "30-49",
                                                                               "other")  # fmt: skip
    assert deidentified_fields(Dataset()) == dict.fromkeys(FIELDS)
    assert age_band(0.5) == "0-9" and age_band(None) is None and age_band(140) is None
    ds2 = Dataset()
    ds2.PatientAge = "006M"
    ds2.PatientSex = "X"
    assert deidentified_fields(ds2)["age_band"] == "0-9"
    assert deidentified_fields(ds2)["sex"] is None


# --------------------------------------------------------------------------- hooks
def test_finetune_and_evaluate_write_the_clinical_key(tmp_path):
    """The fine-tune's final evaluation and `echoclr evaluate` (with --at-sensitivity,
    --at-threshold, --calibrate) both put ``clinical`` into metrics.json."""
    from typer.testing import CliRunner

    from echoclr_cli.cli import app
    from echoclr_cli.finetune.run import run_finetune
    from tests.helpers import make_dataset, tiny_finetune_config

    data = make_dataset(tmp_path, n_studies=16, videos_per_study=(1, 2), frames=(8, 10), size=16)
    cfg = tiny_finetune_config(epochs=1, finetune={"task": "as"})
    res = run_finetune(cfg, data, tmp_path / "run")
    assert "clinical" not in res.metrics  # the caller's dict keeps its split-only shape
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(on_disk["clinical"]["levels"]) == {"study", "video"}
    assert "study_year" in on_disk["clinical"]["subgroups"]["test"]
    out = tmp_path / "eval"
    args = ["evaluate", str(tmp_path / "run"), "--out", str(out), "--bootstrap", "5",
            "--at-sensitivity", "0.8", "--at-threshold", "0.4", "--calibrate", "platt",
            "--device", "cpu", "--profile", "demo", "--set", "evaluate.plots=false"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    clinical = json.loads((out / "metrics.json").read_text())["clinical"]
    study = clinical["levels"]["study"]
    assert study["thresholds"]["fixed"] == 0.4 and "sens80" in study["thresholds"]
    assert set(study["recalibration"]) == {"platt"}
    assert clinical["options"]["bootstrap"] == 5
    bad = CliRunner().invoke(app, [*args[:-4], "--calibrate", "isotonic"])
    assert bad.exit_code != 0


def test_no_degenerate_ci_for_a_class_of_one_and_adaptive_ece_bins():
    y = np.array([1, 0, 0, 0, 0])
    p = np.array([0.9, 0.2, 0.4, 0.3, 0.1])
    opts = c.ClinicalOptions(n_boot=50)
    op = c.operating_cells(y, p, 0.5, opts)
    assert op["sensitivity"]["value"] == 1.0 and op["sensitivity"]["ci_low"] is None
    assert c.calibration_cells(y, p, opts)["brier"]["ci_low"] is None
    y2, p2 = scores(60, seed=8)
    cells = c.calibration_cells(y2, p2, opts)
    assert cells["ece"]["bins"] == 6 and cells["brier"]["ci_low"] is not None
    assert cells["ece"]["value"] == pytest.approx(c.expected_calibration_error(y2, p2, 6))
    assert c.effective_bins(19, 10) == 2 and c.effective_bins(5000, 10) == 10
