"""Fine-tuning: the loss options, the task column reaching the loss, modes, inits and run outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_WIDTH, make_dataset, tiny_finetune_config
from sklearn.metrics import roc_auc_score

from echoclr_cli.config.schema import KINETICS_MEAN, Config
from echoclr_cli.errors import UserError
from echoclr_cli.finetune import run as ft_mod
from echoclr_cli.finetune.losses import classification_loss, pos_weight_value, smooth_targets
from echoclr_cli.finetune.run import FinetuneTask, run_finetune
from echoclr_cli.inference.run import Task

WIDTH = TINY_WIDTH


def tiny_cfg(**sections) -> Config:
    return tiny_finetune_config(epochs=2, **sections)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ft"), n_studies=16)


# --------------------------------------------------------------------------- loss options
def test_label_smoothing_targets():
    y = torch.tensor([0.0, 1.0])
    assert torch.allclose(smooth_targets(y, 0.1), torch.tensor([0.05, 0.95]))
    assert torch.equal(smooth_targets(y, 0.0), y)


def test_weighted_smoothed_bce_matches_the_formula():
    logits = torch.tensor([-1.5, 0.3, 2.0, -0.2])
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    w, s = 3.0, 0.1
    t = y * (1 - s) + s / 2
    p = torch.sigmoid(logits)
    manual = -(w * t * torch.log(p) + (1 - t) * torch.log(1 - p))
    got = classification_loss(logits, y, w, s, reduction="none")
    assert torch.allclose(got, manual, atol=1e-6)
    assert torch.isclose(classification_loss(logits, y, w, s), manual.mean(), atol=1e-6)


def test_pos_weight_weights_only_positive_terms():
    """A negative sample's loss must not change with pos_weight (the published eval loss did)."""
    neg = torch.tensor([0.7]), torch.tensor([0.0])
    assert torch.isclose(classification_loss(*neg, 5.0, 0.0), classification_loss(*neg, None, 0.0))
    pos = torch.tensor([0.7]), torch.tensor([1.0])
    assert torch.isclose(
        classification_loss(*pos, 5.0, 0.0), 5.0 * classification_loss(*pos, None, 0.0)
    )


def test_pos_weight_values():
    assert pos_weight_value("balanced", 25, 75) == 3.0
    assert pos_weight_value("none", 25, 75) is None
    assert pos_weight_value("2.5", 25, 75) == 2.5


def test_dropout_is_before_the_linear_head():
    cfg = tiny_cfg(finetune={"dropout": 0.9})
    model = Task.binary("as").build_model(cfg)
    assert model.dropout.p == 0.9
    names = [n for n, _ in model.named_children()]
    assert names.index("dropout") < names.index("head")
    with torch.no_grad():
        model.head.weight.fill_(1.0)
        model.head.bias.fill_(3.0)
    model.train()
    torch.manual_seed(0)
    feats = torch.ones(2000, model.backbone.out_dim)
    logits = model.head(model.dropout(feats)).squeeze(1)  # what forward does after the backbone
    # dropping features leaves the bias: logits are never zeroed (dropping logits would zero them)
    assert (logits >= 3.0).all() and not (logits == 0).any()
    x = torch.rand(1, 3, 4, 32, 32)
    model.eval()
    assert torch.allclose(model(x), model.head(model.backbone(x)).squeeze(1))


def test_lp_ft_frozen_epochs():
    cfg = tiny_cfg(finetune={"mode": "lp-ft", "lp_epochs": 2})
    task = FinetuneTask(Task.binary("as").build_model(cfg), cfg, None, [], None)
    assert [task.backbone_frozen(e) for e in range(4)] == [True, True, False, False]
    cfg = tiny_cfg(finetune={"mode": "linear"})
    task = FinetuneTask(Task.binary("as").build_model(cfg), cfg, None, [], None)
    assert all(task.backbone_frozen(e) for e in range(4))
    task = FinetuneTask(Task.binary("as").build_model(tiny_cfg()), tiny_cfg(), None, [], None)
    assert not any(task.backbone_frozen(e) for e in range(4))


