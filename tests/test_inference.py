"""Running trained models: block-bounded clip inference, evaluate_run (+ compare) and predict."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_WIDTH, make_dataset, tiny_finetune_config
from sklearn.metrics import roc_auc_score
from torch import nn

from echoclr_cli.config import Config
from echoclr_cli.data.datasets import clip_starts
from echoclr_cli.errors import UserError
from echoclr_cli.finetune import classification_loss, run_finetune
from echoclr_cli.inference import eval_loader, evaluate_run, predict, predict_videos, study_csv_path

WIDTH = TINY_WIDTH


def tiny_cfg(**sections) -> Config:
    return tiny_finetune_config(epochs=1, **sections)


class SpyModel(nn.Module):
    """logit = mean of the clip; records how many clips each forward saw."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, x):  # (n, 3, T, H, W) -> (n,)
        self.sizes.append(x.shape[0])
        return self.scale * (x.mean(dim=(1, 2, 3, 4)) - 0.5)


# --------------------------------------------------------------------------- block-bounded inference
@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    return make_dataset(
        tmp_path_factory.mktemp("long"), n_studies=3, videos_per_study=(1, 2), frames=(150, 200)
    )


def test_all_clips_never_exceed_block_size(long_data):
    cfg = tiny_cfg(evaluate={"clips_per_video": "all", "block_size": 8, "batch_size": 2})
    df = pd.read_csv(long_data / "manifest.csv")
    loader = eval_loader(df, long_data, "as", cfg, clip_len=4, stride=1)
    model = SpyModel()
    out = predict_videos(model, loader, torch.device("cpu"), block_size=8)
    assert max(model.sizes) <= 8 and out.max_block <= 8
    expected_clips = [
        len(clip_starts(int(n), 4, 1, "all")) for n in df.sort_values("video_id")["n_frames"]
    ]
    got = out.video.sort_values("video_id")["n_clips"].tolist()
    assert got == expected_clips and min(got) >= 37  # long videos: many more clips than a block
    assert sum(model.sizes) == sum(got)
    # the block size changes memory, never the result
    big = predict_videos(SpyModel(), loader, torch.device("cpu"), block_size=10_000)
    assert np.allclose(big.video["y_prob"], out.video["y_prob"], atol=1e-12)


def test_video_probability_is_the_mean_clip_sigmoid_and_loss_is_per_clip(long_data):
    cfg = tiny_cfg(evaluate={"clips_per_video": 3, "batch_size": 2})
    df = pd.read_csv(long_data / "manifest.csv")
    loader = eval_loader(df, long_data, "as", cfg, clip_len=4, stride=1)
    model = SpyModel()
    loss = lambda logits, y: classification_loss(logits, y, 2.0, 0.1, reduction="none")  # noqa: E731
    out = predict_videos(model, loader, torch.device("cpu"), block_size=4, loss_fn=loss)
    from echoclr_cli.data.augment import prepare_clips

    probs, losses = [], []
    for item in loader.dataset:
        clips = prepare_clips(item["x"], None, None)  # (N, 3, T, H, W)
        logits = 4.0 * (clips.mean(dim=(1, 2, 3, 4)) - 0.5)
        probs.append(float(torch.sigmoid(logits).mean()))
        losses.append(
            classification_loss(logits, item["y"].expand(len(logits)), 2.0, 0.1, reduction="none")
        )
    assert np.allclose(out.video["y_prob"], probs, atol=1e-6)
    assert out.loss == pytest.approx(float(torch.cat(losses).mean()), rel=1e-5)
    assert (out.video["n_clips"] == 3).all()


def test_model_mode_is_restored(long_data):
    cfg = tiny_cfg()
    loader = eval_loader(pd.read_csv(long_data / "manifest.csv"), long_data, "as", cfg, 4, 1)
    model = SpyModel().train()
    predict_videos(model, loader, torch.device("cpu"), block_size=4)
    assert model.training


# --------------------------------------------------------------------------- evaluate / compare / predict
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = make_dataset(root, n_studies=16)
    run_finetune(tiny_cfg(), data, root / "a")
    run_finetune(tiny_cfg(runtime={"seed": 1}), data, root / "b")
    return data, root / "a", root / "b"


