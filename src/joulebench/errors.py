"""The expected failures: each is one line on stderr and its own exit code, never a traceback.

``ConfigError`` is input the user must change (exit 2); a sweep checks every cell's input before
its first cell starts, so a ConfigError there stops it before any run opens. ``EnvironmentFault``
is the machine or a service failing — no network, a download that does not match its checksum, a
store that cannot be written, a full filesystem (``disk_full``), a cluster that refuses a job
(exit 75, sysexits' EX_TEMPFAIL). A cell that fails once the sweep runs, with either or with a
loss that diverged, is that cell's failure: the sweep reads it from the cell's run and goes on.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import re
import shutil
from collections.abc import Iterable
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


# A full filesystem: ENOSPC, or EDQUOT once the user's quota is spent. SQLite reports it as
# "database or disk is full" (SQLITE_FULL), and MLflow, SQLAlchemy or a tracking server over HTTP
# wrap either in an exception that keeps only the text.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_FULL_TEXTS = ("database or disk is full", "no space left on device", "disk quota exceeded")


def says_disk_full(text: str) -> bool:
    lowered = text.lower()
    return any(words in lowered for words in DISK_FULL_TEXTS)


def disk_full(error: BaseException | None) -> BaseException | None:
    """The error in ``error``'s chain (itself, its causes and contexts) that says a filesystem
    is full, or None: the system's own OSError where there is one (it may name the file),
    else the first wrapper whose text says so."""
    said, seen, visited = None, error, set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return seen
        if said is None and says_disk_full(str(seen)):
            said = seen
        seen = seen.__cause__ or seen.__context__
    return said


def disk_full_line(cause: BaseException) -> str:
    """The line of ``cause``'s text that says the disk is full (SQLAlchemy's may open with one
    about its autoflush), else its first."""
    return next((line.strip()[:200] for line in str(cause).splitlines() if says_disk_full(line)),
                first_line(cause, 200))


def full_disk_fault(cause: BaseException, places: Iterable[tuple[str, Path, str]],
                    outcome: str = "") -> EnvironmentFault:
    """The one line of a full filesystem: which one (of ``places``: what it holds, a path on it, where
    else that could go), its free bytes, what the system said, ``outcome`` (what became of the run)
    and the fix.

    The full one is the place with the fewest bytes free (``shutil.disk_usage``, cheap), shown by
    the file the system names where that file is on it (a copy names its source too).
    """
    measured = []
    for label, path, elsewhere in places:
        try:
            existing = nearest_existing(path.absolute())
            measured.append((shutil.disk_usage(existing).free, existing.stat().st_dev, label, path, elsewhere))
        except OSError:
            continue
    said = disk_full_line(cause) + (f"; {outcome}" if outcome else "")
    if not measured:
        return EnvironmentFault(f"a filesystem this run writes to is full: {said}; free space, then run again")
    free, device, label, path, elsewhere = min(measured, key=lambda place: place[0])
    named = [Path(name) for name in (getattr(cause, "filename2", None), getattr(cause, "filename", None))
             if isinstance(name, str) and name]
    for name in named:
        try:
            if nearest_existing(name.absolute()).stat().st_dev == device:
                path = name
                break
        except OSError:
            continue
    return EnvironmentFault(f"no space left on the filesystem of {path} ({label}, {free} bytes free): {said}; "
                            f"free space there{', or ' + elsewhere if elsewhere else ''}, then run again")


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