# --------------------------------------------------------------------------- whole runs
def test_random_init_run_writes_everything_and_study_auroc_matches_sklearn(data, tmp_path):
    cfg = tiny_cfg(evaluate={"plots": True, "bootstrap": 20})
    res = run_finetune(cfg, data, tmp_path / "run")
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "history.csv",
        "init.json",
        "train_studies.csv",
        "finetune.json",
        "metrics.json",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "predictions_val_video.csv",
        "predictions_val_study.csv",
        "predictions_test_video.csv",
        "predictions_test_study.csv",
        "plots/test_study_roc_pr.png",
        "plots/test_study_confusion.png",
        "plots/test_study_calibration.png",
        "plots/history.png",
    ):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert "clinical" in metrics  # calibration / operating points / subgroups (clinical.py)
    split_metrics = {k: v for k, v in metrics.items() if k != "clinical"}
    assert split_metrics == json.loads(json.dumps(res.metrics))
    pred = pd.read_csv(run / "predictions_test_study.csv")
    assert {"study_id", "y_true", "y_prob", "n_videos"} <= set(pred.columns)
    cell = metrics["test"]["study"]["auroc"]
    assert cell["n"] == len(pred)
    # 1e-6: metrics.py takes the AUROC point value from torchmetrics, which returns float32
    assert cell["value"] == pytest.approx(roc_auc_score(pred["y_true"], pred["y_prob"]), abs=1e-6)
    assert {"value", "ci_low", "ci_high", "n"} <= set(cell)
    hist = pd.read_csv(run / "history.csv")
    assert {"loss", "val_loss", "val_auroc", "val_auroc_video"} <= set(hist.columns)
    assert len(hist) == 2 and res.best_epoch == int(hist["val_loss"].idxmin()) + 1
    assert json.loads((run / "init.json").read_text())["format"] == "random"
    studies = pd.read_csv(run / "train_studies.csv")
    assert len(studies) == res.n_train_studies == 8  # frac 1.0: every labelled training study
    assert res.splits == ["val", "test"]


def test_test_metrics_use_the_best_checkpoint(data, tmp_path, monkeypatch):
    """best.pt is reloaded before testing, even when a later epoch was worse."""
    calls = {"n": 0}
    orig = FinetuneTask.end_of_epoch

    def fake_val(self, epoch, engine):
        out = orig(self, epoch, engine)
        calls["n"] += 1
        out["val_loss"] = [0.1, 0.9][epoch]  # epoch 1 is the best
        return out

    monkeypatch.setattr(FinetuneTask, "end_of_epoch", fake_val)
    res = run_finetune(tiny_cfg(), data, tmp_path / "run")
    assert res.best_epoch == 1 and res.checkpoint.name == "best.pt"
    best = torch.load(tmp_path / "run/checkpoints/best.pt", weights_only=True)
    assert best["epoch"] == 1
    # predictions of the reloaded best model == the run's test predictions
    from echoclr_cli.inference.evaluate import evaluate_run

    ev = evaluate_run(tiny_cfg(), tmp_path / "run", data, ["test"], out_dir=tmp_path / "ev")
    a = pd.read_csv(tmp_path / "run/predictions_test_video.csv")
    assert np.allclose(ev.predictions["test"]["video"]["y_prob"], a["y_prob"], atol=1e-6)


def test_task_lvh_trains_on_the_lvh_column(data, tmp_path, monkeypatch):
    seen_ids, seen_y = [], []
    orig_step = FinetuneTask.train_step
    orig_loss = ft_mod.classification_loss

    def spy_step(self, batch, engine):
        seen_ids.extend(batch["video_id"])
        return orig_step(self, batch, engine)

    def spy_loss(logits, y, pos_weight, smoothing, reduction="mean"):
        if reduction == "mean":  # training calls (validation asks for per-clip losses)
            seen_y.extend(y.tolist())
        return orig_loss(logits, y, pos_weight, smoothing, reduction)

    monkeypatch.setattr(FinetuneTask, "train_step", spy_step)
    monkeypatch.setattr(ft_mod, "classification_loss", spy_loss)
    res = run_finetune(tiny_cfg(finetune={"task": "lvh", "epochs": 1}), data, tmp_path / "run")
    man = pd.read_csv(data / "manifest.csv").set_index("video_id")
    assert len(seen_ids) == len(seen_y) > 0
    assert seen_y == [float(man.loc[v, "lvh"]) for v in seen_ids]
    assert seen_y != [float(man.loc[v, "as"]) for v in seen_ids]  # the two labels differ here
    pred = pd.read_csv(tmp_path / "run/predictions_test_video.csv").set_index("video_id")
    assert (pred["y_true"] == man.loc[pred.index, "lvh"]).all()
    assert res.task == "lvh"


