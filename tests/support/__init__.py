"""What several test modules share: stand-ins for hardware this host lacks, and readers of
what a run left in MLflow. Imported as ``support`` (pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient
from torch import nn


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


def only_run(store: Path):
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("joulebench")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def parameter_count(model: nn.Module) -> int:
    """Every parameter's elements, frozen ones included."""
    return sum(p.numel() for p in model.parameters())
