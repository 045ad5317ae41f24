"""Hostile input as a class: every option of every command, given hostile values by type, is
accepted or refused with one ConfigError line; never another exception (issue 25's invariant).

The cases are generated from the declarations (RunConfig's options and every method's
parameters), so an option added later is covered without a line here. In process: make_config
is what every command calls first. A sample of them through the installed command line is in the
table of bad input (tests/support/bad_input.py, the hostile-* cases).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from joulebench.config import PARAMS_FILE, ConfigError, make_config, option_fields
from joulebench.method_params import PARAMS

# What a command line can carry, by kind: empty and blank, Unicode digits and signs, zero and
# negatives, non-finite and huge numbers, a 5000-character word, control characters, a byte that
# is not UTF-8 (as Python decodes argv: a lone surrogate), and plausible-but-wrong forms.
HOSTILE_TEXT = (
    "", " ", "\t", "²", "٣", "１", "−1", "＋1", "0", "-1", "-0", "0.5", "1.5", "nan", "NaN", "inf", "-inf",
    "1e308", "1e-308", "1e23", str(10**30), "0x10", "1_000", "x" * 5000, "\x00", "a\x00b", "\x1b[31m",
    "a\nb", "\udcff", "true", "none", "None", "../..", "/", "//", "-",
)


def hostile_paths(folder: Path) -> tuple[str, ...]:
    """Paths that are missing, a file for a folder and the reverse, a loop, unreadable, not UTF-8,
    a FIFO and an endless device."""
    (folder / "a-file").write_text("x")
    (folder / "a-folder").mkdir()
    (folder / "loop").symlink_to(folder / "loop")
    (folder / "locked").mkdir()
    (folder / "locked").chmod(0)
    (folder / "bad.yaml").write_bytes(b"methods:\n  stego: {bits: \xff\xfe}\n")
    # Billion laughs: nine levels of nine references, 9**9 leaves once expanded (into text).
    levels = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    (folder / "alias-bomb.yaml").write_text("\n".join(levels) + "\nmethods: {stego: {bits: *l8}}\n")
    os.mkfifo(folder / "a-fifo")  # a reader waits for a writer for ever
    names = ("missing/x", "a-file", "a-file/under", "a-folder", "loop", "loop/x", "locked/x", "bad.yaml",
             "alias-bomb.yaml", "a-fifo")
    return tuple(str(folder / name) for name in names) + (os.fsdecode(str(folder).encode() + b"/\xff"), "/dev/zero")


def cases(folder: Path):
    """(keyword, raw value) for every declared option, and every method's parameters."""
    texts = HOSTILE_TEXT + hostile_paths(folder)
    keywords = [f.metadata["option"].keyword(f.name) for f in option_fields()] + [PARAMS_FILE.key]
    for keyword, text in itertools.product(keywords, texts):
        if keyword == "params":
            continue
        yield {keyword: text}
    for method, specs in PARAMS.items():
        for key, text in itertools.product([*specs, "no_such_key"], HOSTILE_TEXT):
            yield {"method": method, "params": (f"{key}={text}",)}
        yield {"method": method, "params": ("no-equals-sign",)}


def test_every_option_is_accepted_or_refused_in_one_line(tmp_path):
    outcomes = {"accepted": 0, "refused": 0}
    broken = []
    for raw in cases(tmp_path):
        try:
            make_config(**{"model": "tinynet", **raw})
            outcomes["accepted"] += 1
        except ConfigError as error:
            message = str(error)
            if "\n" in message or not message.strip():
                broken.append((raw, f"not one line: {message!r}"[:300]))
            outcomes["refused"] += 1
        except Exception as error:  # noqa: BLE001 - the invariant under test
            broken.append((raw, f"{type(error).__name__}: {error}"[:300]))
    assert broken == [], "\n".join(f"{str(raw)[:120]} -> {why}" for raw, why in broken)
    assert outcomes["refused"] > 500 and outcomes["accepted"] > 50, outcomes