def test_frac_subset_is_recorded_and_used(data, tmp_path, monkeypatch):
    seen = set()
    orig = FinetuneTask.train_step

    def spy(self, batch, engine):
        seen.update(batch["study_id"])
        return orig(self, batch, engine)

    monkeypatch.setattr(FinetuneTask, "train_step", spy)
    res = run_finetune(tiny_cfg(finetune={"frac": 0.25, "epochs": 1}), data, tmp_path / "run")
    studies = pd.read_csv(tmp_path / "run/train_studies.csv")
    assert len(studies) == res.n_train_studies == 2  # int(0.25 * 8)
    assert set(studies["y"]) == {0, 1}
    assert seen == set(studies["study_id"])
    facts = json.loads((tmp_path / "run/finetune.json").read_text())
    assert facts["n_train_studies_available"] == 8 and facts["batch_size"] <= 4


def test_pos_weight_and_smoothing_reach_the_loss(data, tmp_path, monkeypatch):
    calls = []
    orig = ft_mod.classification_loss

    def spy(logits, y, pos_weight, smoothing, reduction="mean"):
        calls.append((pos_weight, smoothing, reduction))
        return orig(logits, y, pos_weight, smoothing, reduction)

    monkeypatch.setattr(ft_mod, "classification_loss", spy)
    res = run_finetune(
        tiny_cfg(finetune={"epochs": 1, "label_smoothing": 0.2}), data, tmp_path / "a"
    )
    man = pd.read_csv(data / "manifest.csv")
    train = man[man["split"] == "train"]
    n_pos = int((train["as"] == 1).sum())
    # the default (published): max(1, n_neg / n_pos) of the training videos
    assert res.pos_weight == pytest.approx(max(1.0, (len(train) - n_pos) / n_pos))
    assert {c[:2] for c in calls} == {(res.pos_weight, 0.2)}
    assert {c[2] for c in calls} == {"mean", "none"}  # training and validation, same weights
    calls.clear()
    run_finetune(
        tiny_cfg(finetune={"epochs": 1, "pos_weight": "none", "label_smoothing": 0.0}),
        data,
        tmp_path / "b",
    )
    assert {c[:2] for c in calls} == {(None, 0.0)}


def test_kinetics_normalization_reaches_the_inputs(data, tmp_path, monkeypatch):
    seen = []
    orig = ft_mod.prepare_clips

    def spy(x, cfg, generator, mean=None, std=None):
        seen.append(mean)
        return orig(x, cfg, generator, mean, std)

    monkeypatch.setattr(ft_mod, "prepare_clips", spy)
    run_finetune(tiny_cfg(finetune={"epochs": 1, "normalize": "kinetics"}), data, tmp_path / "run")
    assert seen and all(m == KINETICS_MEAN for m in seen)


def _ssl_checkpoint(tmp_path) -> tuple:
    from echoclr_cli.models.backbones import SSLModel, build_backbone
    from echoclr_cli.training.engine import Engine

    cfg = tiny_cfg()
    engine = Engine(cfg, tmp_path / "ssl", section="pretrain")
    model = SSLModel(build_backbone("r3d_18", WIDTH), 16, 8, reorder_classes=24)
    engine.save("last.pt", model, torch.optim.Adam(model.parameters()), None)
    return tmp_path / "ssl", model


def test_ssl_init_run_records_every_loaded_tensor(data, tmp_path):
    ssl_dir, ssl_model = _ssl_checkpoint(tmp_path)
    res = run_finetune(
        tiny_cfg(finetune={"init": str(ssl_dir), "epochs": 1}), data, tmp_path / "run"
    )
    init = json.loads((tmp_path / "run/init.json").read_text())
    assert init["format"] == "echoclr-checkpoint" and init["source"].endswith("last.pt")
    want = sorted(ssl_model.backbone.state_dict())
    assert sorted(init["loaded"]) == want and init["missing"] == [] and init["mismatched"] == []
    assert "projector.0.weight" in init["unexpected"]
    assert res.init["loaded"] == init["loaded"]


def test_linear_mode_keeps_the_backbone_and_its_bn_statistics(data, tmp_path):
    ssl_dir, ssl_model = _ssl_checkpoint(tmp_path)
    cfg = tiny_cfg(finetune={"init": str(ssl_dir), "mode": "linear", "epochs": 1})
    run_finetune(cfg, data, tmp_path / "run")
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["model"]
    for k, v in ssl_model.backbone.state_dict().items():
        assert torch.equal(state[f"backbone.{k}"], v), k  # weights and running stats unchanged


