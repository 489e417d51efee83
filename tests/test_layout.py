"""The shape of the code: imports point one way (docs/design.md#layers), the runtimes stay torch-free,
every package is installed, and no product file grows past ~400 lines.

The import graph is read with ast from every module of the three rooms (lightdeploy/, exporters/,
runtimes/), counting every import statement, also those inside functions: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
ROOMS = {"lightdeploy": "lightdeploy", "exporters": "lightdeploy.exporters", "runtimes": "lightdeploy.runtimes"}
MAX_LINES = 400

# Layers, lowest first.  A module may import modules of lower layers, and of its own layer within its
# own group (exporters and parity are siblings of one layer: neither imports the other).
BASE = {"lightdeploy.errors", "lightdeploy.versions"}
PIPELINE = {
    "lightdeploy.pipeline",
    "lightdeploy.jobs",
    "lightdeploy.checks",
    "lightdeploy.build",
    "lightdeploy.bench",
    "lightdeploy.eager",
    "lightdeploy.matrix",
    "lightdeploy.matrix_report",
}
PIPELINE_PACKAGES = ("lightdeploy.evaluation", "lightdeploy.localize")
FACADE = {"lightdeploy", "lightdeploy.cli", "lightdeploy.testing", "lightdeploy.pytest_plugin"}
# What a runtime module may import from outside lightdeploy, besides the standard library.
RUNTIME_THIRD_PARTY = {
    "numpy",
    "PIL",
    "onnxruntime",
    "openvino",
    "ai_edge_litert",
    "tflite_runtime",
    "tensorrt",
    "cuda",
}


def layer(module: str) -> tuple[int, str]:
    """(layer, group) of a lightdeploy module."""
    if module in BASE:
        return 0, "base"
    if module.startswith("lightdeploy.runtimes"):
        return 1, "runtimes"
    if module.startswith("lightdeploy.exporters"):
        return 3, "exporters"
    if module.startswith("lightdeploy.parity"):
        return 3, "parity"
    if module in PIPELINE or module.startswith(PIPELINE_PACKAGES):
        return 4, "pipeline"
    if module in FACADE or module.startswith("lightdeploy.cli."):
        return 5, "facade"
    return 2, "core"  # models, ops, factory, weights, samples, calibration, ...


def modules() -> dict[str, Path]:
    """{module name: file} of every module in the three rooms."""
    out = {}
    for folder, package in ROOMS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if folder == "lightdeploy" and parts and parts[0] in ("exporters", "runtimes"):
                continue  # not a real folder of lightdeploy/; mapped rooms are read from their own folders
            out[name] = path
    return out


def imports(path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported name, line) of every import in ``path``; ``from a import b`` counts as a.b when that
    is a module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.append((sub if sub in known else node.module, node.lineno))
    return out


def graph() -> dict[str, dict[str, int]]:
    """{module: {imported lightdeploy module: line}}."""
    mods = modules()
    known = set(mods)
    edges: dict[str, dict[str, int]] = {m: {} for m in mods}
    for name, path in mods.items():
        for target, line in imports(path, known):
            while target not in known and "." in target and target.startswith("lightdeploy"):
                target = target.rsplit(".", 1)[0]  # an attribute import: the module that holds it
            if target in known and target != name:
                edges[name].setdefault(target, line)
    return edges


def strongly_connected(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (the import cycles)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    cycles = strongly_connected(graph())
    assert not cycles, f"import cycles: {cycles}"


def test_imports_point_down_the_layers():
    bad = []
    for module, targets in graph().items():
        (mine, group) = layer(module)
        for target, line in targets.items():
            theirs, their_group = layer(target)
            if theirs > mine or (theirs == mine and their_group != group):
                bad.append(f"{module} (line {line}) imports {target}: {group} -> {their_group}")
    assert not bad, "\n".join(bad)


def test_runtimes_import_only_numpy_pillow_and_their_backends():
    """An edge device runs lightdeploy.runtimes with numpy, Pillow and one backend runtime."""
    mods = modules()
    known = set(mods)
    bad = []
    for name, path in mods.items():
        if not name.startswith("lightdeploy.runtimes"):
            continue
        for target, line in imports(path, known):
            top = target.split(".")[0]
            if top == "lightdeploy":
                continue  # held to the layers by the test above
            if top not in sys.stdlib_module_names and top not in RUNTIME_THIRD_PARTY:
                bad.append(f"{name} (line {line}) imports {target}")
    assert not bad, "\n".join(bad)


def test_the_layer_rules_catch_an_upward_import():
    """The checks above can fail: a runtime importing torch or an exporter is caught."""
    assert layer("lightdeploy.runtimes.base") < layer("lightdeploy.exporters.onnx.export")
    assert layer("lightdeploy.parity.gate")[1] != layer("lightdeploy.exporters.base")[1]
    assert strongly_connected({"a": {"b": 1}, "b": {"a": 2}}) == [["a", "b"]]
    assert "torch" not in RUNTIME_THIRD_PARTY and "torch" not in sys.stdlib_module_names


def test_every_package_is_installed():
    """pyproject lists packages by hand (the package-dir mapping rules out discovery): none may be missing."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert packages == listed, f"missing: {sorted(packages - listed)}; stale: {sorted(listed - packages)}"


@pytest.mark.parametrize("folder", sorted(ROOMS))
def test_product_files_stay_small(folder):
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / folder).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines (split them by role): {long}"
