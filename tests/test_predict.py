"""`echoclr predict`: unlabelled datasets and raw files; public CSVs hold hashed ids only."""

from __future__ import annotations

import json
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_WIDTH, make_dataset, tiny_finetune_config

from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.finetune.run import run_finetune
from echoclr_cli.inference.predict import (
    original_ids_path,
    predict,
    resolve_threshold,
    study_csv_path,
    val_thresholds,
)


def tiny_cfg(**sections) -> Config:
    return tiny_finetune_config(epochs=1, **sections)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = make_dataset(root, n_studies=16)
    run_finetune(tiny_cfg(), data, root / "a")
    return data, root / "a", None


def unlabeled_copy(data, dst):
    shutil.copytree(data, dst)
    df = pd.read_csv(dst / "manifest.csv").drop(columns=["as", "lvh"])
    df.to_csv(dst / "manifest.csv", index=False)
    meta = json.loads((dst / "dataset.json").read_text())
    meta["label_columns"] = []
    (dst / "dataset.json").write_text(json.dumps(meta))
    return dst


def test_predict_unlabeled_dataset(runs, tmp_path):
    data, run_a, _ = runs
    src = unlabeled_copy(data, tmp_path / "unlabeled")
    out = tmp_path / "out" / "preds.csv"
    res = predict(tiny_cfg(), run_a, src, out)
    assert res.study_csv == study_csv_path(out) == tmp_path / "out" / "preds_study.csv"
    video, study = pd.read_csv(out), pd.read_csv(res.study_csv)
    man = pd.read_csv(src / "manifest.csv")
    assert len(video) == len(man) and set(video["video_id"]) == set(man["video_id"])
    assert len(study) == man["study_id"].nunique() == res.n_studies
    assert video["y_prob"].between(0, 1).all() and "y_true" not in video.columns
    # y_pred at the run's validation operating point (the default), per level
    t = val_thresholds(run_a)
    assert res.threshold_source == "val" and res.thresholds == t
    assert list(study.columns) == ["study_id", "patient_id", "y_prob", "y_pred", "n_videos"]
    assert (study["y_pred"] == (study["y_prob"] >= t["study"]).astype(int)).all()
    assert (video["y_pred"] == (video["y_prob"] >= t["video"]).astype(int)).all()
    # a dataset dir keeps its own splits (the column says which rows are which)
    assert set(video["split"]) == set(man["split"]) and not res.preprocessed
    # same probabilities as the run's own test predictions (same clips, same weights)
    own = pd.read_csv(run_a / "predictions_test_study.csv").set_index("study_id")
    mine = study.set_index("study_id").loc[own.index]
    assert np.allclose(mine["y_prob"], own["y_prob"], atol=1e-6)
    with pytest.raises(UserError, match="already exists"):
        predict(tiny_cfg(), run_a, src, out)
    predict(tiny_cfg(), run_a, src, out, overwrite=True)


def test_val_thresholds_are_the_runs_youden_points_per_level(runs):
    _, run_a, _ = runs
    chosen = json.loads((run_a / "metrics.json").read_text())["thresholds"]
    assert val_thresholds(run_a) == {
        "video": chosen["video"]["youden"],
        "study": chosen["study"]["youden"],
    }


def test_threshold_number_gives_y_pred_at_it(runs, tmp_path):
    data, run_a, _ = runs
    res = predict(tiny_cfg(), run_a, data, tmp_path / "p.csv", threshold="0.5")
    assert res.threshold_source == "user" and res.thresholds == {"video": 0.5, "study": 0.5}
    for csv in (res.video_csv, res.study_csv):
        df = pd.read_csv(csv)
        assert (df["y_pred"] == (df["y_prob"] >= 0.5).astype(int)).all()
    res = predict(tiny_cfg(), run_a, data, tmp_path / "q.csv", threshold=0.0)
    assert (pd.read_csv(res.study_csv)["y_pred"] == 1).all()  # every probability is >= 0


@pytest.mark.parametrize("bad", ["youden", "1.5", "-0.1", "nan"])
def test_threshold_neither_val_nor_a_probability_is_refused_before_writing(runs, tmp_path, bad):
    data, run_a, _ = runs
    with pytest.raises(UserError, match="neither 'val' nor a probability") as e:
        predict(tiny_cfg(), run_a, data, tmp_path / "p.csv", threshold=bad)
    assert "--threshold val" in e.value.fix
    assert list(tmp_path.iterdir()) == []


