"""The package's import structure: every module imports, no import cycles, and dependencies
point one way (STYLE.md): layout, boxes, config -> models -> processes, sampling -> rl, train,
evaluate -> cli, ui; and scorers -> metrics -> benchmarks, scoring -> reports.

The graph is read with ``ast`` from src/idruid. Only imports that run when a module is imported
count: module-level statements (also inside a module-level ``if`` or ``try``), not those inside
functions or classes, and not those under ``if TYPE_CHECKING:``. A function-level import is how
a lower module reaches a loader or a plugin at call time (checkpoint -> models, the scorer
registry -> GroundingDINO / SAM / the VLM judge), so it may point anywhere.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import idruid

ROOT = Path(idruid.__file__).parent

# Layers as module-name prefixes (the longest prefix decides). "base" is below everything.
LAYERS = {
    "base": (
        "idruid",
        "idruid.layout",
        "idruid.boxes",
        "idruid.config",
        "idruid.colors",
        "idruid.textfile",
        "idruid.atomic",
        "idruid.faults",
        "idruid.model_dirs",
        "idruid.checkpoint",
        "idruid.data",
        "idruid.convert",
    ),
    "models": ("idruid.models",),
    "processes": ("idruid.processes", "idruid.policy_steps", "idruid.losses", "idruid.sampling"),
    "scorers": ("idruid.scorers",),
    "metrics": ("idruid.metrics",),
    "benchmarks": ("idruid.benchmarks", "idruid.scoring"),
    "reports": ("idruid.reports",),
    "top": (
        "idruid.rl",
        "idruid.train",
        "idruid.paired",
        "idruid.train_log",
        "idruid.train_state",
        "idruid.evaluate",
        "idruid.pipeline",
        "idruid.quality",
    ),
    "front": ("idruid.cli", "idruid.ui", "idruid.demo"),
}
# Each chain lists layers lowest first; a module may import its own layer or one below it in
# some chain. The two chains meet only at "base" and from "top" up.
CHAINS = (
    ("base", "models", "processes", "top", "front"),
    ("base", "scorers", "metrics", "benchmarks", "reports", "top", "front"),
)
# Upward imports that are part of the design, each with its reason.
ALLOWED_UPWARD = {
    # A backbone is built with its diffusion process (STYLE: every backbone exposes the process's
    # predict and its prediction type); processes import no model code.
    ("idruid.models.sd3", "idruid.processes"),
    ("idruid.models.sd15", "idruid.processes"),
    ("idruid.models.sd3_druid", "idruid.processes"),
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_imports(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            yield from _import_time_imports(node.body)
            yield from _import_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _import_time_imports(block)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The idruid modules an import statement loads (a package's parents included)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            package = module.split(".")
            if MODULES[module].name != "__init__.py":
                package = package[:-1]
            package = package[: len(package) - (node.level - 1)]
            prefix = ".".join(package + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [
            f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in MODULES else prefix
            for alias in node.names
        ]
    targets = set()
    for name in names:
        parts = name.split(".")
        targets |= {".".join(parts[:k]) for k in range(2, len(parts) + 1)}  # the parents run first
    # a module's own packages are already being imported when it runs: no edge to them
    return {t for t in targets if t in MODULES and t != module and not module.startswith(t + ".")}


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[module] = set().union(*(_targets(module, n) for n in _import_time_imports(tree.body)))
    return graph


def _layer(module: str) -> str:
    matches = [
        (len(prefix), layer)
        for layer, prefixes in LAYERS.items()
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return max(matches)[1]


def may_import(importer: str, imported: str) -> bool:
    low, high = _layer(imported), _layer(importer)
    return any(low in chain and high in chain and chain.index(low) <= chain.index(high) for chain in CHAINS)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# ----------------------------------------------------------------------------- tests


def test_the_graph_reader_sees_relative_parent_and_type_checking_imports():
    graph = import_graph()
    assert "idruid.scorers.registry" in graph["idruid.scorers.sam"]  # from .registry import
    assert "idruid.reports" in graph["idruid.evaluate"]  # reports.figures: the package runs first
    assert "idruid.scorers" not in graph["idruid.scorers.sam"]  # its own package is already running
    assert "idruid.boxes" in graph["idruid.rl.stage"]  # from ..boxes import (a parent package)
    assert not any(m.startswith("idruid.scorers") for m in graph["idruid.metrics"])  # TYPE_CHECKING only
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_is_in_a_layer():
    for module in MODULES:
        _layer(module)


def test_no_lower_layer_imports_a_higher_one():
    wrong = [
        f"{importer} ({_layer(importer)}) imports {imported} ({_layer(imported)})"
        for importer, imported_modules in sorted(import_graph().items())
        for imported in sorted(imported_modules)
        if not may_import(importer, imported) and (importer, imported) not in ALLOWED_UPWARD
    ]
    assert not wrong, "\n".join(wrong)


def test_the_layer_rule_itself():
    assert may_import("idruid.rl.critic", "idruid.models.adapter")  # rl is above models
    assert not may_import("idruid.processes", "idruid.rl.logprob")
    assert may_import("idruid.metrics", "idruid.scorers.protocols")
    assert not may_import("idruid.scorers.analytic", "idruid.metrics")
    assert not may_import("idruid.models.base", "idruid.scorers.registry")  # the chains do not mix
    assert may_import("idruid.evaluate", "idruid.reports.figures")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)
