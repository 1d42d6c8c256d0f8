"""Settings follow the data (issue 21, FAULTS.md 34): the frame size comes from the dataset (or
the run) a command reads, a user archive gets the published size and split on any machine, and
the model follows a Kinetics-400 init to width 1.0 - all said on the command's first lines.
Every command here runs on CPU under `--profile auto` (= demo) with no --set and no --profile."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import make_dataset
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from preprocess_fixtures import dicom_dataset, fan_video, save  # noqa: E402

from echoclr_cli.cli import app  # noqa: E402
from echoclr_cli.cli.common import user_set_keys  # noqa: E402
from echoclr_cli.config.load import config_to_dict, load_config, parse_set  # noqa: E402
from echoclr_cli.preprocess.run import user_archive_settings  # noqa: E402

N_PATIENTS = 20  # enough for a 75/10/15 split with every split non-empty


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def first_line(res) -> str:
    return res.output.splitlines()[0]


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """A small DICOM archive preprocessed as a user does it: `preprocess --input --output`."""
    root = tmp_path_factory.mktemp("follow")
    for i in range(N_PATIENTS):
        frames, _ = fan_video(16, 64, 80, seed=100 + i)
        save(
            dicom_dataset(frames, patient=f"P{i}", study=f"1.2.826.0.9.{i}"),
            root / "raw" / f"P{i}" / "IM1",
        )
    res = cli("preprocess", "--input", root / "raw", "--output", root / "data", "--workers", "1")
    assert res.exit_code == 0, res.output
    return root / "data", res


# --------------------------------------------------------------------------- preprocess
def test_user_archive_is_written_at_112_px_with_the_published_split_on_cpu(user_data):
    data, res = user_data
    assert first_line(res).startswith(
        "profile demo (auto: CPU) | frames 112x112 (paper, user archive)"
    )
    assert "frame size 112 px, split 75/10/15 (paper) for this archive" in res.output
    info = json.loads((data / "dataset.json").read_text())
    assert info["size"] == 112
    assert info["config"]["split"] == [0.75, 0.10, 0.15]  # not the demo profile's 60/15/25
    report = json.loads((data / "report.json").read_text())
    patients = {split: n["patients"] for split, n in report["split_sizes"].items()}
    assert patients == {"train": 15, "val": 2, "test": 3}  # the demo's split: 12/3/5


def test_a_split_or_size_the_user_sets_is_kept_and_the_demo_archive_keeps_the_profile(
    tmp_path,
):
    demo = load_config(profile="demo")
    assert (demo.preprocess.size, demo.preprocess.split) == (64, (0.6, 0.15, 0.25))
    same, notes = user_archive_settings(demo, frozenset())  # no --input: the embedded archive
    assert same is demo and notes == []
    user = demo.model_copy(
        update={"preprocess": demo.preprocess.model_copy(update={"input": tmp_path})}
    )
    cfg, notes = user_archive_settings(user, frozenset())
    assert (cfg.preprocess.size, cfg.preprocess.split) == (112, (0.75, 0.10, 0.15))
    assert len(notes) == 1 and "demo profile's frame size 64 px, split 60/15/25" in notes[0]
    split_set = user_set_keys(None, parse_set(["preprocess.split=[0.6,0.15,0.25]"]))
    cfg, notes = user_archive_settings(user, split_set)
    assert (cfg.preprocess.size, cfg.preprocess.split) == (112, (0.6, 0.15, 0.25))
    assert notes[0].startswith("frame size 112 px (paper)") and "split" not in notes[0]
    crop = user.model_copy(  # a profile's resize applies to the demo archive only, too
        update={"preprocess": user.preprocess.model_copy(update={"resize": "sector_crop"})}
    )
    cfg, notes = user_archive_settings(crop, frozenset())
    assert cfg.preprocess.resize == "whole_frame" and "resize whole_frame" in notes[0]
    yml = tmp_path / "mine.yaml"  # a --config file counts as the user's choice too
    yml.write_text("preprocess:\n  size: 48\n  split: [0.5, 0.25, 0.25]\n")
    cfg, notes = user_archive_settings(user, user_set_keys([yml], {}))
    assert (cfg.preprocess.size, cfg.preprocess.split) == (64, (0.6, 0.15, 0.25)) and not notes


# --------------------------------------------------------------------------- downstream commands
def test_check_takes_the_frame_size_from_the_dataset(user_data):
    data, _ = user_data
    res = cli("check", "--data", data)
    assert res.exit_code == 0, res.output
    assert first_line(res).startswith("profile demo (auto: CPU) | frames 112x112 (dataset) |")


def test_pretrain_one_epoch_on_the_112_px_dataset_without_any_setting(user_data, tmp_path):
    data, _ = user_data
    run = tmp_path / "ssl"
    res = cli("pretrain", "--data", data, "--method", "simclr", "--epochs", "1", "--out", run)
    assert res.exit_code == 0, res.output
    assert "frames 112x112 (dataset)" in first_line(res)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["preprocess"]["size"] == 112  # the run records the size it trained at


def test_an_explicit_size_that_differs_is_refused_naming_both(user_data, tmp_path):
    data, _ = user_data
    res = cli("check", "--data", data, "--set", "preprocess.size=64")
    assert res.exit_code == 1
    assert "has 112 px frames but preprocess.size is set to 64 px" in res.output
    yml = tmp_path / "size.yaml"
    yml.write_text("preprocess:\n  size: 96\n")
    res = cli("pretrain", "--data", data, "--config", yml, "--out", tmp_path / "never")
    assert res.exit_code == 1 and "112 px" in res.output and "96 px" in res.output
    assert not (tmp_path / "never").exists()
    res = cli("check", "--data", data, "--set", "preprocess.size=112")  # the same size: fine
    assert res.exit_code == 0, res.output


def _fake_run(run: Path, size: int) -> Path:
    """A fine-tune run dir as far as the first line reads it: config.yaml + finetune.json."""
    run.mkdir(parents=True)
    cfg = load_config(profile="demo", overrides={"preprocess": {"size": size}})
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    (run / "finetune.json").write_text(json.dumps({"frame_size": size}))
    return run


def test_evaluate_and_predict_say_the_size_of_the_run(tmp_path, monkeypatch):
    import echoclr_cli.inference.evaluate as evaluate_mod
    import echoclr_cli.inference.predict as predict_mod

    seen = {}

    def fake(cfg, *args, **kwargs):
        seen["size"] = cfg.preprocess.size
        raise SystemExit(0)

    monkeypatch.setattr(evaluate_mod, "evaluate_run", fake)
    monkeypatch.setattr(predict_mod, "predict", fake)
    run = _fake_run(tmp_path / "ft", 112)
    res = cli("evaluate", run)
    assert "frames 112x112 (run)" in first_line(res) and seen.pop("size") == 112
    res = cli("predict", run, "--input", tmp_path, "--out", tmp_path / "p.csv")
    assert "frames 112x112 (run)" in first_line(res) and seen.pop("size") == 112
    res = cli("evaluate", run, "--set", "preprocess.size=64")
    assert res.exit_code == 1 and "trained on 112 px frames" in res.output and "64 px" in res.output
    assert "size" not in seen  # refused before the core
    data = make_dataset(tmp_path, n_studies=4, size=48, record_size=True)
    res = cli("evaluate", run, "--data", data)  # another dataset: its frames are read
    assert "frames 48x48 (dataset)" in first_line(res) and seen.pop("size") == 48


# --------------------------------------------------------------------------- Kinetics init
@pytest.fixture
def kinetics_file(tmp_path, monkeypatch):
    """A fake Kinetics-400 weight file in a private torch hub cache (never downloaded)."""
    from echoclr_cli.models.backbones import build_backbone
    from echoclr_cli.models.weights import kinetics_weight_path

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = kinetics_weight_path("r3d_18")
    path.parent.mkdir(parents=True)
    torch.save(build_backbone("r3d_18", 1.0).state_dict(), path)
    return path


def test_finetune_model_follows_a_kinetics_init_to_width_1(tmp_path, kinetics_file):
    data = make_dataset(tmp_path, n_studies=12, size=32, record_size=True)
    tiny = ["--epochs", "1", "--batch-size", "4", "--set", "evaluate.bootstrap=10",
            "--set", "evaluate.plots=false"]  # fmt: skip
    res = cli("finetune", "--data", data, "--task", "lvh", "--init", "kinetics",
              "--out", tmp_path / "ft", *tiny)  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "frames 32x32 (dataset)" in lines[0] and "| width 1 |" in lines[0]
    assert lines[1].startswith("model follows the init: model.width=1.0 (from torchvision's "
                               "Kinetics-400 weights")  # fmt: skip
    assert yaml.safe_load((tmp_path / "ft/config.yaml").read_text())["model"]["width"] == 1.0
    assert json.loads((tmp_path / "ft/init.json").read_text())["format"] == "kinetics"
    # a width the user sets is kept, and Kinetics refuses it in one line
    res = cli("finetune", "--data", data, "--task", "lvh", "--init", "kinetics",
              "--set", "model.width=0.25", "--out", tmp_path / "ft2", *tiny)  # fmt: skip
    assert res.exit_code == 1 and "need model.width 1.0 (this run uses 0.25)" in res.output
    assert "model follows" not in res.output and not (tmp_path / "ft2").exists()


def test_sweep_naming_kinetics_follows_its_width(tmp_path, kinetics_file):
    data = make_dataset(tmp_path, n_studies=12, size=32, record_size=True)
    res = cli("sweep", "--data", data, "--inits", "random,kinetics", "--dry-run",
              "--out", tmp_path / "sw")  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "frames 32x32 (dataset)" in lines[0] and "| width 1 |" in lines[0]
    assert lines[1].startswith("model follows the init: model.width=1.0")
    res = cli("sweep", "--data", data, "--inits", "random", "--dry-run", "--out", tmp_path / "s2")
    assert res.exit_code == 0, res.output
    assert "| width 0.25 |" in first_line(res) and "model follows" not in res.output
