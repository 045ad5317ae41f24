"""The expected failures: each is one line on stderr and its own exit code, never a traceback.

``ConfigError`` is input the user must change (exit 2): a sweep that sees it stops, since the
same input would fail every cell. ``EnvironmentFault`` is the machine or a service failing —
no network, a download that does not match its checksum, a store that cannot be written, a
cluster that refuses a job (exit 75, sysexits' EX_TEMPFAIL): a sweep counts that cell as failed
and goes on; rerunning it later may succeed. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

EXIT_BAD_INPUT = 2
EXIT_ENVIRONMENT = 75
EXIT_INTERRUPTED = 130


class JoulebenchError(Exception):
    """An expected failure: the message says what happened and how to fix it, on one line.

    The line is made safe here, once for every message: a value quoted in it may hold newlines,
    control characters, bytes that are not UTF-8 or thousands of characters, and none of them may
    break the line a user reads (or a terminal, or a log parser).
    """

    exit_code: ClassVar[int]

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


# A word longer than this (no path a user types is) is shortened in a one-line message, its length said.
LONGEST_WORD = 1000


def one_line(text: str) -> str:
    """``text`` as one printable line: control characters escaped, non-UTF-8 bytes (surrogates)
    shown as \\x escapes, over-long words cut to their ends."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)
    return re.sub(rf"\S{{{LONGEST_WORD + 1},}}",
                  lambda word: f"{word[0][:200]}…{word[0][-40:]} ({len(word[0])} characters)", text)


class ConfigError(JoulebenchError):
    """Bad user input: the message says what was wrong, what is accepted and how to fix it."""

    exit_code = EXIT_BAD_INPUT


class EnvironmentFault(JoulebenchError):
    """The environment failed, not the options: the message names the fault and what to check."""

    exit_code = EXIT_ENVIRONMENT


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (its type's name when it has none), for one-line messages."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its closest ancestor that does: what a write there
    would create things under."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def why_unwritable(path: Path) -> str | None:
    """Why this process cannot write into ``path`` (an existing file or directory), or None.

    Names the real cause, for the message's fix: a read-only filesystem, or an owner and mode
    that shut this process's UID out (the usual case of a container running as another user).
    """
    import os

    if os.access(path, os.W_OK):
        return None
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return f"{path} is on a read-only filesystem"
    owner = path.stat()
    return (f"{path} belongs to UID {owner.st_uid}:{owner.st_gid} (mode {owner.st_mode & 0o777:o}) and this "
            f"process runs as UID {os.getuid()}:{os.getgid()}")
