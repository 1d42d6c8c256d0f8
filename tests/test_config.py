from pathlib import Path

import pytest
import yaml

from echoclr_cli.config.load import (
    all_keys,
    diff_configs,
    load_config,
    parse_set,
    resolve_profile,
    suggest_key,
)
from echoclr_cli.config.schema import Config
from echoclr_cli.errors import UserError


def write(tmp_path: Path, name: str, data: dict) -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_are_the_paper():
    cfg = Config()
    assert cfg.pretrain.temperature == 0.05
    assert cfg.pretrain.optim.learning_rate == 0.1
    assert cfg.pretrain.batch_size == 392  # global: 2 GPUs x 196
    assert cfg.pretrain.clip_len == 4
    assert cfg.finetune.clip_len == 16
    assert cfg.finetune.optim.learning_rate == 1e-4
    assert cfg.finetune.batch_size == 88
    assert cfg.finetune.patience == 5
    assert cfg.finetune.dropout == 0.25
    assert cfg.evaluate.clips_per_video == 4
    assert cfg.preprocess.size == 112 and cfg.preprocess.min_fps == 25
    assert cfg.preprocess.max_frames == 100


def test_precedence_defaults_profile_yaml_set(tmp_path):
    demo = load_config(profile="demo")
    assert demo.model.width == 0.25  # the profile changes it
    y = write(tmp_path, "a.yaml", {"model": {"width": 0.5}, "pretrain": {"epochs": 7}})
    cfg = load_config([y], profile="demo")
    assert cfg.model.width == 0.5 and cfg.pretrain.epochs == 7
    cfg = load_config([y], parse_set(["pretrain.epochs=9"]), profile="demo")
    assert cfg.pretrain.epochs == 9 and cfg.model.width == 0.5
    # later YAML files override earlier ones
    y2 = write(tmp_path, "b.yaml", {"pretrain": {"epochs": 11}})
    assert load_config([y, y2]).pretrain.epochs == 11


def test_unknown_key_names_key_and_suggestion(tmp_path):
    y = write(tmp_path, "bad.yaml", {"lerning_rate": 0.1})
    with pytest.raises(UserError) as e:
        load_config([y], prefer="pretrain")
    msg = str(e.value)
    assert "lerning_rate" in msg and "pretrain.optim.learning_rate" in msg
    assert str(y) in msg


def test_nested_typo_and_wrong_type(tmp_path):
    with pytest.raises(UserError, match="pretrain.epochs'"):
        load_config(overrides=parse_set(["pretrain.epoch=3"]))
    with pytest.raises(UserError, match="bad value for 'pretrain.epochs'"):
        load_config(overrides=parse_set(["pretrain.epochs=abc"]))
    with pytest.raises(UserError, match="pretrain.temperature"):
        load_config(overrides=parse_set(["pretrain.temperature=-1"]))


def test_bad_yaml_and_missing_file(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config([p])
    with pytest.raises(UserError, match="not found"):
        load_config([tmp_path / "nope.yaml"])
    with pytest.raises(UserError, match="key=value"):
        parse_set(["novalue"])


def test_parse_set_types():
    d = parse_set(["a.b=3", "a.c=0.5", "d=[1, 2]", "e=text", "f=true"])
    assert d == {"a": {"b": 3, "c": 0.5}, "d": [1, 2], "e": "text", "f": True}


def test_suggest_key_and_keys():
    keys = all_keys()
    assert "finetune.optim.learning_rate" in keys
    assert suggest_key("finetune.optim.learnig_rate") == "finetune.optim.learning_rate"
    assert suggest_key("lerning_rate", prefer="finetune") == "finetune.optim.learning_rate"


def test_profile_auto_is_demo_without_cuda():
    assert resolve_profile("auto", "cpu") == "demo"
    assert resolve_profile("auto", "cuda:0") == "paper"
    assert resolve_profile("paper", "cpu") == "paper"


def test_every_shipped_yaml_validates():
    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.rglob("*.yaml"))
    assert files
    for f in files:
        load_config([f])


def test_diff_configs():
    a = Config().model_dump(mode="json")
    b = Config(pretrain={"epochs": 3}).model_dump(mode="json")
    assert diff_configs(a, b) == ["pretrain.epochs"]
