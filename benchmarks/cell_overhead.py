"""What a sweep cell costs before and after its measured work: the fixed cost per cell.

A grid of tiny cells (tinynet, random init, one batch of one epoch on the embedded digits, no idle
baseline) runs as ``joulebench sweep`` in a fresh folder and store. Each child records how long
its measured windows took (``duration_s``); the same sweep run again finds every cell FINISHED and
so times the parent alone. The fixed cost per cell is

    (sweep wall time − parent alone − Σ duration_s) / cells

(interpreter start, imports, data, the MLflow run, the energy meters, artefacts): the GPU's idle
time per cell on a cluster. Target: ≤ 5 s on the 2-core CI machine.

    python benchmarks/cell_overhead.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CELL = ["--models", "tinynet", "--methods", "baseline,prune", "--weights", "none", "--epochs", "1",
        "--limit-train-batches", "1", "--idle-seconds", "0", "--inference-batches", "1", "--quiet"]


def timed_sweep(folder: Path, repeats: int) -> float:
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("joulebench")), "sweep", *CELL, "--repeats", str(repeats)],
                   cwd=folder, check=True, capture_output=True, env=os.environ | {"MLFLOW_TRACKING_URI": ""})
    return time.perf_counter() - started


def measured_seconds(folder: Path) -> list[float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("joulebench").experiment_id
    return [run.data.metrics["duration_s"] for run in client.search_runs([experiment], "tags.config_hash != ''")]


def cpu_model() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor() or "unknown CPU")
    return f"{name}, {os.cpu_count()} cores, {'native bf16' if 'avx512_bf16' in info or 'amx_bf16' in info else 'no native bf16'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="repeats of the 2-method grid (cells = 2 × repeats)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jb-cells-") as scratch:
        folder = Path(scratch)
        wall = timed_sweep(folder, args.repeats)
        parent = timed_sweep(folder, args.repeats)  # every cell FINISHED: the parent's own cost
        measured = measured_seconds(folder)
    cells = len(measured)
    fixed = (wall - parent - sum(measured)) / cells
    print(f"machine        {cpu_model()}")
    print(f"cells          {cells} (tinynet, 1 batch, digits)")
    print(f"sweep wall     {wall:.1f} s; parent alone {parent:.1f} s; measured windows {sum(measured):.2f} s")
    print(f"fixed per cell {fixed:.1f} s (target ≤ 5 s)")


if __name__ == "__main__":
    main()
