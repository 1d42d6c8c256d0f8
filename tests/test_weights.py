"""Initial weights: every supported checkpoint format loads every backbone tensor; bad ones are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from echoclr_cli.config.load import load_config
from echoclr_cli.config.schema import KINETICS_MEAN, Config
from echoclr_cli.errors import UserError
from echoclr_cli.models.backbones import SSLModel, build_backbone
from echoclr_cli.models.weights import (
    init_backbone,
    input_normalization,
    kinetics_weight_path,
    load_backbone_weights,
)

WIDTH = 0.125


def cfg_with(init: str, **finetune) -> Config:
    return load_config(
        profile="demo",
        overrides={
            "model": {"width": WIDTH},
            "runtime": {"device": "cpu"},
            "finetune": {"init": init, **finetune},
        },
    )


def source_backbone(width: float = WIDTH, arch: str = "r3d_18") -> torch.nn.Module:
    torch.manual_seed(123)
    return build_backbone(arch, width)


def assert_loaded_all(target: torch.nn.Module, source: torch.nn.Module, report) -> None:
    want = sorted(k for k in target.state_dict() if not k.endswith("num_batches_tracked"))
    assert sorted(k for k in report.loaded if not k.endswith("num_batches_tracked")) == want
    assert report.missing == [] and report.mismatched == []
    src = source.state_dict()
    for k, v in target.state_dict().items():
        assert torch.equal(v, src[k]), k


def load_into_fresh(cfg: Config):
    torch.manual_seed(999)  # a different init, so equality proves the load
    target = build_backbone(cfg.model.arch, cfg.model.width)
    return target, init_backbone(cfg, target)


# --------------------------------------------------------------------------- formats
def test_our_ssl_run_dir_and_checkpoint_file(tmp_path):
    from echoclr_cli.training.engine import Engine

    cfg = load_config(
        profile="demo", overrides={"model": {"width": WIDTH}, "runtime": {"device": "cpu"}}
    )
    engine = Engine(cfg, tmp_path / "ssl", section="pretrain")
    model = SSLModel(source_backbone(), 16, 8, reorder_classes=24)
    opt = torch.optim.Adam(model.parameters())
    engine.save("last.pt", model, opt, None)
    for init in (tmp_path / "ssl", tmp_path / "ssl" / "checkpoints" / "last.pt"):
        target, report = load_into_fresh(cfg_with(str(init)))
        assert report.format == "echoclr-checkpoint" and report.prefix == "backbone."
        assert_loaded_all(target, model.backbone, report)
        assert any(k.startswith("projector.") for k in report.unexpected)
        assert any(k.startswith("reorder_head.") for k in report.unexpected)
        assert report.checkpoint_config["width"] == WIDTH


def test_our_checkpoint_with_other_width_is_refused_naming_it(tmp_path):
    from echoclr_cli.training.engine import Engine

    cfg = load_config(
        profile="demo", overrides={"model": {"width": 0.25}, "runtime": {"device": "cpu"}}
    )
    engine = Engine(cfg, tmp_path / "ssl", section="pretrain")
    model = SSLModel(build_backbone("r3d_18", 0.25), 16, 8)
    engine.save("last.pt", model, torch.optim.Adam(model.parameters()), None)
    with pytest.raises(UserError, match=r"model\.width 0\.25 \(this run: 0\.125\)") as e:
        load_into_fresh(cfg_with(str(tmp_path / "ssl")))
    assert "--set model.width=0.25" in e.value.fix


def published_state(backbone: torch.nn.Module, wrap: str = "") -> dict:
    """The published EchoCLR scripts' layout: encoder + projector + reordering head."""
    state = {f"{wrap}encoder.{k}": v for k, v in backbone.state_dict().items()}
    feat = backbone.out_dim
    state[f"{wrap}projector.0.weight"] = torch.randn(256, feat)
    state[f"{wrap}projector.2.weight"] = torch.randn(128, 256)
    state[f"{wrap}reordering_head.weight"] = torch.randn(24, feat)
    state[f"{wrap}reordering_head.bias"] = torch.randn(24)
    return {
        "weights": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
    }


