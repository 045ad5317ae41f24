"""What a user names, read the same way everywhere: input files and ranges of whole numbers.

A leaf below the schema (``config``) and the modules its validators call (``data``, ``models``):
each of them reads a file or a range a user typed through here.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

from joulebench.errors import ConfigError

INT_RANGE = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")  # "8" or "0-23": ASCII digits, not ٣


def int_ranges(text: str, maximum: int) -> list[int]:
    """``"0-4,7"`` as sorted distinct integers from 0 to ``maximum``; ValueError naming the first
    part that is not one of them or a range of them."""
    values: set[int] = set()
    for part in text.split(","):
        match = INT_RANGE.fullmatch(part)
        if not match or not int(match[1]) <= int(match[2] or match[1]) <= maximum:
            raise ValueError(part.strip())
        values.update(range(int(match[1]), int(match[2] or match[1]) + 1))
    return sorted(values)


# Input files a user names (a params file, a backend config, a job template, a run record) are
# kilobytes; the cap keeps /dev/zero or a wrong multi-gigabyte file from filling the memory.
INPUT_FILE_LIMIT = 16 * 2**20


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file, or None: missing, a folder, or not a regular file
    (a FIFO blocks a reader for ever, a device never ends)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as error:
        return f"cannot be reached ({error.strerror})"
    if stat.S_ISDIR(mode):
        return "is a directory"
    return None if stat.S_ISREG(mode) else "is not a regular file (a pipe or a device)"


def read_input_file(flag: str, path: Path, fix: str) -> str:
    """The UTF-8 text of an input file the user named, or one ConfigError line ending in ``fix``."""
    problem = file_problem(path)
    if problem is None and (size := path.stat().st_size) > INPUT_FILE_LIMIT:
        problem = f"holds {size} bytes, more than an input file of {INPUT_FILE_LIMIT // 2**20} MiB"
    if problem is None:
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            problem = "is not UTF-8 text"
        except OSError as error:
            problem = f"cannot be read ({error.strerror})"
    raise ConfigError(f"{flag} {path} {problem}; {fix}")