def test_run_without_a_validation_operating_point(runs, tmp_path):
    """'val' is refused naming the fix (a number); by default predict gives no y_pred and says so."""
    data, run_a, _ = runs
    run = tmp_path / "run"
    shutil.copytree(run_a, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["thresholds"] = {}  # as written by a fine-tune without a val split
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(UserError, match="no operating point chosen on validation") as e:
        predict(tiny_cfg(), run, data, tmp_path / "p.csv", threshold="val")
    assert e.value.fix == "pass a probability, e.g. --threshold 0.5"
    assert not (tmp_path / "p.csv").exists()
    res = predict(tiny_cfg(), run, data, tmp_path / "p.csv")
    assert res.thresholds is None and "y_pred" not in pd.read_csv(res.study_csv).columns
    assert res.notes == [
        f"no y_pred: {run} has no operating point chosen on validation (metrics.json "
        "'thresholds': no val split, or a one-class one); pass --threshold <probability> for one"
    ]
    res = predict(tiny_cfg(), run, data, tmp_path / "n.csv", threshold="0.3")
    assert "y_pred" in pd.read_csv(res.study_csv).columns


def test_multiclass_run_refuses_a_numeric_threshold():
    thresholds, source, notes = resolve_threshold(None, Path("r"), False, multiclass=True)
    assert thresholds is None and source is None and notes == []
    assert resolve_threshold("val", Path("r"), False, multiclass=True)[0] is None
    with pytest.raises(UserError, match="multi-class run; its y_pred is the class"):
        resolve_threshold("0.5", Path("r"), False, multiclass=True)


def test_predict_refuses_a_pretrain_checkpoint(runs, tmp_path):
    from echoclr_cli.models.backbones import SSLModel, build_backbone
    from echoclr_cli.training.engine import Engine

    data, _, _ = runs
    engine = Engine(tiny_cfg(), tmp_path / "ssl", section="pretrain")
    model = SSLModel(build_backbone("r3d_18", TINY_WIDTH), 16, 8)
    engine.save("last.pt", model, torch.optim.Adam(model.parameters()), None)
    with pytest.raises(UserError, match="pretrain checkpoint"):
        predict(tiny_cfg(), tmp_path / "ssl", data, tmp_path / "p.csv")


def hospital_tree(root: Path, n: int = 3, frames: int = 12) -> Path:
    """``n`` studies as a hospital export: MRN/DATE_ACC/SE0001/IM00001 (no extension), with
    AccessionNumber ``ACC{i}``, PatientID ``MRN{i}`` and StudyInstanceUID ``1.2.9.{i}``."""
    from preprocess_fixtures import dicom_dataset, fan_video, save

    for i in range(n):
        video, _ = fan_video(frames, 96, 120, seed=40 + i)
        ds = dicom_dataset(video, patient=f"MRN{i}", study=f"1.2.9.{i}")
        ds.AccessionNumber = f"ACC{i}"
        save(ds, root / f"MRN{i}" / f"20190305_ACC{i}" / "SE0001" / "IM00001")
    return root


def raw_cfg() -> Config:
    return tiny_cfg(preprocess={"min_frames": 8, "workers": 1, "max_skipped_frac": 1.0})


def test_predict_raw_files_writes_three_files_beside_the_csv_and_nothing_else(
    runs, tmp_path, monkeypatch
):
    """A bare --out predictions.csv in the working directory: the two public CSVs and one
    private file named after them; the preprocessed input went to a temporary folder, removed."""
    from typer.testing import CliRunner

    from echoclr_cli.cli import app

    _, run_a, _ = runs
    raw = hospital_tree(tmp_path / "raw")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where the temporary folder goes
    (tmp_path / "tmp").mkdir()
    tempfile.tempdir = None  # re-read TMPDIR
    try:
        res = CliRunner().invoke(app, [
            "predict", str(run_a), "--input", str(raw), "--out", "predictions.csv",
            "--device", "cpu", "--profile", "demo", "--set", "model.width=0.125",
            "--set", "preprocess.min_frames=8", "--set", "preprocess.workers=1",
        ])  # fmt: skip
    finally:
        tempfile.tempdir = None
    assert res.exit_code == 0, res.output
    files = ["predictions.csv", "predictions.private.csv", "predictions_study.csv"]
    assert sorted(p.name for p in work.iterdir()) == files
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary dataset is gone
    assert "y_pred = y_prob >= " in res.output and "chosen on validation" in res.output
    video, study = (pd.read_csv(work / f, dtype=str) for f in files[::2])
    assert "split" not in video.columns and "split" not in study.columns  # new studies
    assert set(video.columns) == {"video_id", "study_id", "patient_id", "y_prob", "y_pred",
                                  "n_clips"}  # fmt: skip
    assert set(study["y_pred"]) <= {"0", "1"} and len(study) == 3
    # the public CSVs hold the hashed ids only; the way back is private (0600), one file
    for csv in files[::2]:
        text = (work / csv).read_text()
        assert not any(x in text for x in ("1.2.9.", "MRN", "ACC", "IM0", "original")), csv
    private = work / "predictions.private.csv"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    back = pd.read_csv(private, dtype=str, keep_default_na=False)
    assert list(back.columns) == [
        "video_id", "study_id", "patient_id", "AccessionNumber", "PatientID", "StudyInstanceUID",
        "original_file", "original_study_id", "original_patient_id",
    ]  # fmt: skip
    assert sorted(back["AccessionNumber"]) == ["ACC0", "ACC1", "ACC2"]
    assert sorted(back["PatientID"]) == ["MRN0", "MRN1", "MRN2"]
    assert sorted(back["StudyInstanceUID"]) == ["1.2.9.0", "1.2.9.1", "1.2.9.2"]
    assert sorted(back["original_file"]) == [
        str(raw / f"MRN{i}" / f"20190305_ACC{i}" / "SE0001" / "IM00001") for i in range(3)
    ]
    # results join back to the worklist by accession number
    joined = study.merge(back[["study_id", "AccessionNumber"]], on="study_id")
    assert sorted(joined["AccessionNumber"]) == ["ACC0", "ACC1", "ACC2"]
    assert set(back["video_id"]) == set(video["video_id"])


def test_predict_keep_data_keeps_the_preprocessed_input_there(runs, tmp_path):
    _, run_a, _ = runs
    raw = hospital_tree(tmp_path / "raw")
    out = tmp_path / "pred" / "raw.csv"
    keep = tmp_path / "kept"
    res = predict(raw_cfg(), run_a, raw, out, keep_data=keep)
    assert res.preprocessed and res.data_dir == keep
    assert (keep / "manifest.csv").exists() and (keep / "skipped.csv").exists()
    from echoclr_cli.data.store import load_video

    man = pd.read_csv(keep / "manifest.csv")
    assert load_video(keep / man["path"][0]).shape[1:3] == (32, 32)  # the run's frame size
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "raw.csv",
        "raw.private.csv",
        "raw_study.csv",
    ]
    assert res.original_ids_csv == original_ids_path(out) == out.parent / "raw.private.csv"
    # an existing non-empty --keep-data is refused (the kept data is reusable as --input)
    for p in out.parent.iterdir():
        p.unlink()
    with pytest.raises(UserError, match="already exists and is not empty") as e:
        predict(raw_cfg(), run_a, raw, out, keep_data=keep)
    assert f"pass {keep} as --input" in e.value.fix
    assert list(out.parent.iterdir()) == []
    # predicting the kept dataset again: its splits, the same private ids
    again = predict(raw_cfg(), run_a, keep, out)
    assert "split" in pd.read_csv(out).columns
    back = pd.read_csv(again.original_ids_csv, dtype=str)
    assert sorted(back["AccessionNumber"]) == ["ACC0", "ACC1", "ACC2"]
    # a second predict refuses to overwrite the private file too
    res.video_csv.unlink()
    res.study_csv.unlink()
    with pytest.raises(UserError, match="raw.private.csv already exists"):
        predict(raw_cfg(), run_a, keep, out)


