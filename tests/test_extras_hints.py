"""Optional extras: every command that needs one says in one line what to install (brackets
intact), exits 1 before any work and shows no traceback. A missing package is simulated with
``sys.modules[name] = None`` (its import then fails). Also: packaged config names for --config
and shell completion."""

from __future__ import annotations

import sys

import pytest
from explain_fixtures import make_runs
from typer.testing import CliRunner

from echoclr_cli import cli
from echoclr_cli.errors import EXTRAS, UserError, extra_hint, require_extra

CPU = ["--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("extras"))


def hide(monkeypatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def invoke(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def assert_hint(res, package: str, extra: str) -> None:
    """Exit 1, one error line and one fix line naming the extra with its brackets, no traceback."""
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    err = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    fix = [ln for ln in res.output.splitlines() if ln.strip().startswith("fix:")]
    assert len(err) == 1 and len(fix) == 1, res.output
    assert f"pip install 'echoclr[{extra}]' (or: pip install {package})" in fix[0]


# --------------------------------------------------------------------------- the one helper
@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_require_extra_names_the_extra_and_the_package(monkeypatch, module):
    hide(monkeypatch, module)
    with pytest.raises(UserError) as e:
        require_extra(module, "this command", alternative="do the other thing")
    package, extra = EXTRAS[module]
    assert e.value.message == f"this command needs {package}, which is not installed"
    assert (
        e.value.fix
        == f"pip install 'echoclr[{extra}]' (or: pip install {package}), or do the other thing"
    )
    assert extra_hint(module) in e.value.fix


def test_require_extra_finds_a_hidden_package_even_when_the_module_was_imported(monkeypatch):
    import torch.utils.tensorboard  # noqa: F401  (cached in sys.modules)

    hide(monkeypatch, "tensorboard")
    with pytest.raises(UserError, match="needs tensorboard"):
        require_extra("torch.utils.tensorboard", "runtime.tensorboard", package="tensorboard")
    monkeypatch.undo()
    assert require_extra("torch.utils.tensorboard", "x", package="tensorboard").SummaryWriter


def test_error_lines_print_brackets_and_user_text_literally(capsys):
    from echoclr_cli import console as report

    report.error("label '[bold]x[/bold]' unknown", "pip install 'echoclr[explain]'")
    err = capsys.readouterr().err
    assert "label '[bold]x[/bold]' unknown" in err and "pip install 'echoclr[explain]'" in err


# --------------------------------------------------------------------------- each command path
def test_explain_without_captum(runs, tmp_path, monkeypatch):
    hide(monkeypatch, "captum", "captum.attr")
    out = tmp_path / "ex"
    res = invoke("explain", runs.finetune, "--data", runs.data, "--top", "1", "--out", out, *CPU)
    assert_hint(res, "captum", "explain")
    assert "echoclr explain needs captum" in res.output
    assert not out.exists()


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_export_onnx_without_onnx_or_onnxruntime(runs, tmp_path, monkeypatch, module):
    hide(monkeypatch, module)
    out = tmp_path / "m.onnx"
    res = invoke("export", runs.finetune, "--format", "onnx", "-o", out)
    assert_hint(res, module, "explain")
    assert "or --format torchscript" in res.output
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_predict_with_an_onnx_model_without_onnxruntime(runs, tmp_path, monkeypatch):
    from echoclr_cli.inference.export import export_run

    model = tmp_path / "m.onnx"
    export_run(runs.cfg, run_dir=runs.finetune, fmt="onnx", out=model)
    hide(monkeypatch, "onnxruntime")
    out = tmp_path / "p.csv"
    res = invoke("predict", model, "--input", runs.data, "--out", out, *CPU)
    assert_hint(res, "onnxruntime", "explain")
    assert not out.exists()


def test_embed_map_umap_without_umap_learn(runs, tmp_path, monkeypatch):
    hide(monkeypatch, "umap")
    out = tmp_path / "emb"
    res = invoke("embed", runs.pretrain, "--data", runs.data, "--map", "umap", "--out", out, *CPU)
    assert_hint(res, "umap-learn", "umap")
    assert "or use --map pca" in res.output and not out.exists()


def test_embed_map_auto_without_umap_learn_uses_pca(monkeypatch):
    import numpy as np

    from echoclr_cli.analysis.embed import map_2d

    hide(monkeypatch, "umap")
    coords, used = map_2d(np.random.default_rng(0).normal(size=(8, 4)), "auto")
    assert used == "pca" and coords.shape == (8, 2)


def test_training_with_tensorboard_on_without_it_stops_before_training(runs, tmp_path, monkeypatch):
    hide(monkeypatch, "tensorboard", "torch.utils.tensorboard")
    out = tmp_path / "ft"
    res = invoke("finetune", "--data", runs.data, "--task", "lvh", "--init", "random", "--out",
                 out, "--epochs", "1", "--set", "model.width=0.125", "--set",
                 "runtime.tensorboard=true", "--profile", "demo", *CPU)  # fmt: skip
    assert_hint(res, "tensorboard", "explain")
    assert "or --set runtime.tensorboard=false" in res.output
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize("launcher", ["local", "slurm"])
def test_sweep_launcher_without_submitit_stops_before_writing(
    runs, tmp_path, monkeypatch, launcher
):
    hide(monkeypatch, "submitit")
    out = tmp_path / "sweep"
    res = invoke("sweep", "--data", runs.data, "--out", out, "--launcher", launcher,
                 "--inits", "random", "--tasks", "lvh", "--ratios", "1.0", "--seeds", "0",
                 "--profile", "demo", *CPU)  # fmt: skip
    assert_hint(res, "submitit", "cluster")
    assert "sweep --launcher local|slurm needs submitit" in res.output
    assert not out.exists()


def test_missing_lossless_dicom_decoder_hint_keeps_its_brackets(tmp_path, monkeypatch):
    """The preprocess preflight (FAULTS.md 6): the GPL extra's name is printed intact."""
    from preprocess_fixtures import dicom_dataset, fan_video, save
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    from echoclr_cli.data import readers

    frames, _ = fan_video(10, 48, 64, seed=5)
    ds = dicom_dataset(frames, patient="P0", study="0")
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"] * 10)
    ds["PixelData"].VR = "OB"
    save(ds, tmp_path / "raw" / "P0" / "S0" / "a.dcm")
    monkeypatch.setattr(readers, "decoder_available", lambda uid: uid != str(JPEGLosslessSV1))
    res = invoke("preprocess", "--input", tmp_path / "raw", "--output", tmp_path / "d")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "pip install 'echoclr[gpl-decoders]'" in res.output and "python-gdcm" in res.output


# --------------------------------------------------------------------------- --config names
@pytest.mark.parametrize("name", ["sweep/paper", "sweep/paper.yaml", "configs/sweep/paper.yaml"])
def test_packaged_config_by_name(name, tmp_path, monkeypatch):
    from echoclr_cli.config.load import load_config, read_yaml

    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the installed package's file
    assert read_yaml(name) == read_yaml(cli_configs() / "sweep" / "paper.yaml")
    assert (
        load_config([name]).sweep.model_dump()
        == load_config([cli_configs() / "sweep" / "paper.yaml"]).sweep.model_dump()
    )


def cli_configs():
    from importlib import resources

    return resources.files("echoclr_cli").joinpath("configs")


def test_packaged_names_cover_pretrain_and_finetune(tmp_path, monkeypatch):
    from echoclr_cli.config.load import load_config, packaged_configs

    monkeypatch.chdir(tmp_path)
    assert {"sweep/paper", "pretrain/echoclr", "finetune/as"} <= set(packaged_configs())
    assert load_config(["pretrain/echoclr"]).pretrain.method == "echoclr"
    assert load_config(["finetune/as"]).finetune.task == "as"


def test_a_real_path_wins_over_a_packaged_name(tmp_path, monkeypatch):
    from echoclr_cli.config.load import read_yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "paper.yaml").write_text("sweep:\n  seeds: [7]\n")
    assert read_yaml("sweep/paper.yaml") == {"sweep": {"seeds": [7]}}
    assert read_yaml("sweep/paper") != {"sweep": {"seeds": [7]}}  # no such file: the package's


def test_unknown_config_name_lists_the_packaged_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("check", "--data", tmp_path, "--config", "sweep/papr")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "config file not found: sweep/papr" in res.output
    assert "sweep/paper" in res.output and "pretrain/echoclr" in res.output
    from echoclr_cli.config.load import packaged_config_name

    assert packaged_config_name("../../etc/passwd") is None  # only listed names


def test_cli_sweep_dry_run_with_a_packaged_config_name(runs, tmp_path, monkeypatch):
    """The README's sweep line after pip install: the paper grid (1% labels at lr 1e-5 ...)."""
    monkeypatch.chdir(tmp_path)
    args = ["sweep", "--data", runs.data, "--out", tmp_path / "s", "--dry-run", "--profile",
            "demo", "--inits", "random", "--tasks", "lvh", *CPU]  # fmt: skip
    for name in ("sweep/paper", "configs/sweep/paper.yaml"):
        res = invoke(*args, "--config", name)
        assert res.exit_code == 0, res.output
        assert "r0.01_lr1e-05_s0" in res.output
    assert "r0.01_lr1e-05_s0" not in invoke(*args).output  # the demo grid differs


# --------------------------------------------------------------------------- completion
def test_shell_completion_options_and_completion_of_commands():
    res = invoke("--help")
    assert "--install-completion" in res.output and "--show-completion" in res.output
    res = CliRunner().invoke(
        cli.app,
        [],
        prog_name="echoclr",
        env={"_ECHOCLR_COMPLETE": "complete_bash", "COMP_WORDS": "echoclr pre", "COMP_CWORD": "1"},
    )
    assert set(res.output.split()) == {"preprocess", "pretrain", "predict"}
    res = invoke("--show-completion", "bash")
    assert res.exit_code == 0 and "_ECHOCLR_COMPLETE=complete_bash" in res.output
