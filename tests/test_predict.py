"""`echoclr predict`: unlabelled datasets and raw files; public CSVs hold hashed ids only."""

from __future__ import annotations

import json
import shutil
import stat

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_WIDTH, make_dataset, tiny_finetune_config

from echoclr_cli.config import Config
from echoclr_cli.errors import UserError
from echoclr_cli.finetune import run_finetune
from echoclr_cli.predict import original_ids_path, predict, study_csv_path


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
    assert list(study.columns) == ["study_id", "patient_id", "y_prob", "n_videos"]
    assert set(video["split"]) == set(man["split"]) and not res.preprocessed
    # same probabilities as the run's own test predictions (same clips, same weights)
    own = pd.read_csv(run_a / "predictions_test_study.csv").set_index("study_id")
    mine = study.set_index("study_id").loc[own.index]
    assert np.allclose(mine["y_prob"], own["y_prob"], atol=1e-6)
    with pytest.raises(UserError, match="already exists"):
        predict(tiny_cfg(), run_a, src, out)
    predict(tiny_cfg(), run_a, src, out, overwrite=True)


def test_predict_refuses_a_pretrain_checkpoint(runs, tmp_path):
    from echoclr_cli.engine import Engine
    from echoclr_cli.models import SSLModel, build_backbone

    data, _, _ = runs
    engine = Engine(tiny_cfg(), tmp_path / "ssl", section="pretrain")
    model = SSLModel(build_backbone("r3d_18", TINY_WIDTH), 16, 8)
    engine.save("last.pt", model, torch.optim.Adam(model.parameters()), None)
    with pytest.raises(UserError, match="pretrain checkpoint"):
        predict(tiny_cfg(), tmp_path / "ssl", data, tmp_path / "p.csv")


def test_predict_raw_files_preprocesses_into_a_sibling_dir(runs, tmp_path):
    from preprocess_fixtures import dicom_tree

    _, run_a, _ = runs
    raw = dicom_tree(tmp_path / "raw", 3, frames=12, seed=40, study="1.2.9")
    cfg = tiny_cfg(preprocess={"min_frames": 8, "workers": 1, "max_skipped_frac": 1.0})
    out = tmp_path / "pred" / "raw.csv"
    res = predict(cfg, run_a, raw, out)
    assert res.preprocessed and res.data_dir == tmp_path / "pred" / "raw_data"
    assert (res.data_dir / "manifest.csv").exists() and (res.data_dir / "skipped.csv").exists()
    from echoclr_cli.data.store import load_video

    man = pd.read_csv(res.data_dir / "manifest.csv")
    assert load_video(res.data_dir / man["path"][0]).shape[1:3] == (32, 32)  # the run's frame size
    study = pd.read_csv(res.study_csv, dtype=str)
    assert pd.to_numeric(study["y_prob"]).between(0, 1).all() and res.n_videos == 3
    # the public CSVs hold the hashed ids only; the way back is private (0700 folder, 0600 file)
    for csv in (out, res.study_csv):
        text = csv.read_text()
        assert not any(x in text for x in ("1.2.9.", "PAT0", "PAT1", "PAT2", "original")), csv
    assert (
        res.original_ids_csv
        == original_ids_path(out)
        == tmp_path / "pred/private/raw_original_ids.csv"
    )
    assert stat.S_IMODE(res.original_ids_csv.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(res.original_ids_csv.stat().st_mode) == 0o600
    back = pd.read_csv(res.original_ids_csv, dtype=str)
    assert sorted(back["original_study_id"]) == ["1.2.9.0", "1.2.9.1", "1.2.9.2"]
    assert sorted(back["original_patient_id"]) == ["PAT0", "PAT1", "PAT2"]
    assert set(back["study_id"]) == set(study["study_id"])
    # a second predict refuses to overwrite the private file too
    res.video_csv.unlink()
    res.study_csv.unlink()
    with pytest.raises(UserError, match="raw_original_ids.csv already exists"):
        predict(cfg, run_a, res.data_dir, out)


def test_predict_on_a_dataset_without_id_map_writes_nothing_private(runs, tmp_path):
    data, run_a, _ = runs
    res = predict(tiny_cfg(), run_a, data, tmp_path / "p.csv")
    assert res.original_ids_csv is None and not (tmp_path / "private").exists()


def test_predict_checks_arguments_before_writing(runs, tmp_path):
    data, _, _ = runs
    with pytest.raises(UserError, match="does not exist"):
        predict(tiny_cfg(), tmp_path / "nope", data, tmp_path / "o" / "p.csv")
    assert not (tmp_path / "o").exists()
