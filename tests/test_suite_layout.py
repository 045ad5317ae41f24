"""The test suite's own shape: no test module imports another, nor conftest (which holds only
fixtures); what modules share lives in tests/support/."""

from __future__ import annotations

import ast
import re
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


def test_readmes_fast_tier_is_the_declared_slow_marker_left_out():
    """README's "While developing" line names the fast tier as a command in prose (running it
    here would run pytest inside pytest): it must be exactly the suite less the `slow` marker
    pyproject declares, and say that CI runs everything."""
    import shlex
    import tomllib

    root = TESTS.parent
    readme = (root / "README.md").read_text()
    assert readme.count("\nWhile developing, run ") == 1
    paragraph = readme.split("\nWhile developing, run ")[1].split("\n\n")[0]
    (command,) = [code for code in re.findall(r"`([^`]+)`", paragraph) if "-m" in code]
    assert shlex.split(command) == [".venv/bin/pytest", "-m", "not slow"]
    assert "`.ci/run` runs all of them" in paragraph
    markers = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert any(marker.startswith("slow:") and "not slow" in marker for marker in markers)


def test_container_tests_are_slow_too():
    """`-m "not slow"` replaces addopts' `-m 'not container'`: only a `slow` mark keeps the
    container proof out of the fast tier."""
    marks = [(path.name, line) for path in TESTS.glob("test_*.py") for line in path.read_text().splitlines()
             if re.match(r"(pytestmark = |@)\S*pytest\.mark\.container\b", line)]
    assert marks
    for name, line in marks:
        assert "pytest.mark.slow" in line, f"{name}: {line}"
