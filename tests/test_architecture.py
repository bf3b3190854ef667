"""The package's import structure: every module imports, no import cycles, and dependencies point
one way, from the layers below to the layers above (``CHAINS``):

    errors -> base -> processes -> models -> sampling -> top -> front
    errors -> base -> scorers -> metrics -> benchmarks -> reports -> top -> front

The graph is read with ``ast`` from src/idruid and holds every import statement: module-level ones
(also inside ``if`` and ``try``), those under ``if TYPE_CHECKING:`` and those inside functions.
An import deferred into a function still ties the two modules together (it runs on the first
call, and a cycle through it is still a cycle), so it obeys the same rules. The one way out is
``ALLOWED``: a function-level import that must point the other way, each with its reason.

``python tests/test_architecture.py > docs/architecture.md`` writes the picture of the layers
(``architecture_markdown``); ``test_the_architecture_page_is_current`` checks that it was.
"""

from __future__ import annotations

import ast
import importlib
from collections import Counter
from pathlib import Path

import pytest

import idruid

ROOT = Path(idruid.__file__).parent
PAGE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

# Layers as module-name prefixes (the longest prefix decides); a package covers its modules,
# except the root package "idruid", which covers only its own __init__ (it exports
# idruid.IDruidPipeline from the pipeline on first use, so it sits above everything).
LAYERS: dict[str, tuple[str, ...]] = {
    # the user-facing errors: imported by every layer, importing nothing
    "errors": ("idruid.errors",),
    # layouts, boxes, configs, files, the conditioning tensors, the shapes world and the dataset
    # readers, format conversion
    "base": (
        "idruid.layout",
        "idruid.boxes",
        "idruid.config",
        "idruid.colors",
        "idruid.textfile",
        "idruid.atomic",
        "idruid.faults",
        "idruid.model_dirs",
        "idruid.ranks",
        "idruid.conditioning",
        "idruid.data",
        "idruid.convert",
    ),
    # the diffusion processes, their steps and losses: no model code
    "diffusion": ("idruid.diffusion", "idruid.policy_steps", "idruid.losses"),
    # the backbones (each built with its process), the IDM, text encoders, codecs
    "models": ("idruid.models",),
    # what a model is used through: the sampling loop, checkpoints (which build models) and the
    # one loader of every checkpoint format
    "sampling": ("idruid.sampling", "idruid.checkpoint", "idruid.loader"),
    "scorers": ("idruid.scorers",),
    "metrics": ("idruid.metrics",),
    "evaluation": ("idruid.eval_benchmarks", "idruid.scoring"),
    "reports": ("idruid.reports",),
    # training, the RL stage, evaluation, the diffusers pipeline, image quality
    "top": (
        "idruid.rl",
        "idruid.train",
        "idruid.stage1",
        "idruid.train_log",
        "idruid.train_state",
        "idruid.ema",
        "idruid.evaluate",
        "idruid.pipeline",
        "idruid.quality",
    ),
    # front ends: imported by nothing but each other
    "front": ("idruid.cli", "idruid.ui", "idruid.demo", "idruid"),
}
# Each chain lists layers lowest first; a module may import its own layer or one below it in
# some chain. The two chains share "errors" and "base" and meet again from "top" up.
CHAINS = (
    ("errors", "base", "diffusion", "models", "sampling", "top", "front"),
    ("errors", "base", "scorers", "metrics", "evaluation", "reports", "top", "front"),
)
# (importer, imported) -> why: function-level imports that may point up or close a cycle (a plugin
# loaded by name that imports its loader back). None today: the scorer registry's loaders import
# grounding_dino / sam / vlm_judge, which import only scorers.roles, below the registry.
ALLOWED: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imports(tree: ast.Module):
    """Every import statement of a module, with whether it sits inside a function (runs on a
    call, not when the module is imported)."""

    def walk(node: ast.AST, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from walk(child, inside)

    yield from walk(tree, False)


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


def read_imports() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """(graph: module -> the modules it imports anywhere, the (importer, imported) edges made
    only by imports inside functions)."""
    graph: dict[str, set[str]] = {}
    at_import: set[tuple[str, str]] = set()
    in_functions: set[tuple[str, str]] = set()
    for module, path in MODULES.items():
        graph[module] = set()
        for node, in_function in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            for target in _targets(module, node):
                graph[module].add(target)
                (in_functions if in_function else at_import).add((module, target))
    return graph, in_functions - at_import


def import_graph() -> dict[str, set[str]]:
    return read_imports()[0]


def _covers(prefix: str, module: str) -> bool:
    return module == prefix or (prefix != "idruid" and module.startswith(prefix + "."))


def _layer(module: str) -> str:
    matches = [
        (len(prefix), layer)
        for layer, prefixes in LAYERS.items()
        for prefix in prefixes
        if _covers(prefix, module)
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


def _without_allowed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {t for t in targets if (m, t) not in ALLOWED} for m, targets in graph.items()}


# ----------------------------------------------------------------------------- the picture


def _layer_order() -> list[str]:
    """The layers lowest first: the chains merged (each chain's order kept)."""
    order: list[str] = []
    for chain in CHAINS:
        for k, layer in enumerate(chain):
            if layer not in order:  # just below the next layer of its chain already placed
                above = [order.index(high) for high in chain[k + 1 :] if high in order]
                order.insert(min(above, default=len(order)), layer)
    return order


def architecture_markdown() -> str:
    """docs/architecture.md: the layers, their modules and the imports between layers."""
    graph = import_graph()
    order = _layer_order()
    members = {layer: sorted(m for m in MODULES if _layer(m) == layer) for layer in order}
    edges = Counter((_layer(m), _layer(t)) for m, targets in graph.items() for t in targets)
    lines = [
        "# How idruid's modules import each other",
        "",
        "Generated by `python tests/test_architecture.py > docs/architecture.md` from the imports of",
        "src/idruid (every import: module-level, `TYPE_CHECKING` and inside functions);",
        "tests/test_architecture.py fails on an import cycle, on a module in no layer, on a lower layer",
        "importing a higher one and when this page is not what the generator writes.",
        "",
        "A module imports its own layer or a layer below it in one of the chains (lowest first):",
        "",
        *[f"- {' -> '.join(chain)}" for chain in CHAINS],
        "",
        "| layer | imports from the layers (import edges) | modules |",
        "|---|---|---|",
    ]
    for layer in order:
        lows = [f"{low} ({edges[layer, low]})" for low in order if edges[layer, low] and low != layer]
        names = ", ".join(
            f"`{m.removeprefix('idruid.')}`" if m != "idruid" else "`idruid`" for m in members[layer]
        )
        lines.append(f"| {layer} | {', '.join(lows) or '-'} | {names} |")
    allowed = [f"- `{a}` -> `{b}`: {why}" for (a, b), why in sorted(ALLOWED.items())]
    lines += [
        "",
        "Function-level imports allowed to point up or close a cycle:",
        "",
        *(allowed or ["- none"]),
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- tests


def test_the_graph_reader_sees_every_kind_of_import():
    graph, in_functions = read_imports()
    assert "idruid.scorers.roles" in graph["idruid.scorers.sam"]  # from .roles import
    assert "idruid.reports" in graph["idruid.evaluate"]  # reports.figures: the package runs first
    assert "idruid.scorers" not in graph["idruid.scorers.sam"]  # its own package is already running
    assert "idruid.boxes" in graph["idruid.rl.stage"]  # from ..boxes import (a parent package)
    assert "idruid.scorers.protocols" in graph["idruid.metrics.checks"]  # under TYPE_CHECKING
    assert "idruid.scorers.protocols" in graph["idruid.metrics.levels"]  # under TYPE_CHECKING
    assert ("idruid.scorers.registry", "idruid.scorers.sam") in in_functions  # inside a function
    assert ("idruid.cli.generate", "idruid.loader") in in_functions
    assert ("idruid.checkpoint", "idruid.config") not in in_functions  # at module level
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(_without_allowed(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_is_in_a_layer():
    for module in MODULES:
        _layer(module)
    assert _layer("idruid") == "front" and _layer("idruid.errors") == "errors"


def test_no_lower_layer_imports_a_higher_one():
    wrong = [
        f"{importer} ({_layer(importer)}) imports {imported} ({_layer(imported)})"
        for importer, imported_modules in sorted(_without_allowed(import_graph()).items())
        for imported in sorted(imported_modules)
        if not may_import(importer, imported)
    ]
    assert not wrong, "\n".join(wrong)


def test_allowed_imports_are_function_level_and_still_there():
    _, in_functions = read_imports()
    stale = [f"{a} -> {b}" for a, b in ALLOWED if (a, b) not in in_functions]
    assert not stale, "ALLOWED lists imports that are not (only) inside functions: " + ", ".join(stale)


def test_the_layer_rule_itself():
    assert may_import("idruid.rl.critic", "idruid.models.adapter")  # rl is above models
    assert not may_import("idruid.diffusion", "idruid.rl.logprob")
    assert may_import("idruid.models.sd3", "idruid.diffusion")  # a backbone is built with its process
    assert not may_import("idruid.diffusion", "idruid.sampling")
    assert may_import("idruid.checkpoint", "idruid.models")  # a checkpoint builds its model
    assert may_import("idruid.metrics", "idruid.scorers.protocols")
    assert not may_import("idruid.scorers.analytic", "idruid.metrics")
    assert not may_import("idruid.models.base", "idruid.scorers.registry")  # the chains do not mix
    assert may_import("idruid.evaluate", "idruid.reports.figures")
    assert may_import("idruid.config", "idruid.errors") and not may_import("idruid.errors", "idruid.config")
    assert _layer_order()[:2] == ["errors", "base"] and _layer_order()[-2:] == ["top", "front"]


def test_the_architecture_page_is_current():
    expected = architecture_markdown()
    assert PAGE.is_file() and PAGE.read_text(encoding="utf-8") == expected, (
        "docs/architecture.md is out of date: python tests/test_architecture.py > docs/architecture.md"
    )


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)


if __name__ == "__main__":
    print(architecture_markdown(), end="")
