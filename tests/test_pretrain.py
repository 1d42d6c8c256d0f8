"""PretrainTask on a fake engine, preflight, optimizer schedules, and short real runs."""

from __future__ import annotations

import contextlib
import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_dataset

from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError
from echoclr_cli.events import Epoch, Note
from echoclr_cli.pretrain.plan import plan_pretrain
from echoclr_cli.pretrain.probe import build_probe, probe_auroc
from echoclr_cli.pretrain.run import run_pretrain
from echoclr_cli.pretrain.task import PretrainTask, build_model
from echoclr_cli.training.optim import build_optimizer, build_scheduler, lr_factor


def tiny_cfg(method="echoclr", **pretrain) -> Config:
    pt = {
        "method": method,
        "epochs": 2,
        "batch_size": 4,
        "checkpoint_every": 1,
        "optim": {"learning_rate": 1e-3},
        **pretrain,
    }
    return Config.model_validate(
        {
            "runtime": {"device": "cpu", "workers": 0, "seed": 0},
            "model": {"width": 0.125, "proj_hidden": 16, "proj_dim": 8},
            "pretrain": pt,
        }
    )


def fake_engine(seed=0):
    return SimpleNamespace(
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        distributed=False,
        autocast=contextlib.nullcontext,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(
        tmp_path_factory.mktemp("pt"), n_studies=8, videos_per_study=(1, 3), frames=(6, 10), size=16
    )


def batch_of(ds, keys):
    return torch.utils.data.default_collate([ds[k] for k in keys])


@pytest.mark.parametrize("method", ["simclr", "mi-simclr", "echoclr"])
def test_train_step_each_method(data, method):
    cfg = tiny_cfg(method)
    df = pd.read_csv(data / "manifest.csv")
    plan = plan_pretrain(cfg, df, data)
    torch.manual_seed(0)
    model = build_model(cfg)
    task = PretrainTask(cfg, model)
    out = task.train_step(batch_of(plan.dataset, [(0, i) for i in range(4)]), fake_engine())
    assert torch.isfinite(out["loss"]) and out["n_clips"].item() == 8
    assert out["loss"].requires_grad
    out["loss"].backward()
    assert model.backbone.stem[0].weight.grad is not None
    if method == "echoclr":
        assert {"reorder_loss", "reorder_acc"} <= set(out)
        # unweighted sum: loss = nt_xent + CE over both views (weights 1, 1)
        assert torch.allclose(out["loss"], out["nt_xent"] + out["reorder_loss"])
        assert model.reorder_head.out_features == 24
    else:
        assert "reorder_loss" not in out and model.reorder_head is None
        assert torch.allclose(out["loss"], out["nt_xent"])


def test_loss_weights_and_same_study_negatives(data):
    df = pd.read_csv(data / "manifest.csv")
    torch.manual_seed(0)
    base_cfg = tiny_cfg("echoclr")
    model = build_model(base_cfg).eval()  # eval: BatchNorm independent of batch composition
    plan = plan_pretrain(base_cfg, df, data)
    # 4 pairs of which at least two share a study
    by_study = pd.Series([plan.dataset[i]["study_id"] for i in range(len(plan.dataset))])
    multi = by_study[by_study.duplicated(keep=False)].index.tolist()
    others = [i for i in range(len(plan.dataset)) if i not in multi]
    keys = (multi[:2] + others)[:4]
    batch = batch_of(plan.dataset, keys)
    outs = {}
    for name, kw in {
        "base": {},
        "excl": {"exclude_same_study_negatives": True},
        "weighted": {"nt_xent_weight": 0.5, "reorder_weight": 2.0},
    }.items():
        with torch.no_grad():
            outs[name] = PretrainTask(tiny_cfg("echoclr", **kw), model).train_step(
                batch, fake_engine(1)
            )
    assert outs["excl"]["nt_xent"] < outs["base"]["nt_xent"]  # fewer negatives in the denominator
    w = outs["weighted"]
    assert torch.allclose(w["loss"], 0.5 * w["nt_xent"] + 2.0 * w["reorder_loss"])
    assert torch.allclose(w["nt_xent"], outs["base"]["nt_xent"])  # same generator -> same views


def test_plan_lowers_batch_and_refuses_tiny(data, tmp_path):
    df = pd.read_csv(data / "manifest.csv")
    cfg = tiny_cfg("mi-simclr", batch_size=196)
    plan = plan_pretrain(cfg, df, data)
    n_train_pairs = len(plan.dataset)
    assert plan.batch_size == n_train_pairs and plan.steps_per_epoch == 1 and plan.notes
    # batch_size is the global batch: 6 pairs over 2 processes = 3 per process
    plan2 = plan_pretrain(tiny_cfg("mi-simclr", batch_size=6), df, data, world_size=2)
    assert plan2.batch_size == 3 and plan2.steps_per_epoch == (n_train_pairs // 2) // 3
    assert not plan2.notes
    with pytest.raises(UserError, match="does not divide by the 2 processes") as err:
        plan_pretrain(tiny_cfg("mi-simclr", batch_size=7), df, data, world_size=2)
    assert "multiple of 2" in str(err.value.fix) + str(err.value)
    one = make_dataset(tmp_path, n_studies=3, videos_per_study=(1, 1), frames=(6, 6), size=8)
    with pytest.raises(UserError, match="at least 2 pairs"):
        plan_pretrain(tiny_cfg("simclr"), pd.read_csv(one / "manifest.csv"), one)
    with pytest.raises(UserError, match="no videos in split"):
        plan_pretrain(tiny_cfg("simclr", split="unlabeled"), df, data)


def test_lr_schedules():
    assert lr_factor(0, 10, "none", 0) == 1.0
    assert [lr_factor(e, 10, "none", 2) for e in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_factor(2, 10, "cosine", 2) == 1.0 and abs(lr_factor(6, 10, "cosine", 2) - 0.5) < 1e-12
    assert [round(lr_factor(e, 8, "step", 0), 6) for e in (0, 3, 4, 5, 6, 7)] == [
        1,
        1,
        0.1,
        0.1,
        0.01,
        0.01,
    ]
    cfg = tiny_cfg().pretrain.optim
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer(p, cfg)
    assert isinstance(opt, torch.optim.Adam) and build_scheduler(opt, cfg, 5) is None
    sgd = build_optimizer(p, cfg.model_copy(update={"optimizer": "sgd", "schedule": "cosine"}))
    sched = build_scheduler(sgd, cfg.model_copy(update={"schedule": "cosine"}), 4)
    lrs = []
    for _ in range(4):
        lrs.append(sgd.param_groups[0]["lr"])
        sgd.step()
        sched.step()
    assert lrs[0] == cfg.learning_rate and lrs == sorted(lrs, reverse=True)
    assert isinstance(sgd, torch.optim.SGD)
    adamw = build_optimizer(p, cfg.model_copy(update={"optimizer": "adamw"}))
    assert isinstance(adamw, torch.optim.AdamW)


def test_run_pretrain_echoclr_with_probe(data, tmp_path):
    cfg = tiny_cfg("echoclr", probe_every=2)
    events = []
    res = run_pretrain(cfg, data, tmp_path / "run", progress=events.append)
    assert res.epochs_run == 2 and res.steps == 2 * res.steps_per_epoch
    ck = torch.load(res.checkpoint, weights_only=True)
    keys = list(ck["model"])
    assert any(k.startswith("backbone.stem.") for k in keys)
    assert any(k.startswith("projector.") for k in keys) and any(
        k.startswith("reorder_head.") for k in keys
    )
    hist = pd.read_csv(tmp_path / "run" / "history.csv")
    assert len(hist) == 2 and {"loss", "nt_xent", "reorder_loss", "reorder_acc"} <= set(
        hist.columns
    )
    assert math.isfinite(hist["loss"].iloc[-1])
    probe_cols = [c for c in hist.columns if c.startswith("probe_")]
    assert probe_cols == ["probe_as_val_auroc", "probe_lvh_val_auroc"]
    assert hist[probe_cols[0]].isna().iloc[0]  # epoch 1: no probe (every 2)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"] == "echoclr" and metrics["epochs"] == 2
    assert any(isinstance(e, Epoch) for e in events)
    with pytest.raises(UserError, match="already exists"):
        run_pretrain(cfg, data, tmp_path / "run")


def test_run_pretrain_resume_equals_uninterrupted(data, tmp_path):
    cfg2 = tiny_cfg("mi-simclr", epochs=2)
    straight = run_pretrain(cfg2, data, tmp_path / "a")
    run_pretrain(tiny_cfg("mi-simclr", epochs=1), data, tmp_path / "b")
    resumed = run_pretrain(cfg2, data, tmp_path / "b", resume=True)
    assert resumed.epochs_run == 2 and resumed.steps == straight.steps
    a = torch.load(straight.checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_pretrain_notes_lowered_batch(data, tmp_path):
    events = []
    res = run_pretrain(
        tiny_cfg("simclr", epochs=1, batch_size=500), data, tmp_path / "r", progress=events.append
    )
    assert res.steps_per_epoch == 1 and res.notes
    assert any(isinstance(e, Note) and "batch_size" in e.text for e in events)


def test_probe_classifiers_and_undefined_auroc():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 15)
    x = rng.normal(size=(30, 4)) * 0.3 + np.where(y[:, None] == 1, 1.0, -1.0)  # opposite clusters
    for kind in ("logreg", "knn"):
        assert probe_auroc(x[:20], y[:20], x[20:], y[20:], kind) > 0.95
    assert np.isnan(probe_auroc(x, y, x[:5], np.zeros(5), "logreg"))  # one-class val: undefined


def test_probe_needs_labels_and_val(data):
    df = pd.read_csv(data / "manifest.csv")
    assert build_probe(tiny_cfg(probe_every=0), df, data) is None
    with pytest.raises(UserError, match="probe_every"):
        build_probe(tiny_cfg(probe_every=1), df[df.split != "val"], data)


def test_pretrain_on_several_splits(data):
    df = pd.read_csv(data / "manifest.csv")
    one = plan_pretrain(tiny_cfg("simclr", split="train"), df, data)
    two = plan_pretrain(tiny_cfg("simclr", split="train, val"), df, data)
    assert len(two.dataset) == int(df.split.isin(["train", "val"]).sum()) > len(one.dataset)


def test_view_forward_separate_normalises_each_view_with_its_own_statistics():
    """pretrain.view_forward: separate (paper) = one backbone call per view (BatchNorm batch
    statistics per view) inside one model call; joint = one 2B call (shared statistics)."""
    from echoclr_cli.models.backbones import SSLModel, build_backbone

    torch.manual_seed(0)
    model = SSLModel(build_backbone("r3d_18", 0.125), 16, 8).train()
    x = torch.rand(6, 3, 4, 32, 32)
    x[3:] *= 3.0  # the second view's statistics differ
    h_sep, z_sep, _ = model(x, views=2)
    h_a, h_b = model.backbone(x[:3]), model.backbone(x[3:])
    assert torch.allclose(h_sep, torch.cat([h_a, h_b]), atol=1e-6)
    h_joint, _, _ = model(x)
    assert not torch.allclose(h_joint, h_sep, atol=1e-4)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    for mode, want in (("separate", [2, 2]), ("joint", [4])):
        calls.clear()
        cfg = tiny_cfg("simclr", view_forward=mode, augment={"enabled": False})

        class Eng:
            device, generator, distributed = torch.device("cpu"), None, False

        batch = {
            "view1": torch.randint(0, 255, (2, 1, 4, 32, 32), dtype=torch.uint8),
            "view2": torch.randint(0, 255, (2, 1, 4, 32, 32), dtype=torch.uint8),
        }
        PretrainTask(cfg, model).train_step(batch, Eng())
        assert calls == want, (mode, calls)
    assert Config().pretrain.view_forward == "separate"


def test_history_and_progress_show_each_loss_beside_its_chance(data, tmp_path):
    """history.csv and the epoch line: nt_xent next to ln(2B-1), the reorder loss next to ln 24
    and its accuracy next to 1/24 (B = pairs per step; the frames head changes nothing here)."""
    from echoclr_cli.console import epoch_summary

    events = []
    res = run_pretrain(
        tiny_cfg("echoclr", epochs=1, reorder_head="frames"),
        data,
        tmp_path / "run",
        progress=events.append,
    )
    hist = pd.read_csv(tmp_path / "run" / "history.csv")
    cols = list(hist.columns)
    for name in ("nt_xent", "reorder", "reorder_acc"):
        value = "reorder_loss" if name == "reorder" else name
        assert cols.index(f"{name}_chance") == cols.index(value) + 1  # side by side
    assert hist["nt_xent_chance"].iloc[0] == pytest.approx(math.log(2 * res.batch_size - 1))
    assert hist["reorder_chance"].iloc[0] == pytest.approx(math.log(24))
    assert hist["reorder_acc_chance"].iloc[0] == pytest.approx(1 / 24)
    line = epoch_summary(next(e for e in events if isinstance(e, Epoch)).row)
    assert f"nt_xent_chance {math.log(2 * res.batch_size - 1):.4f}" in line
    assert "reorder_chance 3.1781" in line and "reorder_acc_chance 0.0417" in line
    cfg = tiny_cfg("simclr")
    ds = plan_pretrain(cfg, pd.read_csv(data / "manifest.csv"), data).dataset
    out = PretrainTask(cfg, build_model(cfg)).train_step(
        batch_of(ds, [(0, 0), (0, 1)]), fake_engine()
    )
    assert out["nt_xent_chance"] == pytest.approx(math.log(3)) and "reorder_chance" not in out
