"""docs/architecture.md's recipes held to the code: every place a recipe names exists, and no
file outside the recipe names its worked example (a place the recipe forgot would)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
RECIPE = re.compile(r"^### (.+?) \(worked example: `(\w+)`\)\n(.*?)(?=^##)", re.M | re.S)
PLACE = re.compile(r"^- `([^`]+)` `(\w+)`", re.M)
# Files that may name anything: the tests, the documents and the benchmarks, which use the code.
OUTSIDE = (":!tests", ":!docs", ":!benchmarks", ":!*.md")


def recipes() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Recipe title → (worked example, [(file, symbol), …]), as docs/architecture.md lists them."""
    found = {title: (example, PLACE.findall(body)) for title, example, body in RECIPE.findall(ARCHITECTURE.read_text())}
    assert set(found) == {"Adding a run option", "A new method", "A new meter"}, found
    return found


def defines(path: Path, symbol: str) -> bool:
    """Whether ``path`` defines ``symbol`` (Python) or names it as a key (YAML, MLproject)."""
    text = path.read_text()
    if path.suffix == ".py":
        return re.search(rf"^\s*(def|class) {symbol}\b|^\s*{symbol}\s*(:|=)", text, re.M) is not None
    return re.search(rf"^\s*{symbol}:", text, re.M) is not None


@pytest.mark.parametrize("title", ["Adding a run option", "A new method", "A new meter"])
def test_every_place_a_recipe_names_exists(title):
    _, places = recipes()[title]
    assert places
    for path, symbol in places:
        assert (ROOT / path).is_file(), path
        assert defines(ROOT / path, symbol), f"{path} does not define {symbol}"


@pytest.mark.parametrize("title", ["Adding a run option", "A new method", "A new meter"])
def test_no_file_outside_the_recipe_names_its_worked_example(title):
    example, places = recipes()[title]
    named = subprocess.run(["git", "grep", "-lw", example, "--", *OUTSIDE], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    assert set(named) <= {path for path, _ in places}, f"{example} is also in {set(named) - {p for p, _ in places}}"
