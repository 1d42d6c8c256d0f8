"""`echoclr embed`: embeddings of runs and inits, index CSVs, 2-D map, summary, label probe; TB."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch
from explain_fixtures import make_runs
from typer.testing import CliRunner

from echoclr_cli import cli
from echoclr_cli.analysis import embed as em
from echoclr_cli.errors import UserError
from echoclr_cli.inference.run import load_encoder
from echoclr_cli.models.backbones import build_backbone


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("embed"))


@pytest.fixture(scope="module")
def embedded(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("emb") / "out"
    res = em.run_embed(
        runs.cfg,
        sources=[runs.pretrain, runs.finetune, "random"],
        data_dir=runs.data,
        out_dir=out,
        probe_labels=["lvh"],
        map_method="pca",
    )
    return res


def test_embed_writes_video_and_study_embeddings_without_private_ids(runs, embedded):
    manifest = pd.read_csv(runs.data / "manifest.csv")
    assert [e.kind for e in embedded.sources] == ["pretrain", "finetune", "random"]
    for enc in embedded.sources:
        d = embedded.out_dir / enc.name
        x = np.load(d / "embeddings_video.npy")
        idx = pd.read_csv(d / "index_video.csv")
        assert x.shape == (len(manifest), enc.backbone.out_dim) and x.dtype == np.float32
        assert list(idx["row"]) == list(range(len(x)))
        assert set(idx["video_id"]) == set(manifest["video_id"])
        assert {"video_id", "study_id", "split", "site", "as", "lvh", "map_x", "map_y"} <= set(idx)
        assert "patient_id" not in idx and "path" not in idx  # nothing beyond hashed ids
        xs = np.load(d / "embeddings_study.npy")
        sidx = pd.read_csv(d / "index_study.csv")
        assert xs.shape == (manifest["study_id"].nunique(), x.shape[1])
        s0 = sidx["study_id"].iloc[0]  # a study's embedding is the mean of its videos'
        np.testing.assert_allclose(xs[0], x[(idx["study_id"] == s0).to_numpy()].mean(0), rtol=1e-5)
        assert (d / "map.png").stat().st_size > 0 and (d / "summary.json").is_file()


def test_embed_video_features_are_the_mean_of_the_clip_features(runs):
    enc = load_encoder(runs.cfg, runs.finetune)
    from echoclr_cli.data.manifest import load_manifest

    df = load_manifest(runs.data).iloc[[5, 0]]  # not the dataset's (study, video) order
    x, ids = em.embed_videos(enc, runs.cfg, df, runs.data)
    from echoclr_cli.data.augment import prepare_clips
    from echoclr_cli.data.datasets import ClipDataset

    ds = ClipDataset(df, runs.data, None, enc.clip_len, enc.stride, train=False,
                     clips_per_video=runs.cfg.evaluate.clips_per_video)  # fmt: skip
    with torch.no_grad():
        item = next(ds[i] for i in range(len(ds)) if ds[i]["video_id"] == df.video_id.iloc[0])
        want = enc.backbone.eval()(prepare_clips(item["x"], None, None)).mean(0).numpy()
    np.testing.assert_allclose(x[0], want, rtol=1e-4, atol=1e-5)
    assert list(ids["video_id"]) == list(df["video_id"])


def test_probe_table_has_auroc_with_ci_per_source(embedded):
    p = embedded.probe
    auc = p[(p.metric == "auroc") & (p.level == "study")]
    assert set(auc.source) == {e.name for e in embedded.sources}
    assert set(auc.split) <= {"val", "test"} and "test" in set(auc.split)
    assert (auc.label == "lvh").all()
    finite = auc.dropna(subset=["ci_low"])
    assert ((finite.ci_low <= finite.value) & (finite.value <= finite.ci_high)).all()
    csv = pd.read_csv(embedded.out_dir / "probe.csv")
    assert len(csv) == len(p)


def test_summary_has_silhouette_and_knn_per_colouring(embedded):
    s = pd.read_csv(embedded.out_dir / "summary.csv")
    assert set(s.colouring) == {"as", "lvh", "split", "site"}
    lvh = s[s.colouring == "lvh"]
    assert lvh.knn_auroc.notna().all() and lvh.silhouette.between(-1, 1).all()


def test_knn_excludes_the_items_own_study():
    # two identical videos per study, labels random per study: with the same study allowed
    # to vote, kNN would be perfect; excluding it leaves chance.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 8))
    x = np.repeat(base, 2, axis=0)
    groups = np.repeat(np.arange(40), 2)
    y = np.repeat(rng.integers(0, 2, 40), 2).astype(float)
    assert em.knn_auroc(x, y, groups, k=1) < 0.8
    assert em.knn_auroc(x, y, np.arange(80), k=1) == 1.0  # each video its own group


def test_map_falls_back_to_pca_without_umap(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ImportError
    x = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
    coords, used = em.map_2d(x, "auto")
    assert used == "pca" and coords.shape == (30, 2)
    with pytest.raises(UserError, match="umap-learn"):
        em.map_2d(x, "umap")


@pytest.mark.slow
def test_map_uses_umap_when_installed():
    pytest.importorskip("umap")
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    coords, used = em.map_2d(x, "auto")
    assert used == "umap" and coords.shape == (40, 2) and np.isfinite(coords).all()


def test_kinetics_init_loads_weights_and_normalises(runs, tmp_path):
    torch.manual_seed(1)
    state = build_backbone("r3d_18", 1.0).state_dict()
    path = tmp_path / "r3d_18_k400.pth"
    torch.save(state, path)
    cfg = runs.cfg.model_copy(deep=True)
    cfg.model.width = 1.0
    cfg.finetune.weights = path
    enc = load_encoder(cfg, "kinetics")
    assert enc.kind == "kinetics" and enc.normalization is not None
    assert torch.equal(enc.backbone.state_dict()["stem.0.weight"], state["stem.0.weight"])
    cfg.model.width = 0.125
    with pytest.raises(UserError, match="width 1.0"):
        load_encoder(cfg, "kinetics")


def test_bad_input_one_line(runs, tmp_path):
    with pytest.raises(UserError, match="no label column 'nope'"):
        em.run_embed(runs.cfg, sources=["random"], data_dir=runs.data, out_dir=tmp_path / "a",
                     probe_labels=["nope"])  # fmt: skip
    with pytest.raises(UserError, match="neither a run dir"):
        em.run_embed(runs.cfg, sources=["imagenet"], data_dir=runs.data, out_dir=tmp_path / "b")
    with pytest.raises(UserError, match="train split"):
        em.run_embed(runs.cfg, sources=["random"], data_dir=runs.data, out_dir=tmp_path / "c",
                     splits=["test"], probe_labels=["lvh"])  # fmt: skip
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        em.run_embed(runs.cfg, sources=["random"], data_dir=runs.data, out_dir=tmp_path / "d")
    assert (tmp_path / "d" / "keep.txt").read_text() == "x"


def test_probe_refuses_one_class_train(runs):
    idx = pd.DataFrame(
        {"video_id": list("abcd"), "study_id": list("abcd"), "patient_id": list("abcd"),
         "split": ["train", "train", "test", "test"], "lvh": [1, 1, 0, 1]}
    )  # fmt: skip
    with pytest.raises(UserError, match="one class"):
        em.probe(np.zeros((4, 3)), idx, "lvh", runs.cfg)


def test_tensorboard_projector_and_history(runs, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from echoclr_cli.training import tb

    cfg = runs.cfg.model_copy(deep=True)
    cfg.runtime.tensorboard = True
    em.run_embed(cfg, sources=["random"], data_dir=runs.data, out_dir=tmp_path / "e",
                 map_method="pca", splits=["val", "test"])  # fmt: skip
    assert (tmp_path / "e" / "random" / "tensorboard" / "projector_config.pbtxt").is_file()
    # scalars regenerated from history.csv: twice -> still one events file, same values
    for _ in range(2):
        log_dir = tb.write_history(runs.finetune)
    files = list(log_dir.glob("events.out.tfevents.*"))
    assert len(files) == 1
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    hist = pd.read_csv(runs.finetune / "history.csv")
    loss = [e.value for e in acc.Scalars("loss")]
    np.testing.assert_allclose(loss, hist["loss"], rtol=1e-6)


def test_engine_writes_tensorboard_when_asked(tmp_path):
    pytest.importorskip("tensorboard")
    from explain_fixtures import tiny_pretrain_config
    from helpers import make_dataset

    from echoclr_cli.pretrain.run import run_pretrain

    data = make_dataset(tmp_path, n_studies=6, size=16, frames=(6, 10))
    run_pretrain(tiny_pretrain_config(runtime={"tensorboard": True}), data, tmp_path / "on")
    assert list((tmp_path / "on" / "tensorboard" / "history").glob("events.out.tfevents.*"))
    run_pretrain(tiny_pretrain_config(), data, tmp_path / "off")
    assert not (tmp_path / "off" / "tensorboard").exists()


def test_cli_embed_table_and_errors(runs, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        cli.app,
        ["embed", str(runs.pretrain), "--init", "random", "--data", str(runs.data), "--out",
         str(tmp_path / "o"), "--probe", "lvh", "--map", "pca", "--device", "cpu",
         "--set", "model.width=0.125", "--set", "evaluate.bootstrap=20"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "probe AUROC" in res.output and (tmp_path / "o" / "probe.csv").is_file()
    res = runner.invoke(
        cli.app,
        ["embed", str(runs.pretrain), "--data", str(runs.data), "--out", str(tmp_path / "p"),
         "--probe", "ef", "--map", "pca"],
    )  # fmt: skip
    assert res.exit_code == 1 and "no label column 'ef'" in res.output
    assert "Traceback" not in res.output


def test_clip_len_defaults_to_the_runs_own_and_can_be_set(runs, monkeypatch):
    pt = load_encoder(runs.cfg, runs.pretrain)
    assert pt.kind == "pretrain" and pt.clip_len == 4 and pt.normalization is None
    short = load_encoder(runs.cfg, runs.finetune, clip_len=2)
    assert short.clip_len == 2
    from echoclr_cli.data.manifest import load_manifest

    df = load_manifest(runs.data).head(3)
    seen = []
    real = em.inference.eval_loader

    def spy(*args, **kwargs):
        loader = real(*args, **kwargs)
        seen.append(loader.dataset.clip_len)
        return loader

    monkeypatch.setattr(em.inference, "eval_loader", spy)
    x, _ = em.embed_videos(short, runs.cfg, df, runs.data)
    assert seen == [2] and x.shape[0] == 3