def test_keep_data_with_a_dataset_input_is_refused(runs, tmp_path):
    data, run_a, _ = runs
    with pytest.raises(UserError, match="--keep-data: .* is already a dataset"):
        predict(tiny_cfg(), run_a, data, tmp_path / "p.csv", keep_data=tmp_path / "k")
    assert list(tmp_path.iterdir()) == []


def test_predict_raw_input_counts_skipped_files(runs, tmp_path):
    _, run_a, _ = runs
    raw = hospital_tree(tmp_path / "raw", n=2)
    good = raw / "MRN0" / "20190305_ACC0" / "SE0001" / "IM00001"
    data = good.read_bytes()
    (good.parent / "IM00002").write_bytes(data[: len(data) * 6 // 10])  # truncated pixel data
    res = predict(raw_cfg(), run_a, raw, tmp_path / "p.csv")
    assert sum(res.skipped.values()) >= 1 and res.n_studies == 2
    assert res.data_dir is None  # temporary: removed
    # above preprocess.max_skipped_frac: the error names --keep-data, not the removed folder
    strict = tiny_cfg(preprocess={"min_frames": 8, "workers": 1, "max_skipped_frac": 0.01})
    with pytest.raises(UserError, match="could not be used") as e:
        predict(strict, run_a, raw, tmp_path / "q.csv")
    assert "echoclr-predict-" not in str(e.value) and "--keep-data DIR" in e.value.fix
    assert not (tmp_path / "q.csv").exists()


def test_predict_on_a_dataset_without_id_map_writes_nothing_private(runs, tmp_path):
    data, run_a, _ = runs
    stale = original_ids_path(tmp_path / "p.csv")
    stale.write_text("from an earlier predict")
    res = predict(tiny_cfg(), run_a, data, tmp_path / "p.csv", overwrite=True)
    assert res.original_ids_csv is None and not (tmp_path / "private").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "p_study.csv"]  # stale: gone


def test_predict_checks_arguments_before_writing(runs, tmp_path):
    data, _, _ = runs
    with pytest.raises(UserError, match="does not exist"):
        predict(tiny_cfg(), tmp_path / "nope", data, tmp_path / "o" / "p.csv")
    assert not (tmp_path / "o").exists()
