"""Figures: each function writes a non-empty PNG (also for one-class or empty input)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from echoclr_cli.errors import UserError
from echoclr_cli.metrics.plots import (
    GRID,
    _curves,
    band_label,
    label_efficiency_table,
    plot_calibration,
    plot_confusion,
    plot_evaluation,
    plot_history,
    plot_label_efficiency,
    plot_roc_pr,
)
from echoclr_cli.schema import RESULT_COLUMNS


def _png(path) -> tuple[int, int]:
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path)  # (H, W, 4)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01  # something was drawn
    return img.shape[:2]


def _preds(n: int = 60, seed: int = 0, one_class: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.zeros(n, int) if one_class else (rng.random(n) < 0.35).astype(int)
    p = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1).round(2)
    return pd.DataFrame({"study_id": [f"s{i}" for i in range(n)], "y_true": y, "y_prob": p})


def test_roc_pr_writes_png_with_bands(tmp_path):
    path = plot_roc_pr(_preds(), tmp_path / "plots" / "test_study", n_boot=50, seed=0)
    assert path == tmp_path / "plots" / "test_study_roc_pr.png"
    h, w = _png(path)
    assert w > 1.5 * h  # two panels side by side
    assert _png(plot_roc_pr(_preds(), tmp_path / "noband", n_boot=0)) == (h, w)


def test_roc_pr_bands_resample_the_unit_and_say_so(tmp_path, monkeypatch):
    """The bands resample what metrics.json's CIs resample (evaluate.bootstrap_unit) and their
    legend names it: patients when the rows carry patient ids, else the rows themselves."""
    from matplotlib.axes import Axes

    drawn: list[tuple[str, np.ndarray]] = []
    real = Axes.fill_between

    def spy(self, x, y1, y2=0, **kw):
        drawn.append((kw.get("label", ""), np.asarray(y2) - np.asarray(y1)))
        return real(self, x, y1, y2, **kw)

    monkeypatch.setattr(Axes, "fill_between", spy)
    df = _preds(60, 2)
    df["patient_id"] = [f"p{i // 3}" for i in range(len(df))]  # 3 studies per patient
    plot_roc_pr(df, tmp_path / "by_patient", n_boot=100, seed=0, unit="patient")
    plot_roc_pr(df, tmp_path / "by_study", n_boot=100, seed=0, unit="item")
    labels = [label for label, _ in drawn]
    assert all("patient" in lab for lab in labels[:2]), labels
    assert all("patient" not in lab and "study" in lab for lab in labels[2:]), labels
    # the same curves with other resamples: the bands differ
    assert not np.allclose(drawn[0][1], drawn[2][1])


def test_curves_match_sklearn_roc():
    from sklearn.metrics import roc_curve

    df = _preds(200, 3)
    y, p = df["y_true"].to_numpy(), df["y_prob"].to_numpy()
    tpr_at, prec_at = _curves(y, p)
    fpr, tpr, _ = roc_curve(y, p)
    ref = [tpr[fpr <= g + 1e-12].max() for g in GRID]
    np.testing.assert_allclose(tpr_at, ref)
    assert prec_at[0] >= prec_at[-1] and np.all(np.diff(prec_at) <= 1e-12)  # envelope decreases


@pytest.mark.parametrize("fn", ["roc_pr", "confusion", "calibration"])
def test_one_class_and_empty_write_png(tmp_path, fn):
    for name, df in (("one", _preds(20, 1, one_class=True)), ("empty", _preds(0))):
        if fn == "roc_pr":
            path = plot_roc_pr(df, tmp_path / name, n_boot=20)
        elif fn == "confusion":
            path = plot_confusion(df, tmp_path / f"{name}.png")
        else:
            path = plot_calibration(df, tmp_path / f"{name}.png")
        _png(path)


def test_confusion_and_calibration(tmp_path):
    _png(plot_confusion(_preds(), tmp_path / "cm.png", threshold=0.42, title="test/study"))
    _png(plot_calibration(_preds(), tmp_path / "cal.png", n_bins=10))
    with pytest.raises(UserError, match="lack columns"):
        plot_confusion(_preds().drop(columns="y_prob"), tmp_path / "x.png")


def test_history(tmp_path):
    hist = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "step": [10, 20, 30],
            "loss": [0.9, 0.7, 0.6],
            "val_loss": [0.8, 0.75, 0.7],
            "val_auroc": [0.6, 0.7, 0.72],
            "lr": [1e-4] * 3,
            "seconds": [1.0, 1.1, 1.0],
        }
    )
    hist.to_csv(tmp_path / "history.csv", index=False)
    _png(plot_history(tmp_path / "history.csv", tmp_path / "history.png"))
    hist[["epoch", "loss"]].to_csv(tmp_path / "loss_only.csv", index=False)
    _png(plot_history(tmp_path / "loss_only.csv", tmp_path / "loss_only.png"))
    pd.DataFrame(columns=["epoch", "loss"]).to_csv(tmp_path / "empty.csv", index=False)
    _png(plot_history(tmp_path / "empty.csv", tmp_path / "empty.png"))
    with pytest.raises(UserError, match="not found"):
        plot_history(tmp_path / "missing.csv", tmp_path / "m.png")


def _results(seeds=(0,)) -> pd.DataFrame:
    rows = []
    for init, base in (("random", 0.55), ("kinetics", 0.6), ("echoclr", 0.7)):
        for ratio, n in ((0.01, 10), (0.1, 100), (1.0, 1000)):
            for seed in seeds:
                v = min(0.99, base + 0.1 * np.log10(n) + 0.01 * seed)
                rows.append(
                    ("as", init, ratio, n, seed, 1e-4, "test", "study", "auroc")
                    + (v, v - 0.05, v + 0.05, n, "patient")
                )
    rows.append(("as", "random", 0.01, 10, 9, 1e-4, "ext_test", "study", "auroc") + (None,) * 5)
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))  # the sweep's results.csv schema


def test_label_efficiency_table_bands():
    one = label_efficiency_table(_results(), "as", "test")
    row = one[(one["init"] == "echoclr") & (one["ratio"] == 0.1)].iloc[0]
    assert row["n_seeds"] == 1 and row["low"] == pytest.approx(row["value"] - 0.05)
    many = label_efficiency_table(_results(seeds=(0, 1, 2)), "as", "test")
    row = many[(many["init"] == "echoclr") & (many["ratio"] == 0.1)].iloc[0]
    assert row["n_seeds"] == 3 and row["value"] == pytest.approx(0.9 + 0.01)
    assert row["high"] - row["value"] == pytest.approx(0.01)  # sd of 0.90, 0.91, 0.92
    assert label_efficiency_table(_results(), "as", "ext_test").empty  # NaN values dropped


def test_band_label_names_what_the_band_shows():
    assert band_label(pd.Series([3, 3])) == "mean +/- sd over seeds"
    assert band_label(pd.Series([1, 1])) == "bootstrap CI"
    assert band_label(pd.Series([3, 1, 1])).startswith("mean +/- sd where several seeds")


def test_label_efficiency_plot(tmp_path):
    _png(plot_label_efficiency(_results(), tmp_path / "le.png", task="as", split="test"))
    _png(
        plot_label_efficiency(
            _results((0, 1)), tmp_path / "le2.png", "as", "test", inits=["echoclr", "random"]
        )
    )
    _png(plot_label_efficiency(_results(), tmp_path / "none.png", task="lvh", split="test"))
    with pytest.raises(UserError, match="lacks columns"):
        plot_label_efficiency(
            _results().drop(columns="n_studies"), tmp_path / "x.png", "as", "test"
        )


def test_plot_evaluation_bundle(tmp_path):
    from echoclr_cli.metrics.aggregate import aggregate_levels

    def videos(seed, one_class=False):
        df = _preds(30, seed, one_class)
        return df.assign(video_id=df["study_id"] + "_v", patient_id=df["study_id"])

    levels = {"val": aggregate_levels(videos(1)), "ext_test": aggregate_levels(videos(2, True))}
    thresholds = {"video": {"youden": 0.5}, "study": {"youden": None}}
    paths = plot_evaluation(levels, tmp_path, thresholds, n_boot=20)
    names = sorted(p.name for p in paths)
    assert "ext_test_video_confusion_youden.png" in names
    assert "ext_test_study_confusion_youden.png" not in names  # threshold not chosen
    assert "val_video_confusion_youden.png" not in names  # never in-sample
    assert len(names) == 2 * 2 * 3 + 1
    for p in paths:
        _png(p)
