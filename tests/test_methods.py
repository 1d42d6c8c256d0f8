"""The method registry (pretrain/methods.py) is the one place that says what SimCLR, MI-SimCLR and
EchoCLR are, and everything that names a method reads it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from echoclr_cli.config.schema import Config, pretrain_epochs
from echoclr_cli.pretrain import methods
from echoclr_cli.pretrain.methods import DEFAULT_METHOD, METHOD_NAMES, METHODS

PACKAGE = Path(methods.__file__).resolve().parents[1]

# "echoclr" also names the program, a dataset layout and the public ordering salt: those
# modules hold the string for that other meaning, never for the method.
# "echoclr" there is the program name (cli.app), the published layout name (config.sections,
# data.layouts.discover) or the public order salt (preprocess.run), not the method
ECHOCLR_NOT_THE_METHOD = {"cli.app", "config.sections", "data.layouts.discover", "preprocess.run"}


def test_the_registry_holds_the_three_published_methods():
    assert METHOD_NAMES == ("simclr", "mi-simclr", "echoclr")  # the paper's order
    got = {n: (m.pairing, m.reorder, m.published_epochs, m.loss_terms) for n, m in METHODS.items()}
    assert got == {
        "simclr": ("clip", False, 520, ("nt_xent",)),
        "mi-simclr": ("study", False, 300, ("nt_xent",)),
        "echoclr": ("study", True, 300, ("nt_xent", "reorder")),
    }
    assert all(name == m.name for name, m in METHODS.items())
    assert DEFAULT_METHOD == "echoclr" == Config().pretrain.method


def test_the_config_accepts_exactly_the_registry_and_takes_its_epochs():
    for name, m in METHODS.items():
        cfg = Config.model_validate({"pretrain": {"method": name}})
        assert pretrain_epochs(cfg.pretrain) == m.published_epochs
    with pytest.raises(ValidationError) as e:
        Config.model_validate({"pretrain": {"method": "byol"}})
    assert "'simclr', 'mi-simclr' or 'echoclr'" in str(e.value)  # the error lists the valid ones


def test_the_registry_is_a_leaf_of_the_standard_library():
    """Config validation (the lowest layer) imports it: nothing but the standard library."""
    tree = ast.parse(Path(methods.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}  # fmt: skip
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}


def _string_constants(path: Path) -> set[str]:
    """Every string constant of a module except docstrings."""
    tree = ast.parse(path.read_text())
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
    }


def test_each_method_name_is_written_in_one_module_of_the_package():
    holders: dict[str, set[str]] = {name: set() for name in METHOD_NAMES}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for name in _string_constants(path) & set(METHOD_NAMES):
            holders[name].add(module)
    holders["echoclr"] -= ECHOCLR_NOT_THE_METHOD
    assert holders == {name: {"pretrain.methods"} for name in METHOD_NAMES}


def test_the_scan_can_fail(tmp_path):
    """Docstrings are skipped; a string constant anywhere else counts."""
    path = tmp_path / "m.py"
    path.write_text('"""simclr"""\ndef f():\n    """mi-simclr"""\n    return {"k": "echoclr"}\n')
    assert _string_constants(path) == {"k", "echoclr"}
