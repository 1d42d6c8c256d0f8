"""View filter in preprocessing (--view-model / --keep-view / --view-min) and pairs within a view.

A tiny multi-view synthetic archive is preprocessed once per module; view models are small
TorchScript files with a JSON class list (constant outputs: known results) and a one-epoch
multi-class run dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import tiny_finetune_config
from preprocess_fixtures import small_cfg
from torch import nn

from echoclr_cli.config.sections import SynthConfig
from echoclr_cli.data import readers
from echoclr_cli.data.datasets import PairDataset, pair_view_column
from echoclr_cli.data.manifest import categorical_columns, load_manifest
from echoclr_cli.errors import UserError
from echoclr_cli.preprocess import view_filter as vfm
from echoclr_cli.synth import archive as synth

FOUR = ["plax", "psax", "a4c", "a2c"]


class Constant(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.register_buffer("b", torch.tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.b.expand(x.shape[0], -1) + 0 * x.mean()


def _script(path: Path, logits, classes=FOUR, with_json=True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(Constant(logits)), str(path))
    if with_json:
        info = {"classes": classes, "clip_len": 4, "stride": 1, "frame_size": 32}
        Path(str(path) + ".json").write_text(json.dumps(info))
    return path


def _cfg(**pre):
    cfg = small_cfg(**pre)
    cfg.synth = SynthConfig(studies=4, seed=3, height=64, width=80, min_frames=8, max_frames=10,
                            views=FOUR, workers=1, extras=False)  # fmt: skip
    cfg.runtime.device = "cpu"
    cfg.runtime.workers = 0
    cfg.preprocess.split = (0.5, 0.25, 0.25)  # 4 studies: train, val and test all present
    return cfg


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("vf")
    synth.synthesize(_cfg(), root / "raw")
    return root


def _run(cfg, raw, out):
    # the constant view models are TorchScript files this module wrote: trusted (test_model_trust
    # checks that a TorchScript file is refused without the flag)
    return vfm.preprocess_with_view_filter(cfg, raw, out, trust_model_code=True)


def test_filter_constant_models_and_reuse(archive, tmp_path, monkeypatch):
    raw, out = archive / "raw", tmp_path / "data"
    plax_model = _script(tmp_path / "m" / "plax.pt", [1.0, 0.0, 0.0, 0.0])  # p(plax) = 0.475
    cfg = _cfg(view_model=plax_model, keep_view="plax")
    res, vf = _run(cfg, raw, out)
    n = res.n_videos
    assert vf.kept == n and vf.filtered == 0 and vf.predicted == n
    df = load_manifest(out)
    assert set(df["view_pred"]) == {"plax"}
    assert np.allclose(df["view_prob"].astype(float), np.e / (np.e + 3), atol=1e-5)
    assert "view_pred" in categorical_columns(df) and "view" in df.columns  # next to the true view
    cache = pd.read_csv(out / vfm.CACHE)
    assert len(cache) == n and cache["model_key"].nunique() == 1

    # re-run with a threshold: no decode, no model run; every video filtered with its top class
    calls = {"decode": 0, "predict": 0}
    real_dicom, real_predict = readers.read_dicom, vfm.predict_views

    def count_decode(*a, **k):
        calls["decode"] += 1
        return real_dicom(*a, **k)

    def count_predict(*a, **k):
        calls["predict"] += 1
        return real_predict(*a, **k)

    monkeypatch.setattr(readers, "read_dicom", count_decode)
    monkeypatch.setattr(vfm, "predict_views", count_predict)
    cfg = _cfg(view_model=plax_model, keep_view="plax", keep_view_min=0.5)
    with pytest.raises(UserError, match="the view filter kept no video"):
        _run(cfg, raw, out)  # nothing kept: the dataset has no videos (one clear line)
    assert calls == {"decode": 0, "predict": 0}
    skipped = pd.read_csv(out / "skipped.csv", keep_default_na=False)
    rows = skipped[skipped["reason"] == "view_filter"]
    assert len(rows) == n and rows["detail"].str.contains("top class plax").all()
    assert not any("/" in d for d in rows["detail"])  # no path in the public file

    # back to the top-class rule: same cached predictions, all kept, skipped.csv not duplicated
    cfg = _cfg(view_model=plax_model, keep_view="plax")
    res, vf = _run(cfg, raw, out)
    assert calls == {"decode": 0, "predict": 0} and vf.predicted == 0 and vf.kept == n
    assert (pd.read_csv(out / "skipped.csv")["reason"] == "view_filter").sum() == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_videos"] == n

    # another model: predicted once, cached next to the first one
    psax_model = _script(tmp_path / "m" / "psax.pt", [0.0, 2.0, 0.0, 0.0])
    res, vf = _run(_cfg(view_model=psax_model, keep_view="psax"), raw, out)
    assert vf.kept == n and calls["predict"] == 1 and calls["decode"] == 0
    assert pd.read_csv(out / vfm.CACHE)["model_key"].nunique() == 2


def test_bad_view_model_refused_before_decoding(archive, tmp_path):
    raw = archive / "raw"
    good = _script(tmp_path / "m" / "v.pt", [1.0, 0, 0, 0])
    with pytest.raises(UserError, match=r"--keep-view lvot: the view model .* has classes"):
        _run(_cfg(view_model=good, keep_view="lvot"), raw, tmp_path / "a")
    bare = _script(tmp_path / "m2" / "bare.pt", [1.0, 0, 0, 0], with_json=False)
    with pytest.raises(UserError, match="has no class list beside it"):
        _run(_cfg(view_model=bare, keep_view="plax"), raw, tmp_path / "b")
    with pytest.raises(UserError, match="needs --keep-view"):
        _run(_cfg(view_model=good), raw, tmp_path / "c")
    with pytest.raises(UserError, match="needs --view-model"):
        _run(_cfg(keep_view="plax"), raw, tmp_path / "d")
    with pytest.raises(UserError, match="not a multi-class fine-tune run"):
        _run(_cfg(view_model=tmp_path / "m", keep_view="plax"), raw, tmp_path / "e")
    for name in "abcde":
        assert not (tmp_path / name).exists()  # nothing decoded or written


def test_run_dir_view_model_and_cli(archive, tmp_path):
    from typer.testing import CliRunner

    from echoclr_cli import cli
    from echoclr_cli.finetune.run import run_finetune

    raw, full = archive / "raw", tmp_path / "full"
    vfm.preprocess_with_view_filter(_cfg(), raw, full)
    cfg = tiny_finetune_config(epochs=1, finetune={"task": "view"}, preprocess={"size": 32})
    run = tmp_path / "run"
    run_finetune(cfg, full, run)
    from echoclr_cli.inference.predict import predict

    predict(cfg, run, full, tmp_path / "p.csv")  # the run's own top classes (2 clips per video)
    top = pd.read_csv(tmp_path / "p.csv").set_index("video_id")["y_pred"]
    keep = top.value_counts().index[0]  # a one-epoch model: keep its most frequent class
    out = tmp_path / "plax"
    result = CliRunner().invoke(cli.app, [
        "preprocess", "--input", str(raw), "--output", str(out), "--view-model", str(run),
        "--keep-view", keep, "--salt", "echoclr", "--size", "32", "--workers", "1",
        "--set", "preprocess.min_frames=8", "--set", "preprocess.max_skipped_frac=1.0",
        "--set", "preprocess.view_clips=2",
        "--set", "runtime.device=cpu", "--profile", "demo",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"view filter ({keep}): kept" in result.output
    df = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert sorted(df["video_id"]) == sorted(top.index[top == keep])  # same model, same answer
    cache = pd.read_csv(out / vfm.CACHE).set_index("video_id")
    probs = cache.loc[df["video_id"], [f"prob_{c}" for c in ["a2c", "a4c", "plax", "psax"]]]
    assert (df["view_pred"] == keep).all()
    assert np.allclose(df["view_prob"], probs[f"prob_{keep}"].to_numpy(), atol=1e-5)
    n_all = len(pd.read_csv(full / "manifest.csv"))
    skipped = pd.read_csv(out / "skipped.csv", keep_default_na=False)
    assert len(df) + (skipped["reason"] == "view_filter").sum() == n_all
    assert "view_model" not in json.loads((out / "dataset.json").read_text())["config"]
    shutil.rmtree(run)


# --------------------------------------------------------------------------- pairs within a view
def _pairs_df():
    rows = []
    for s, views in (("S1", ["plax", "plax", "a4c", "a4c", "psax"]), ("S2", ["plax", "a4c"])):
        for i, v in enumerate(views):
            rows.append({"video_id": f"{s}_{i}", "study_id": s, "patient_id": s, "view": v,
                         "path": "x.npy", "n_frames": 10})  # fmt: skip
    return pd.DataFrame(rows)


def test_pairs_within_study_and_view(tmp_path):
    df = _pairs_df()
    ds = PairDataset(df, tmp_path, "mi-simclr", pair_within="study_view")
    t = ds.table
    got = {(t.video_id[a], t.video_id[b]) for a, b in ds.pairs}
    assert got == {("S1_0", "S1_1"), ("S1_2", "S1_3"), ("S1_4", "S1_4"),
                   ("S2_0", "S2_0"), ("S2_1", "S2_1")}  # fmt: skip
    for a, b in ds.pairs:
        assert t.df["view"][a] == t.df["view"][b] and t.study_id[a] == t.study_id[b]
    across = PairDataset(df, tmp_path, "mi-simclr", pair_within="study")
    assert len(across.pairs) == 10 + 1  # C(5,2) + C(2,2)
    # predicted view when there is no true view; no view column: within study
    pred = df.rename(columns={"view": "view_pred"})
    assert pair_view_column(pred) == "view_pred"
    assert len(PairDataset(pred, tmp_path, "echoclr", pair_within="study_view").pairs) == 5
    assert pair_view_column(df.drop(columns="view")) is None
    assert len(PairDataset(df.drop(columns="view"), tmp_path, "mi-simclr",
                           pair_within="study_view").pairs) == 11  # fmt: skip


def test_pretrain_uses_pair_within(tmp_path):
    from echoclr_cli.config.schema import Config
    from echoclr_cli.pretrain.plan import pair_dataset

    cfg = Config()
    assert cfg.pretrain.pair_within == "study_view"
    assert len(pair_dataset(cfg, _pairs_df(), tmp_path).pairs) == 5
    cfg.pretrain.pair_within = "study"
    assert len(pair_dataset(cfg, _pairs_df(), tmp_path).pairs) == 11
