"""The layering of totpd/: each module imports only modules below it, so no import
cycle exists (read from the source with ast, imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "totpd"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """The totpd modules `name` imports anywhere in its source (`from . import x` names
    module x where x is one, else the package)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names)
    return {module for module in found if module in MODULES and module != name}


def _graph() -> dict[str, set[str]]:
    """Every module's imports, less a package's imports of its own submodules: a package
    presenting its submodules as one interface is the package itself, not a layer."""
    return {
        name: {module for module in _imports(name) if not module.startswith(f"{name}.")}
        for name in MODULES
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that ends where it starts) through each module on one, by depth-first search."""
    cycles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return cycles


def test_no_module_of_totpd_imports_one_that_imports_it_back():
    assert _cycles(_graph()) == []


def test_the_import_walk_sees_relative_imports_inside_functions_and_finds_a_cycle():
    graph = _graph()
    assert "totpd.errors" in graph["totpd.protocol"]
    assert "totpd.store.sqlite" not in graph["totpd.store"]  # open_store's import inside a function, its own submodule
    assert "totpd.store" in _imports("totpd.store.sqlite") and "totpd.store.sqlite" in _imports("totpd.store")
    looped = {**graph, "totpd.errors": graph["totpd.errors"] | {"totpd.protocol"}}
    assert _cycles(looped) == [["totpd.errors", "totpd.protocol", "totpd.errors"]]
