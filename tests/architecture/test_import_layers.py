"""The import graph of `src/neco` runs downward only: no package imports one above it, and no cycle.

Layers, bottom to top (DESIGN.md, docs/architecture.md): utils; backbones and data; viz and method;
evaluation (with `evaluation.features`, the one home of patch features); training and explore (the
explorer: its inputs and its page); demo; the command line (commands, cli) and the package's front
door. Inside
evaluation: blocks < (features, options, schema) < protocol < protocols < runner. Function-local
imports count too: hiding a crossing inside a function does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import neco

SRC = Path(neco.__file__).parent

LAYERS = {
    "utils": 0,
    "backbones": 1,
    "data": 1,
    "viz": 2,
    "method": 2,
    "evaluation": 3,
    "training": 4,
    "demo": 5,
    "commands": 6,
    "cli": 6,
    "explore": 4,
    "__init__": 7,
}

EVALUATION = {
    "blocks": 0,
    "features": 1,
    "options": 1,
    "schema": 1,
    "protocol": 2,
    "protocols": 3,
    "registry": 4,
    "runner": 5,
    "__init__": 6,
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "neco":
            # `from neco import backbones` imports the subpackage; the version string is metadata
            names += [f"neco.{alias.name}" for alias in node.names if alias.name != "__version__"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return [n for n in names if n == "neco" or n.startswith("neco.")]


def _part(relative: Path) -> str:
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _edges() -> list[tuple[str, str, str]]:
    """(importing file, its top-level part, imported module) for every neco import."""
    edges = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        for module in _imports(path):
            edges.append((str(relative), _part(relative), module))
    return edges


def test_no_package_imports_a_layer_above_it():
    upward = []
    for file, part, module in _edges():
        target = module.split(".")[1] if "." in module else "__init__"
        if target not in LAYERS or part not in LAYERS:
            upward.append(f"{file}: unknown part {part!r} or {target!r} (add it to LAYERS)")
        elif LAYERS[target] > LAYERS[part]:
            upward.append(f"{file} ({part}) imports {module} ({target})")
    assert not upward, "imports running up a layer:\n" + "\n".join(upward)


def test_evaluation_sublayers_run_downward():
    upward = []
    for path in sorted((SRC / "evaluation").rglob("*.py")):
        relative = path.relative_to(SRC / "evaluation")
        part = _part(relative)
        for module in _imports(path):
            if not module.startswith("neco.evaluation."):
                continue
            target = module.split(".")[2]
            if target == part:
                continue
            if EVALUATION.get(target, 9) > EVALUATION.get(part, -1):
                upward.append(f"evaluation/{relative} imports {module}")
    assert not upward, "\n".join(upward)


def test_viz_draws_without_importing_evaluation_or_training():
    for file, part, module in _edges():
        if part == "viz":
            assert module.split(".")[1] in ("viz", "utils", "backbones", "data"), f"{file} imports {module}"


def test_package_graph_has_no_cycle():
    import graphlib

    graph: dict[str, set[str]] = {}
    for _, part, module in _edges():
        target = module.split(".")[1] if "." in module else "__init__"
        if target != part:
            graph.setdefault(part, set()).add(target)
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_one_home_per_name():
    """Issue 24: `features`, `explore` and `weights` each name one library place (commands/ holds the CLI entries)."""
    homes: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*")):
        relative = path.relative_to(SRC)
        name = path.stem if path.suffix == ".py" else path.name if path.is_dir() else None
        if name in ("features", "explore", "weights") and relative.parts[0] != "commands":
            homes.setdefault(name, []).append(str(relative))
    assert all(len(places) == 1 for places in homes.values()), homes
    assert set(homes) == {"features", "explore"}, homes  # weights code lives in backbones/ (loading, formats)