@pytest.mark.parametrize("wrap", ["", "module."])
def test_published_echoclr_format_loads_every_backbone_tensor(tmp_path, wrap):
    src = source_backbone()
    path = tmp_path / "echoclr_published.pt"
    torch.save(published_state(src, wrap), path)
    target, report = load_into_fresh(cfg_with(str(path)))
    assert report.format == "echoclr-published" and report.prefix == "encoder."
    assert_loaded_all(target, src, report)
    assert report.unexpected == sorted(
        f"{p}"
        for p in (
            "projector.0.weight",
            "projector.2.weight",
            "reordering_head.bias",
            "reordering_head.weight",
        )
    )
    assert report.sha256 and len(report.sha256) == 64


def test_published_run_dir_uses_the_last_epoch(tmp_path):
    old, new = source_backbone(), build_backbone("r3d_18", WIDTH)
    run = tmp_path / "published_run"
    run.mkdir()
    torch.save(published_state(old), run / "chkpt_epoch-20.pt")
    torch.save(published_state(new), run / "chkpt_epoch-300.pt")
    torch.save(published_state(old), run / "chkpt_epoch-40.pt")
    target, report = load_into_fresh(cfg_with(str(run)))
    assert report.source.endswith("chkpt_epoch-300.pt")
    assert_loaded_all(target, new, report)


@pytest.mark.parametrize(
    "prefix", ["", "module.", "backbone.", "module.backbone.", "module.module."]
)
def test_torchvision_state_dict_with_and_without_prefixes(tmp_path, prefix):
    src = source_backbone()
    state = {f"{prefix}{k}": v for k, v in src.state_dict().items()}
    state[f"{prefix}fc.weight"] = torch.randn(400, src.out_dim)  # a Kinetics classifier head
    state[f"{prefix}fc.bias"] = torch.randn(400)
    path = tmp_path / "tv.pth"
    torch.save(state, path)
    target, report = load_into_fresh(cfg_with(str(path)))
    assert report.format == "state-dict"
    assert_loaded_all(target, src, report)
    # whole prefixes removed: "module.layer1..." is "layer1...", never "ayer1..." (lstrip)
    assert "layer1.0.conv1.0.weight" in report.loaded
    inner = prefix.replace("module.", "")  # wrapper prefixes are dropped from reported names
    assert report.unexpected == [f"{inner}fc.bias", f"{inner}fc.weight"]


def test_state_dict_wrapper_and_missing_bn_counters(tmp_path):
    src = source_backbone()
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    target, report = load_into_fresh(cfg_with(str(path)))
    assert report.format == "state-dict-wrapper"
    assert report.missing == [] and report.missing_counters  # old torchvision files lack them
    assert_loaded_all(target, src, report)


# --------------------------------------------------------------------------- refusals
def test_other_width_refused_naming_tensor_and_shapes(tmp_path):
    src = build_backbone("r3d_18", 0.25)
    path = tmp_path / "wide.pth"
    torch.save(src.state_dict(), path)
    with pytest.raises(UserError) as e:
        load_into_fresh(cfg_with(str(path)))
    msg = str(e.value)
    assert "stem.0.weight: file (16, 3, 3, 7, 7) vs model (8, 3, 3, 7, 7)" in msg
    assert str(path) in msg and "model.width" in e.value.fix


def test_other_arch_refused_naming_missing_tensors(tmp_path):
    src = build_backbone("r2plus1d_18", WIDTH)
    path = tmp_path / "r2plus1d.pth"
    torch.save(src.state_dict(), path)
    with pytest.raises(
        UserError, match=r"backbone tensors missing from the file: layer1\.0\.conv1\.0\.weight"
    ):
        load_into_fresh(cfg_with(str(path)))


def test_image_resnet_state_dict_refused(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(
        UserError, match="no video ResNet backbone found.*no 'stem.0.weight'.*conv1.weight"
    ):
        load_into_fresh(cfg_with(str(path)))


def test_allow_missing_loads_the_rest_and_lists_them(tmp_path):
    src = source_backbone()
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match="layer4"):
        load_into_fresh(cfg_with(str(path)))
    target, report = load_into_fresh(cfg_with(str(path), allow_missing=True))
    assert report.missing and all(k.startswith("layer4.") for k in report.missing)
    assert torch.equal(target.state_dict()["stem.0.weight"], src.state_dict()["stem.0.weight"])


def test_unsafe_pickle_is_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": Path("x")}, path)  # any non-tensor class would need code to unpickle
    with pytest.raises(UserError, match="refusing to load weights file .*evil.pt"):
        load_into_fresh(cfg_with(str(path)))


