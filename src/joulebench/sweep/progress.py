"""A sweep's progress: one bar overall and one per running child on a terminal, else a line per cell."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from joulebench.sweep.grid import Combination


@dataclass
class Outcome:
    """How one combination ended: the status its run ended with, as ``tracking.settle_cell`` read it
    (None: it opened no run). Only FINISHED is a success; any other is this cell's failure, which
    the sweep reports and goes past (rules between options were checked when the grid was built)."""

    combination: Combination
    status: str | None
    seconds: float
    detail: str  # how its process ended, with its last output lines

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED"


LOG_TAIL_LINES = 5


def log_tail(path: Path) -> str:
    """A child's last non-blank output lines, for its Outcome's detail."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:  # a task Slurm never started wrote no log
        return "no log"
    return " | ".join(lines[-LOG_TAIL_LINES:]) or "no output"


class Progress:
    """The overall bar (combinations done / total, ETA) and one bar per running child.

    Bars only on a terminal; elsewhere (logs, CI) one line per finished combination.
    """

    def __init__(self, total: int, done: int, slots: int, bars: bool) -> None:
        self._total, self._done = total, done
        self.bars = bars
        self._overall = tqdm(total=total, initial=done, desc="sweep", unit="run", position=0,
                             disable=not bars, dynamic_ncols=True)
        self._runs = [tqdm(total=1, desc="idle", unit="epoch", position=index + 1, leave=False,
                           disable=not bars, dynamic_ncols=True) for index in range(slots)]

    def started(self, slot: int, combination: Combination) -> None:
        bar = self._runs[slot]
        bar.reset(total=combination.config.epochs)
        bar.set_description(combination.label)

    def epochs(self, slot: int, done: int) -> None:
        bar = self._runs[slot]
        if done != bar.n:
            bar.n = done
            bar.refresh()

    def finished(self, outcome: Outcome, slot: int | None = None) -> None:
        self._done += 1
        state = "finished" if outcome.ok else (outcome.status or "FAILED (no run)")
        line = f"[{self._done}/{self._total}] {outcome.combination.label} {state} in {outcome.seconds:.0f} s"
        if not outcome.ok:
            line += f": {outcome.detail}"
        if self.bars:
            if slot is not None:
                self._runs[slot].reset(total=1)
                self._runs[slot].set_description("idle")
            self._overall.update(1)
            tqdm.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        for bar in (*self._runs, self._overall):
            bar.close()
