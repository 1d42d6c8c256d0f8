"""A real package: the configs ship inside it, and a built wheel works from any folder."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from echoclr_cli.config.load import config_resource, load_config

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "echoclr_cli"


def test_package_data_pattern_matches_every_shipped_data_file():
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["echoclr_cli"]
    matched = {
        Path(p).relative_to(PACKAGE).as_posix()
        for pat in patterns
        for p in glob.glob(str(PACKAGE / pat), recursive=True)
    }
    shipped = {p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "configs").rglob("*.yaml")}
    assert "configs/demo.yaml" in shipped and "configs/sweep/paper.yaml" in shipped
    shipped |= {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.csv")}
    assert "report/tripod_ai.csv" in shipped  # the TRIPOD+AI checklist of `echoclr report`
    assert shipped <= matched, f"not in the wheel: {sorted(shipped - matched)}"


def test_repo_configs_is_the_package_copy():
    """One source of truth: the top-level configs/ users read is the package's folder."""
    top = REPO / "configs"
    assert top.is_symlink() and top.resolve() == (PACKAGE / "configs").resolve()


def test_profiles_load_through_importlib_resources():
    demo = load_config(profile="demo")
    assert demo.profile == "demo" and demo.model.width == 0.25
    res = config_resource("sweep/paper.yaml")
    assert res.is_file() and "sweep" in res.read_text()


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_from_another_folder(tmp_path):
    """Build the wheel from a copy of the sources, `pip install` it (no network, no deps) into a
    new venv, then from an unrelated folder: `echoclr demo --help` and every profile loads."""
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "echoclr_cli", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    run = dict(check=True, capture_output=True, text=True, env=env)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(wheels)], cwd=src, **run,
    )  # fmt: skip
    (wheel,) = wheels.glob("echoclr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "echoclr_cli/configs/demo.yaml" in names and "echoclr_cli/sweep/__init__.py" in names
    assert "echoclr_cli/report/tripod_ai.csv" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], **run)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], **run
    )
    # dependencies (torch, pandas, ...) from this environment; the package only from the venv
    deps = {**env, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run(
        [str(venv / "bin" / "echoclr"), "demo", "--help"], cwd=elsewhere, check=True,
        capture_output=True, text=True, env=deps,
    ).stdout  # fmt: skip
    assert "--root" in out
    code = (
        "import echoclr_cli, pathlib\n"
        f"assert pathlib.Path(echoclr_cli.__file__).is_relative_to({str(venv)!r}), echoclr_cli\n"
        "from echoclr_cli.config.load import config_resource, load_config\n"
        "assert load_config(profile='demo').model.width == 0.25\n"
        "from echoclr_cli.report.tripod import TRIPOD_AI\n"
        "assert len(TRIPOD_AI) == 52\n"
        "files = ['sweep/paper.yaml', 'finetune/as.yaml', 'pretrain/echoclr.yaml']\n"
        "import tempfile, os\n"
        "for f in files:\n"
        "    p = os.path.join(tempfile.mkdtemp(), 'c.yaml')\n"
        "    open(p, 'w').write(config_resource(f).read_text())\n"
        "    load_config([p])\n"
        "print('ok')\n"
    )
    res = subprocess.run(
        [str(py), "-c", code], cwd=elsewhere, capture_output=True, text=True, env=deps
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