def test_evaluate_run_rebuilds_the_model_and_matches_the_run(runs, tmp_path):
    data, run_a, _ = runs
    res = evaluate_run(
        tiny_cfg(), run_a, None, ["test"], out_dir=tmp_path / "ev"
    )  # data from finetune.json
    assert res.checkpoint.name == "best.pt" and res.splits == ["val", "test"]
    own = json.loads((run_a / "metrics.json").read_text())
    assert res.metrics["test"]["study"]["auroc"]["value"] == pytest.approx(
        own["test"]["study"]["auroc"]["value"]
    )
    pred = pd.read_csv(tmp_path / "ev" / "predictions_test_study.csv")
    assert res.metrics["test"]["study"]["auroc"]["value"] == pytest.approx(
        roc_auc_score(pred["y_true"], pred["y_prob"])
    )
    assert set(res.table.columns) == {"split", "level", "metric", "value", "ci_low", "ci_high", "n"}
    assert (tmp_path / "ev" / "metrics.json").exists() and res.comparison is None


def test_evaluate_compare_gives_the_paired_difference(runs, tmp_path):
    data, run_a, run_b = runs
    res = evaluate_run(tiny_cfg(), run_a, data, ["test"], compare=run_b, out_dir=tmp_path / "ev")
    cmp = res.comparison["splits"]["test"]["study"]
    assert cmp["diff"] == pytest.approx(cmp["auroc_a"] - cmp["auroc_b"])
    assert cmp["auroc_a"] == pytest.approx(res.metrics["test"]["study"]["auroc"]["value"])
    assert {"diff", "ci_low", "ci_high", "p_value"} <= set(cmp["bootstrap"])
    assert "delong" in cmp and cmp["n"] == len(res.predictions["test"]["study"])
    assert json.loads((tmp_path / "ev" / "comparison.json").read_text())["run_b"] == str(run_b)
    same = evaluate_run(tiny_cfg(), run_a, data, ["test"], compare=run_a, out_dir=tmp_path / "ev2")
    s = same.comparison["splits"]["test"]["study"]
    assert s["diff"] == 0 and s["bootstrap"]["p_value"] == 1.0


def test_evaluate_refuses_absent_split_and_other_task(runs, tmp_path):
    data, run_a, _ = runs
    with pytest.raises(UserError, match="ext_test"):
        evaluate_run(tiny_cfg(), run_a, data, ["ext_test"], out_dir=tmp_path / "ev")
    lvh = tmp_path / "lvh"
    run_finetune(tiny_cfg(finetune={"task": "lvh", "epochs": 1}), data, lvh)
    with pytest.raises(UserError, match="different tasks"):
        evaluate_run(tiny_cfg(), run_a, data, ["test"], compare=lvh, out_dir=tmp_path / "ev3")
    with pytest.raises(UserError, match="config.yaml"):
        evaluate_run(tiny_cfg(), tmp_path, data, ["test"])


def test_evaluate_all_clips(runs, tmp_path):
    data, run_a, _ = runs
    res = evaluate_run(
        tiny_cfg(evaluate={"clips_per_video": "all", "block_size": 3}),
        run_a,
        data,
        ["test"],
        out_dir=tmp_path / "ev",
    )
    assert (res.predictions["test"]["video"]["n_clips"] > 2).all()


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
    model = SSLModel(build_backbone("r3d_18", WIDTH), 16, 8)
    engine.save("last.pt", model, torch.optim.Adam(model.parameters()), None)
    with pytest.raises(UserError, match="pretrain checkpoint"):
        predict(tiny_cfg(), tmp_path / "ssl", data, tmp_path / "p.csv")


def test_predict_raw_files_preprocesses_into_a_sibling_dir(runs, tmp_path):
    from preprocess_fixtures import dicom_dataset, fan_video, save

    _, run_a, _ = runs
    raw = tmp_path / "raw"
    for i in range(3):
        frames, _ = fan_video(12, 96, 120, seed=40 + i)
        save(
            dicom_dataset(frames, patient=f"PAT{i}", study=f"1.2.9.{i}"),
            raw / f"PAT{i}" / f"file{i}",
        )
    cfg = tiny_cfg(preprocess={"min_frames": 8, "workers": 1, "max_skipped_frac": 1.0})
    out = tmp_path / "pred" / "raw.csv"
    res = predict(cfg, run_a, raw, out)
    assert res.preprocessed and res.data_dir == tmp_path / "pred" / "raw_data"
    assert (res.data_dir / "manifest.csv").exists() and (res.data_dir / "skipped.csv").exists()
    from echoclr_cli.data.store import load_video

    man = pd.read_csv(res.data_dir / "manifest.csv")
    assert load_video(res.data_dir / man["path"][0]).shape[1:3] == (32, 32)  # the run's frame size
    study = pd.read_csv(res.study_csv, dtype={"original_study_id": str})
    assert sorted(study["original_study_id"]) == ["1.2.9.0", "1.2.9.1", "1.2.9.2"]
    assert study["y_prob"].between(0, 1).all() and res.n_videos == 3
