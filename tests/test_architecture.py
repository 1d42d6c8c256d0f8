"""docs/ARCHITECTURE.md's layers as a test, on every import of the package (lazy imports inside
functions included): every module has a layer; no import points to a higher layer; no import
cycle; no command module imports another command module; the package root holds only the
modules named here (a new top-level module needs a layer first)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "echoclr_cli"

# Keep in step with docs/ARCHITECTURE.md, "Layers". A name covers its submodules (``data`` =
# every module of echoclr_cli/data/ except the ones named more precisely).
LAYERS: dict[int, tuple[str, ...]] = {
    7: ("cli", "__main__"),
    6: ("demo", "sweep", "report", "inference.predict"),
    5: ("preprocess.run", "preprocess.view_filter", "pretrain.run", "finetune.run",
        "finetune.multiclass", "inference.evaluate", "inference.export", "analysis"),
    4: ("training", "inference", "pretrain", "finetune", "clinical", "metrics.plots", "config.recipe"),
    3: ("models", "metrics", "data", "synth", "preprocess"),
    2: ("rundir", "schema"),
    1: ("config", "errors", "io", "runtime", "events", "console", "pretrain.methods"),
}  # fmt: skip

# One command's work each ("a command body is one core call"): none imports another. The
# orchestration layer (6) composes them: demo, sweep, report and predict (preprocess + inference).
COMMANDS = LAYERS[5]

# The package root: the foundation, the run contracts, and the demo (the command without a
# family; `echoclr check` is the one preflight, training/preflight.py).
ROOT_MODULES = {"__init__", "__main__", "errors", "io", "events", "runtime", "rundir", "schema",
                "console", "demo"}  # fmt: skip


def layer_of(module: str) -> int | None:
    name = module.removeprefix("echoclr_cli.")
    best: tuple[int, int] | None = None
    for level, names in LAYERS.items():
        for n in names:
            if (name == n or name.startswith(n + ".")) and (best is None or len(n) > best[1]):
                best = (level, len(n))
    return best[0] if best else None


def is_command(module: str) -> bool:
    name = module.removeprefix("echoclr_cli.")
    return any(name == n or name.startswith(n + ".") for n in COMMANDS)


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        mod = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[mod.removesuffix(".__init__")] = path
    return out


def imports() -> list[tuple[str, str]]:
    """(importer, imported module) for every echoclr_cli import in the package, lazy ones
    included; ``from echoclr_cli.x import y`` counts as importing module ``x.y`` when that is one."""
    mods = modules()
    out = []
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("echoclr_cli"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    out.append((mod, full if full in mods else node.module))
            elif isinstance(node, ast.Import):
                out += [(mod, a.name) for a in node.names if a.name.startswith("echoclr_cli")]
    return [(a, b) for a, b in out if b != "echoclr_cli" and a != b]


def cycles(edges: list[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    mods = set(modules()) - {"echoclr_cli"}
    assert [m for m in sorted(mods) if layer_of(m) is None] == []


def test_the_package_root_holds_only_the_listed_modules():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == ROOT_MODULES, "a new top-level module needs a layer (tests/test_architecture.py)"
    assert len(top) <= 15


def test_no_import_points_up():
    up = sorted({(a, b) for a, b in imports() if layer_of(b) > layer_of(a)})
    assert up == [], "imports into a higher layer (docs/ARCHITECTURE.md, Layers)"


def test_no_import_cycle():
    assert cycles(imports()) == []


def test_no_command_imports_another_command():
    cross = sorted(
        {
            (a, b)
            for a, b in imports()
            if is_command(a) and is_command(b) and a.split(".")[:2] != b.split(".")[:2]
        }  # fmt: skip
    )
    assert cross == []


def test_the_checks_can_fail():
    assert layer_of("echoclr_cli.cli.train") > layer_of("echoclr_cli.training.engine")
    assert layer_of("echoclr_cli.preprocess.view_filter") == 5
    assert layer_of("echoclr_cli.preprocess.worker") == 3
    assert layer_of("echoclr_cli.pretrain.methods") == 1 < layer_of("echoclr_cli.pretrain.task")
    assert layer_of("echoclr_cli.newthing") is None
    assert cycles([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]) == [["a", "b", "c"]]
    assert cycles([("a", "b"), ("b", "c")]) == []
    assert is_command("echoclr_cli.pretrain.run") and not is_command("echoclr_cli.pretrain.plan")