def test_missing_init_path_and_empty_run_dir(tmp_path):
    with pytest.raises(
        UserError, match="not 'random', 'random-bn', 'kinetics', a run dir or a checkpoint file"
    ):
        load_into_fresh(cfg_with(str(tmp_path / "nope.pt")))
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match="no checkpoints/best.pt or checkpoints/last.pt"):
        load_into_fresh(cfg_with(str(tmp_path / "run")))


# --------------------------------------------------------------------------- kinetics
def test_kinetics_missing_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = tmp_path / "hub" / "checkpoints" / "r3d_18-b3b3357e.pth"
    assert kinetics_weight_path("r3d_18") == expected
    cfg = cfg_with("kinetics")
    with pytest.raises(UserError) as e:
        init_backbone(cfg, build_backbone("r3d_18", WIDTH))
    assert str(expected) in str(e.value) and "never" in str(e.value)
    assert (
        str(expected) in e.value.fix
        and "download.pytorch.org/models/r3d_18-b3b3357e.pth" in e.value.fix
    )
    with pytest.raises(UserError, match="other.pth"):
        init_backbone(
            cfg_with("kinetics", weights=str(tmp_path / "other.pth")),
            build_backbone("r3d_18", WIDTH),
        )


def test_kinetics_from_hub_cache_loads_with_normalization(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cfg = load_config(
        profile="paper", overrides={"runtime": {"device": "cpu"}, "finetune": {"init": "kinetics"}}
    )
    src = build_backbone("r3d_18", 1.0)  # torchvision's r3d_18 layout exactly
    state = dict(src.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(400, 512), torch.zeros(400)
    path = kinetics_weight_path("r3d_18")
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    target = build_backbone("r3d_18", 1.0)
    report = init_backbone(cfg, target)
    assert report.format == "kinetics" and report.source == str(path)
    assert report.normalization["mean"] == list(KINETICS_MEAN)
    assert report.missing == [] and report.unexpected == ["fc.bias", "fc.weight"]
    assert torch.equal(
        target.state_dict()["layer4.1.conv2.0.weight"], src.state_dict()["layer4.1.conv2.0.weight"]
    )
    with pytest.raises(UserError, match="width 1.0"):  # a narrow demo model cannot take them
        init_backbone(cfg_with("kinetics"), build_backbone("r3d_18", WIDTH))


def test_input_normalization_modes():
    assert input_normalization(cfg_with("random")) is None
    assert input_normalization(cfg_with("kinetics"))[0] == KINETICS_MEAN
    assert input_normalization(cfg_with("random", normalize="kinetics"))[0] == KINETICS_MEAN
    assert input_normalization(cfg_with("kinetics", normalize="none")) is None


def test_load_backbone_weights_direct():
    src, target = source_backbone(), build_backbone("r3d_18", WIDTH)
    keys = load_backbone_weights(target, {f"backbone.{k}": v for k, v in src.state_dict().items()})
    assert keys["prefix"] == "backbone." and not keys["missing"] and not keys["unexpected"]


# --------------------------------------------------------------------------- init availability
def test_init_available_is_the_rule_init_backbone_applies(tmp_path, monkeypatch):
    from echoclr_cli.models.weights import init_available, kinetics_url

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert init_available("random", cfg_with("random")).ok
    # Kinetics: file missing -> where to put it (with the URL); present but narrow model -> width.
    miss = init_available("kinetics", cfg_with("kinetics"))
    path = kinetics_weight_path("r3d_18")
    assert not miss.ok and str(path) in miss.reason and kinetics_url("r3d_18") in miss.fix
    with pytest.raises(UserError) as e:
        load_into_fresh(cfg_with("kinetics"))
    assert e.value.message == miss.reason and e.value.fix == miss.fix
    path.parent.mkdir(parents=True)
    torch.save(build_backbone("r3d_18", 1.0).state_dict(), path)
    narrow = init_available("kinetics", cfg_with("kinetics"))
    assert not narrow.ok and "model.width 1.0" in narrow.reason
    # Run dirs: without a checkpoint -> not available; with one -> found.
    (tmp_path / "empty").mkdir()
    assert not init_available(str(tmp_path / "empty"), cfg_with("random")).ok
    (tmp_path / "ssl/checkpoints").mkdir(parents=True)
    (tmp_path / "ssl/checkpoints/last.pt").write_bytes(b"x")
    found = init_available(str(tmp_path / "ssl"), cfg_with("random"))
    assert found.ok and "last.pt" in found.reason
    assert not init_available("kinetics", cfg_with("kinetics", weights=str(tmp_path / "no"))).ok
