"""The package's shape, as docs/architecture.md draws it: imports flow one way (no cycles), no
private name crosses a module boundary, and nothing in the core imports the ``Queue`` façade."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "remotejob"
CLIENTS = {"remotejob", "remotejob.queue", "remotejob.cost", "remotejob.doctor", "remotejob.policy",
           "remotejob.aio", "remotejob.aio.queue", "remotejob.aws_lambda"}
"""The façade itself and the modules built on it (the command line and the ui are too; the async
façade wraps the sync one; the Lambda handlers connect like any program)."""


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _runtime_imports(module: str, tree: ast.Module, names: set[str]) -> set[str]:
    """The package modules ``module`` imports when it runs (not under ``if TYPE_CHECKING:``)."""
    is_package = f"{module}.__init__" not in names and any(n.startswith(module + ".") for n in names)
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, is_package)
            for alias in node.names:
                child = f"{target}.{alias.name}"
                found.add(child if child in names else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in names and name != module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    names = set(modules)
    return {name: _runtime_imports(name, tree, names) for name, tree in modules.items()}


def test_imports_have_no_cycles() -> None:
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue  # a package importing its own submodules
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert cycles == []


def test_the_core_never_imports_the_queue_facade() -> None:
    graph = _graph()
    offenders = sorted(
        name for name, imported in graph.items()
        if "remotejob.queue" in imported and name not in CLIENTS
        and not name.startswith(("remotejob.cli", "remotejob.ui"))
    )
    assert offenders == []


def test_no_private_name_crosses_a_module_boundary() -> None:
    crossings = []
    for name, tree in _modules().items():
        ours = set()  # names bound to the package's own modules and objects
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or str(node.module).startswith("remotejob")):
                crossings += [f"{name}: from ... import {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
                ours.update(a.asname or a.name for a in node.names)
            elif isinstance(node, ast.Import):
                ours.update((a.asname or a.name).split(".")[0] for a in node.names
                            if a.name.startswith("remotejob"))
        for node in ast.walk(tree):
            private = node.attr.startswith("_") and not node.attr.startswith("__") if isinstance(
                node, ast.Attribute) else False
            if private and isinstance(node.value, ast.Name) and node.value.id not in ("self", "cls"):
                if node.value.id in ours or node.value.id in ("q", "queue", "job", "worker", "d", "ctx"):
                    crossings.append(f"{name}: {node.value.id}.{node.attr}")
    assert crossings == []
