"""The test suite's own shape: no test module imports another, nor conftest (which holds only
fixtures); what modules share lives in tests/support/."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_no_test_module_imports_another_or_conftest():
    modules = {path.stem for path in TESTS.glob("*.py")}
    assert {"conftest", "test_suite_layout"} <= modules  # the glob sees this folder
    offending = {path.name: sorted(imported_modules(path) & modules)
                 for path in sorted(TESTS.rglob("*.py")) if imported_modules(path) & modules}
    assert not offending, f"import these from tests/support/ instead: {offending}"


def test_conftest_defines_only_fixtures_and_their_settings():
    tree = ast.parse((TESTS / "conftest.py").read_text())
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert functions
    helpers = [f.name for f in functions
               if not any("fixture" in ast.unparse(decorator) for decorator in f.decorator_list)]
    assert not helpers, f"move these helpers to tests/support/: {helpers}"
