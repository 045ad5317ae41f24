"""What several test modules share: stand-ins for hardware this host lacks, and readers of
what a run left in MLflow. Imported as ``support`` (pytest puts tests/ on the path)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient
from PIL import Image
from torch import nn

JOULEBENCH = str(Path(sys.executable).with_name("joulebench"))  # the installed console script


MAX_RANGE_UJ = 262_143_328_850  # max_energy_range_uj of a real package zone (Xeon)


class PowercapTree:
    """A /sys/class/powercap look-alike: one directory per zone, as the kernel lays it out."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "intel-rapl").mkdir(exist_ok=True)  # the control-type directory: no zone
        (root / "intel-rapl" / "enabled").write_text("1\n")

    def zone(self, zone: str, name: str, energy_uj: int = 0, max_range_uj: int = MAX_RANGE_UJ):
        directory = self.root / zone
        directory.mkdir()
        (directory / "name").write_text(name + "\n")
        (directory / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
        self.set(zone, energy_uj)
        return self

    def energy(self, zone: str) -> int:
        return int((self.root / zone / "energy_uj").read_text())

    def set(self, zone: str, energy_uj: int) -> None:
        # Atomic, as a sysfs read is: a sampler thread must never see a half-written file.
        staging = self.root / zone / "energy_uj.new"
        staging.write_text(f"{energy_uj}\n")
        staging.replace(self.root / zone / "energy_uj")

    def add(self, zone: str, joules: float) -> None:
        """Advance a counter as the hardware does, wrapping at its range."""
        max_range = int((self.root / zone / "max_energy_range_uj").read_text())
        self.set(zone, (self.energy(zone) + round(joules * 1e6)) % max_range)


def cli_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment less MLFLOW_TRACKING_URI (a CLI's store is its folder's
    mlflow.db unless ``env`` names one), plus ``env``."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | (env or {})


def run_cli(args, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``joulebench`` console script as a user would."""
    return subprocess.run([JOULEBENCH, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=cli_environment(env))


def images(folder: Path, classes: list[str], per_class: int = 6, size: int = 12) -> None:
    """``per_class`` small random PNGs in one sub-directory per class."""
    rng = np.random.default_rng(0)
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{index}.png")


def runs_in(store: Path) -> list:
    """Every run in the sqlite store at ``store``, in any experiment."""
    client = MlflowClient(f"sqlite:///{store}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def only_run(store: Path):
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("joulebench")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def parameter_count(model: nn.Module) -> int:
    """Every parameter's elements, frozen ones included."""
    return sum(p.numel() for p in model.parameters())


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 at ``port`` over a sqlite store, as a user starts it:
    stopped (its whole process group: uvicorn's workers) and restarted on the same port."""

    def __init__(self, folder: Path, port: int, store: Path | None = None, start_seconds: float = 120.0) -> None:
        self.folder, self.port, self.start_seconds = folder, port, start_seconds
        self.store = store or folder / "mlflow.db"
        self.uri = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "MlflowServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.store}",
                 "--artifacts-destination", str(self.folder / "artifacts")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                # Its background job workers (seven processes) serve no purpose here.
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )
        deadline = time.monotonic() + self.start_seconds
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{self.log()[-3000:]}")
            time.sleep(0.3)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return (self.folder / "server.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
