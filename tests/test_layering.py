"""The one-way architecture (docs/architecture.md), checked from the source: no import cycle between
modules or packages, and every import between packages points down the declared layers.

The graphs come from the AST of every module, so an import inside a function or under
``TYPE_CHECKING`` counts like any other: one that only dodges a cycle at run time is still a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom first. A package may import its own modules and any package of a lower layer, nothing else.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"observability", "events"}),
    frozenset({"serving"}),
    frozenset({"predictors", "transformers_pre"}),
    frozenset({"eventing"}),
    frozenset({"manifests"}),
)
# Imports across one layer, by (importing package, imported module): the transformer runs the packaged
# embedder in its own process through the predictors' one public in-process entry.
ALLOWED: frozenset[tuple[str, str]] = frozenset({("transformers_pre", "predictors.inprocess")})

Graph = dict[str, set[str]]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, known: set[str]) -> str | None:
    """The project module ``name`` refers to: itself, else its longest known prefix (a package)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterable[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if (target := _resolve(alias.name, known)) is not None:
                yield target
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the package the module is in
            anchor = module.split(".")
            anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            # ``from pkg import mod`` imports the module pkg.mod when there is one.
            target = _resolve(f"{base}.{alias.name}", known) if f"{base}.{alias.name}" in known else None
            target = target or _resolve(base, known)
            if target is not None:
                yield target


def import_graph(root: Path, packages: Iterable[str]) -> Graph:
    """Module -> the project modules it imports anywhere in its source."""
    files = {module_name(p, root): p for package in packages for p in (root / package).rglob("*.py")}
    known = set(files)
    graph: Graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[module] = {t for node in ast.walk(tree) for t in _imported(node, module, is_package, known)
                         if t != module}
    return graph


def package_graph(graph: Graph) -> Graph:
    packages: Graph = {}
    for module, targets in graph.items():
        mine = module.split(".")[0]
        packages.setdefault(mine, set()).update(t.split(".")[0] for t in targets if t.split(".")[0] != mine)
    return packages


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle (a closed path, first node repeated last) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm; the graphs are small enough to recurse
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_closed_path(graph, set(component)) for component in components]


def _closed_path(graph: Mapping[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first node, for the message."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph.get(node, ()) & component):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # unreachable for a strongly connected component


def layer_of(package: str, layers: tuple[frozenset[str], ...]) -> int:
    for level, members in enumerate(layers):
        if package in members:
            return level
    raise KeyError(f"package {package!r} is in no layer; add it to LAYERS")


def violations(
    graph: Mapping[str, set[str]], layers: tuple[frozenset[str], ...], allowed: frozenset[tuple[str, str]]
) -> list[str]:
    """Every import between packages that does not point to a lower layer (nor is allowed), as 'a -> b'."""
    found = []
    for module, targets in sorted(graph.items()):
        mine = module.split(".")[0]
        for target in sorted(targets):
            theirs = target.split(".")[0]
            if theirs == mine or (mine, target) in allowed:
                continue
            if layer_of(theirs, layers) >= layer_of(mine, layers):
                direction = "up" if layer_of(theirs, layers) > layer_of(mine, layers) else "sideways"
                found.append(f"{module} -> {target} ({direction})")
    return found


def project_packages() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests")


# -- the project ------------------------------------------------------------------------------------


def test_every_package_has_a_layer() -> None:
    packages = project_packages()
    assert {"events", "serving", "predictors", "transformers_pre", "eventing", "manifests"} <= set(packages)
    for package in packages:
        layer_of(package, LAYERS)


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    found = cycles(import_graph(ROOT, project_packages()))
    assert not found, "module cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_no_package_cycle() -> None:
    found = cycles(package_graph(import_graph(ROOT, project_packages())))
    assert not found, "package cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_imports_point_down_the_layers() -> None:
    found = violations(import_graph(ROOT, project_packages()), LAYERS, ALLOWED)
    assert not found, "imports against the layers (see docs/architecture.md):\n" + "\n".join(found)


def test_the_leaves_import_no_project_package() -> None:
    packages = package_graph(import_graph(ROOT, project_packages()))
    assert packages["events"] == set() and packages["observability"] == set()


# -- the checker itself -----------------------------------------------------------------------------


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_a_function_level_import_that_closes_a_cycle_is_found(tmp_path: Path) -> None:
    _write(tmp_path, {
        "low/__init__.py": "",
        "low/a.py": "from low.b import thing\n",
        "low/b.py": "def thing():\n    from low import a\n    return a\n",
        "low/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from low.c2 import X\n",
        "low/c2.py": "from . import c\n",
    })
    graph = import_graph(tmp_path, ["low"])
    assert graph["low.a"] == {"low.b"} and graph["low.b"] == {"low.a"}
    assert graph["low.c2"] == {"low.c"}  # relative import resolved
    assert sorted(cycles(graph)) == [["low.a", "low.b", "low.a"], ["low.c", "low.c2", "low.c"]]


def test_package_cycles_and_imports_against_the_layers_are_found(tmp_path: Path) -> None:
    _write(tmp_path, {
        "base/__init__.py": "",
        "base/x.py": "import top.y\n",  # up
        "mid/__init__.py": "",
        "mid/m.py": "from side import s\n",  # sideways
        "side/__init__.py": "",
        "side/s.py": "from base import x\n",
        "top/__init__.py": "",
        "top/y.py": "from base.x import z\nfrom mid.m import n\n",
    })
    graph = import_graph(tmp_path, ["base", "mid", "side", "top"])
    layers = (frozenset({"base"}), frozenset({"mid", "side"}), frozenset({"top"}))
    assert cycles(package_graph(graph)) == [["base", "top", "base"]]
    assert violations(graph, layers, frozenset()) == ["base.x -> top.y (up)", "mid.m -> side.s (sideways)"]
    assert violations(graph, layers, frozenset({("mid", "side.s"), ("base", "top.y")})) == []


def test_a_clean_graph_has_no_cycle() -> None:
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"a"}}) == [["a", "a"]]
    with pytest.raises(KeyError, match="in no layer"):
        violations({"new.m": {"base.x"}}, (frozenset({"base"}),), frozenset())