def test_lp_ft_trains_the_backbone_only_after_lp_epochs(data, tmp_path):
    ssl_dir, ssl_model = _ssl_checkpoint(tmp_path)
    src = ssl_model.backbone.state_dict()
    key = "layer1.0.conv1.0.weight"
    cfg = tiny_cfg(finetune={"init": str(ssl_dir), "mode": "lp-ft", "lp_epochs": 1, "epochs": 1})
    run_finetune(cfg, data, tmp_path / "lp")
    lp = torch.load(tmp_path / "lp/checkpoints/last.pt", weights_only=True)["model"]
    assert torch.equal(lp[f"backbone.{key}"], src[key])
    cfg = tiny_cfg(finetune={"init": str(ssl_dir), "mode": "lp-ft", "lp_epochs": 1, "epochs": 2})
    run_finetune(cfg, data, tmp_path / "lpft")
    lpft = torch.load(tmp_path / "lpft/checkpoints/last.pt", weights_only=True)["model"]
    assert not torch.equal(lpft[f"backbone.{key}"], src[key])
    assert not torch.equal(lpft["head.weight"], lp["head.weight"])


def test_monitor_val_auroc_selects_the_highest(data, tmp_path):
    res = run_finetune(
        tiny_cfg(finetune={"monitor": "val_auroc", "epochs": 2}), data, tmp_path / "run"
    )
    hist = res.history
    if hist["val_auroc"].notna().any():
        assert res.best_epoch == int(hist["val_auroc"].idxmax()) + 1
        assert res.best_metric == pytest.approx(hist["val_auroc"].max())


