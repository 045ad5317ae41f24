"""matplotlib, set up once for every figure the kit writes."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend: figures go to files, training hosts have no display.

    Imported on first use, so that a command that draws nothing never pays for matplotlib.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
