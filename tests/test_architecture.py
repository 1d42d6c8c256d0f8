"""docs/ARCHITECTURE.md's layer table as a test: every module has a layer, and no import (lazy
ones inside functions included) points to a higher layer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "echoclr_cli"

# Keep in step with docs/ARCHITECTURE.md, "Layers". A name covers its submodules
# (``data`` = every module of echoclr_cli/data/ except the ones named more precisely).
LAYERS: dict[int, tuple[str, ...]] = {
    7: ("cli", "cli_app", "cli_options", "cli_params", "cli_data", "cli_train", "cli_results",
        "cli_runs", "cli_inspect", "__main__"),
    6: ("demo", "sweep", "report_html", "report_sections", "report_sweep", "report_tripod"),
    5: ("pretrain", "finetune", "evaluate", "predict", "embed", "explain", "export", "check",
        "preprocess", "multiclass", "multiclass_train", "finetune_fit", "recipe",
        "data.view_filter"),
    4: ("engine", "inference", "clinical", "clinical_plots", "clinical_subgroups",
        "clinical_sweep", "plots"),
    3: ("models", "losses", "optim", "sync_bn", "weights", "checkpoint", "metrics",
        "metrics_cluster", "metrics_multiclass", "compare", "aggregate", "data", "tb"),
    2: ("rundir", "schema"),
    1: ("config", "config_load", "errors", "io", "report", "runtime", "events"),
}  # fmt: skip


def layer_of(module: str) -> int | None:
    name = module.removeprefix("echoclr_cli.")
    best: tuple[int, int] | None = None
    for level, names in LAYERS.items():
        for n in names:
            if (name == n or name.startswith(n + ".")) and (best is None or len(n) > best[1]):
                best = (level, len(n))
    return best[0] if best else None


def imports() -> list[tuple[str, str]]:
    """(importer, imported) for every echoclr_cli import in the package, lazy ones included."""
    out = []
    for path in PACKAGE.rglob("*.py"):
        mod = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        mod = mod.removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("echoclr_cli"):
                if node.module == "echoclr_cli":
                    out += [(mod, f"echoclr_cli.{a.name}") for a in node.names]
                else:
                    out.append((mod, node.module))
            elif isinstance(node, ast.Import):
                out += [(mod, a.name) for a in node.names if a.name.startswith("echoclr_cli")]
    return [(a, b) for a, b in out if b not in ("echoclr_cli", "echoclr_cli.__version__")]


def test_every_module_has_a_layer():
    mods = {a for a, _ in imports()} | {b for _, b in imports()}
    assert [m for m in sorted(mods) if layer_of(m) is None] == []


def test_no_import_points_up():
    up = sorted({(a, b) for a, b in imports() if layer_of(b) > layer_of(a)})
    assert up == [], "imports into a higher layer (docs/ARCHITECTURE.md, Layers)"


def test_the_layer_check_can_fail():
    assert layer_of("echoclr_cli.cli_train") > layer_of("echoclr_cli.engine")
    assert (
        layer_of("echoclr_cli.data.view_filter") == 5 and layer_of("echoclr_cli.data.readers") == 3
    )