def test_wrong_checkpoint_refused_before_training(data, tmp_path):
    from echoclr_cli.models.backbones import build_backbone

    path = tmp_path / "wide.pth"
    torch.save(build_backbone("r3d_18", 0.25).state_dict(), path)
    with pytest.raises(
        UserError, match=r"stem\.0\.weight: file \(16, 3, 3, 7, 7\) vs model \(8, 3, 3, 7, 7\)"
    ):
        run_finetune(tiny_cfg(finetune={"init": str(path)}), data, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run dir is created


def test_resume_continues_and_refuses_other_subset(data, tmp_path):
    run_finetune(tiny_cfg(finetune={"epochs": 1}), data, tmp_path / "run")
    res = run_finetune(tiny_cfg(finetune={"epochs": 2}), data, tmp_path / "run", resume=True)
    assert res.epochs_run == 2 and len(res.history) == 2
    studies = tmp_path / "run/train_studies.csv"
    df = pd.read_csv(studies)
    df.iloc[:-1].to_csv(studies, index=False)
    with pytest.raises(UserError, match="training studies differ"):
        run_finetune(tiny_cfg(finetune={"epochs": 3}), data, tmp_path / "run", resume=True)


def test_missing_task_column_and_existing_run_dir(data, tmp_path):
    with pytest.raises(UserError, match="no label column 'ef'"):
        run_finetune(tiny_cfg(finetune={"task": "ef"}), data, tmp_path / "run")
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        run_finetune(tiny_cfg(), data, tmp_path / "run2")
    assert (tmp_path / "run2" / "notes.txt").read_text() == "mine"


def test_val_loss_is_finite_and_val_auroc_levels(data, tmp_path):
    res = run_finetune(tiny_cfg(finetune={"epochs": 1}), data, tmp_path / "run")
    row = res.history.iloc[0]
    assert math.isfinite(row["val_loss"]) and 0 <= row["val_auroc"] <= 1
    val = pd.read_csv(tmp_path / "run/predictions_val_study.csv")
    assert row["val_auroc"] == pytest.approx(roc_auc_score(val["y_true"], val["y_prob"]), abs=1e-12)


def test_ext_test_is_evaluated_when_present(data, tmp_path):
    ext = tmp_path / "data_ext"
    import shutil

    shutil.copytree(data, ext)
    man = pd.read_csv(ext / "manifest.csv")
    man.loc[man["split"] == "test", "split"] = "ext_test"  # a temporally distinct cohort
    man.to_csv(ext / "manifest.csv", index=False)
    res = run_finetune(tiny_cfg(finetune={"epochs": 1}), ext, tmp_path / "run")
    assert res.splits == ["val", "ext_test"]
    assert any("evaluate.splits ['test']" in n for n in res.notes)
    assert "ext_test" in res.metrics and (tmp_path / "run/predictions_ext_test_study.csv").exists()


# --------------------------------------------------------------------------- 2 processes (gloo)
def _ddp_worker(rank: int, port: int, data: str, out: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        ECHOCLR_FORCE_CPU="1",
    )
    torch.set_num_threads(1)
    res = run_finetune(tiny_cfg(finetune={"epochs": 2}), data, out)
    torch.save({"history": res.history, "best": res.best_epoch}, f"{out}_rank{rank}.pt")


@pytest.mark.slow
def test_two_process_finetune_agrees_and_rank0_writes(data, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "run")
    mp.spawn(_ddp_worker, args=(port, str(data), out), nprocs=2, join=True)
    r0, r1 = (torch.load(f"{out}_rank{r}.pt", weights_only=True) for r in (0, 1))
    # rank 0 validates the weights it saves and shares the numbers: same monitor, same stop
    pd.testing.assert_series_equal(r0["history"]["val_loss"], r1["history"]["val_loss"])
    assert r0["best"] == r1["best"]
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    pred = pd.read_csv(tmp_path / "run/predictions_test_study.csv")
    assert metrics["test"]["study"]["auroc"]["value"] == pytest.approx(
        roc_auc_score(pred["y_true"], pred["y_prob"])
    )


# --------------------------------------------------------------------------- the model follows its init
def test_init_model_reads_what_the_init_was_trained_with(tmp_path):
    from echoclr_cli.finetune.run import init_model
    from echoclr_cli.models.backbones import build_backbone

    ssl_dir, _ = _ssl_checkpoint(tmp_path)  # our pretrain run, width TINY_WIDTH
    model, source = init_model(str(ssl_dir))
    assert model == {"arch": "r3d_18", "width": WIDTH} and source.endswith("config.yaml")
    (ssl_dir / "config.yaml").unlink()  # a bare checkpoint file still records its config
    model, source = init_model(str(ssl_dir / "checkpoints" / "last.pt"))
    assert model == {"arch": "r3d_18", "width": WIDTH} and source.endswith("last.pt")
    published = tmp_path / "chkpt_epoch-3.pt"  # the published format: r3d_18 at full width
    torch.save({"weights": {"encoder.stem.0.weight": torch.zeros(2)}, "optimizer": {}}, published)
    model, source = init_model(str(published))
    assert model == {"arch": "r3d_18", "width": 1.0} and "published" in source
    plain = tmp_path / "plain.pth"  # a bare state dict does not say
    torch.save(build_backbone("r3d_18", 0.25).state_dict(), plain)
    assert init_model(str(plain)) is None
    assert init_model("random") is None
    model, source = init_model("kinetics")  # Kinetics-400 fixes the width only, any arch
    assert model == {"width": 1.0} and "Kinetics-400" in source
    with pytest.raises(UserError, match="not 'random', 'random-bn', 'kinetics'"):
        init_model(str(tmp_path / "missing.pt"))


def test_follow_init_model_keeps_what_the_user_set(tmp_path):
    from echoclr_cli.cli.common import user_set_keys
    from echoclr_cli.config.load import parse_set
    from echoclr_cli.finetune.run import follow_init_model

    published = tmp_path / "pub.pt"
    torch.save({"weights": {"encoder.stem.0.weight": torch.zeros(2)}}, published)
    cfg = tiny_cfg(finetune={"init": str(published)})
    new, line = follow_init_model(cfg)
    assert (new.model.arch, new.model.width) == ("r3d_18", 1.0) and cfg.model.width == WIDTH
    assert line.startswith("model follows the init: model.arch=r3d_18, model.width=1.0")
    kept, line = follow_init_model(cfg, {"model.width"})
    assert kept.model.width == WIDTH and "model.width" not in line
    same, line = follow_init_model(cfg, {"model.arch", "model.width"})
    assert same is cfg and line is None
    assert follow_init_model(tiny_cfg())[1] is None  # random init: nothing to follow
    yml = tmp_path / "my.yaml"
    yml.write_text("model:\n  arch: r3d_18\nfinetune:\n  epochs: 1\n")
    keys = user_set_keys([yml], parse_set(["model.width=0.5", "finetune.frac=0.1"]))
    assert {"model.arch", "model.width", "finetune.epochs", "finetune.frac"} <= keys
    assert not {k for k in user_set_keys(None, parse_set(["finetune.frac=0.1"])) if "model" in k}


# --------------------------------------------------------------------------- every video, every epoch
def test_every_training_video_every_epoch_and_a_batch_of_one_keeps_bn_stats(tmp_path, monkeypatch):
    """2*B+1 training videos: each epoch runs B, B, 1 and sees every video once (no drop_last,
    as the published loader). The batch of one trains but leaves BatchNorm's running statistics
    as they were (finetune.bn_frozen_stats); a batch of B moves them."""
    data = make_dataset(tmp_path, n_studies=12, videos_per_study=(1, 1))
    m = pd.read_csv(data / "manifest.csv", dtype={"study_id": str})
    train_ids = set(m.loc[m["split"] == "train", "video_id"].astype(str))
    n = len(train_ids)
    if n % 2 == 0:  # make it odd: drop one training video from the manifest
        drop = sorted(train_ids)[0]
        m = m[m["video_id"].astype(str) != drop]
        m.to_csv(data / "manifest.csv", index=False)
        train_ids.discard(drop)
        n -= 1
    b = (n - 1) // 2
    seen: list[tuple[int, list[str], bool]] = []
    orig = FinetuneTask.train_step

    def spy(self, batch, engine):
        bns = [x for x in self.model.modules() if isinstance(x, torch.nn.BatchNorm3d)]
        before = bns[0].running_mean.clone()
        out = orig(self, batch, engine)
        moved = not torch.equal(before, bns[0].running_mean)
        seen.append((engine.state.epoch, list(batch["video_id"]), moved))
        return out

    monkeypatch.setattr(FinetuneTask, "train_step", spy)
    cfg = tiny_cfg(finetune={"batch_size": b, "epochs": 2, "frac": 1.0})
    res = run_finetune(cfg, data, tmp_path / "run")
    assert res.batch_size == b and res.n_train_videos == n
    for epoch in (0, 1):
        steps = [s for s in seen if s[0] == epoch]
        assert [len(s[1]) for s in steps] == [b, b, 1]
        ids = [v for s in steps for v in s[1]]
        assert sorted(ids) == sorted(train_ids)  # every video exactly once
        assert [s[2] for s in steps] == [True, True, False]  # BN stats frozen for the one


def test_bn_frozen_stats_restores_momentum():
    from echoclr_cli.finetune.run import bn_frozen_stats

    model = Task.binary("as").build_model(tiny_cfg())
    bn = next(x for x in model.modules() if isinstance(x, torch.nn.BatchNorm3d))
    model.train()
    x = torch.rand(1, 3, 4, 16, 16)  # one video whose last feature map is 1x1x1
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(x)  # training-mode BatchNorm cannot normalise it (the control)
    before, tracked = bn.running_mean.clone(), int(bn.num_batches_tracked)
    with bn_frozen_stats(model):
        model(x).sum().backward()  # trains: gradients reach the weights
    assert torch.equal(bn.running_mean, before) and int(bn.num_batches_tracked) == tracked
    assert bn.training and model.training  # modes restored
    assert bn.weight.grad is not None
    model(torch.rand(2, 3, 4, 16, 16))
    assert not torch.equal(bn.running_mean, before)


def test_early_stop_published_and_ours():
    from echoclr_cli.finetune.run import early_stopping, video_bce

    ft = tiny_cfg(finetune={"patience": 5}).finetune
    assert early_stopping(ft.model_copy(update={"early_stop": "published"})) == (
        "val_bce_video",
        "min",
        6,  # the published loop runs while epochs_no_improve <= patience
    )
    assert early_stopping(ft.model_copy(update={"early_stop": "ours"})) == ("val_loss", "min", 5)
    ours_auroc = ft.model_copy(update={"early_stop": "ours", "monitor": "val_auroc"})
    assert early_stopping(ours_auroc) == ("val_auroc", "max", 5)
    with pytest.raises(UserError, match="not used by finetune.early_stop=published"):
        early_stopping(ours_auroc.model_copy(update={"early_stop": "published"}))
    off = ft.model_copy(update={"early_stop": "published", "patience": 0})
    assert early_stopping(off)[2] == 0
    video = pd.DataFrame({"y_true": [1.0, 0.0, 1.0], "y_prob": [0.8, 0.3, 0.0]})
    want = -(np.log(0.8) + np.log(0.7) - 100.0) / 3  # log(0) clamped at -100 (torch's BCELoss)
    assert video_bce(video) == pytest.approx(want)


def test_published_early_stop_monitors_video_bce(data, tmp_path):
    cfg = tiny_cfg(finetune={"epochs": 2, "early_stop": "published", "patience": 1})
    res = run_finetune(cfg, data, tmp_path / "run")
    assert "val_bce_video" in res.history
    facts = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert facts["monitor"] == "val_bce_video" and facts["early_stop"] == "published"
    best = res.history["val_bce_video"].idxmin()
    assert res.best_epoch == int(res.history["epoch"].iloc[best])
