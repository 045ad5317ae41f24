"""No module of joulebench imports a module that imports it back: each import is read from the
source with ``ast`` (module level and inside functions alike), nothing is imported."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import joulebench

PACKAGE = "joulebench"


def module_names(root: Path) -> dict[str, Path]:
    """Every module under package folder ``root``, by dotted name (a package by its own)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported(tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``tree`` imports: ``from a.b import c`` names module ``a.b.c``
    where there is one, else ``a.b``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                      for alias in node.names}
    return found & modules.keys()


def import_graph(root: Path) -> dict[str, set[str]]:
    """Each module under ``root`` and the package's modules it imports."""
    modules = module_names(root)
    return {name: imported(ast.parse(path.read_text(), str(path)), modules) - {name}
            for name, path in modules.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of imports in ``graph`` (its first module repeated at its end), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return error.args[1]
    return None


def test_the_import_graph_reads_both_kinds_of_import(tmp_path):
    root = tmp_path / PACKAGE
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "a.py").write_text("def late():\n    from joulebench.sub import b\n")
    (root / "sub" / "b.py").write_text("import joulebench.a\nfrom joulebench import sub\n")
    graph = import_graph(root)
    assert graph["joulebench.a"] == {"joulebench.sub.b"}
    assert graph["joulebench.sub.b"] == {"joulebench.a", "joulebench.sub"}
    assert cycle(graph) in (["joulebench.a", "joulebench.sub.b", "joulebench.a"],
                            ["joulebench.sub.b", "joulebench.a", "joulebench.sub.b"])


def test_no_module_imports_a_module_that_imports_it_back():
    graph = import_graph(Path(joulebench.__file__).parent)
    found = cycle(graph)
    assert found is None, f"import cycle: {' -> '.join(found)}"
