"""Build the local stand-in for the official PyTorch CUDA runtime image, where no registry answers.

    .venv/bin/python deploy/podman/base_image.py      # prints the image's name

The project's Dockerfile builds FROM ``docker.io/pytorch/pytorch:…`` by default; a host that cannot
pull it (these machines reach only the package registries) builds on this image instead
(``--build-arg BASE_IMAGE=localhost/joulebench-base:torch-2.14.1``, docs/containers.md): Debian
from ``debootstrap --variant=minbase`` imported into podman, plus a venv holding torch and
torchvision at the versions pyproject.toml pins, installed from a wheelhouse filled by this
machine's own pip (which serves those CUDA wheels from local disk). The image carries a digest
of its recipe as a label; when the image exists with that label nothing is built, so only the
first run on a machine pays for it (about 5 minutes). Runs podman as root, in its default store,
where ``docker build`` (podman itself, deploy/podman/docker) finds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = Path(__file__).with_name("base.Containerfile")
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Holds the certificates this machine trusts for its package registries; pip in the image needs them.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE_NAME = "localhost/joulebench-base"
RECIPE_LABEL = "joulebench.recipe"


def torch_pins(pyproject: Path = PROJECT_ROOT / "pyproject.toml") -> tuple[str, str]:
    """The exact ``torch==X`` and ``torchvision==Y`` requirements of the project."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = {requirement.split("==")[0].strip(): requirement for requirement in dependencies if "==" in requirement}
    try:
        return pins["torch"], pins["torchvision"]
    except KeyError as missing:
        raise SystemExit(f"{pyproject} must pin {missing} with '=='; the base image installs that exact build") from None


def image_tag(pins: tuple[str, str]) -> str:
    """``localhost/joulebench-base:torch-2.14.1``: the name docs/containers.md passes as BASE_IMAGE."""
    return f"{IMAGE_NAME}:torch-{pins[0].removeprefix('torch==')}"


def recipe_digest(pins: tuple[str, str]) -> str:
    """Digest of everything the image is made from: a change to any of it means a new image."""
    recipe = {"suite": DEBIAN_SUITE, "mirror": DEBIAN_MIRROR, "packages": DEBIAN_PACKAGES, "pins": pins}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    digest.update(CONTAINERFILE.read_bytes())
    digest.update(HOST_CA_BUNDLE.read_bytes())
    return digest.hexdigest()[:16]


def ensure_base_image() -> str:
    """Return the base image's tag, building it first unless it exists from the same recipe."""
    pins = torch_pins()
    tag, digest = image_tag(pins), recipe_digest(pins)
    found = podman("image", "inspect", "--format", f'{{{{index .Labels "{RECIPE_LABEL}"}}}}', tag, check=False)
    if found.returncode == 0 and found.stdout.strip() == digest:
        return tag
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as scratch:
        _build(Path(scratch), tag, digest, pins)
    return tag


def _build(scratch: Path, tag: str, digest: str, pins: tuple[str, str]) -> None:
    debian_tag = f"localhost/joulebench-debian:{digest}"
    context = scratch / "context"
    with _phase("pip download (this machine's torch wheels)"):
        _check([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(context / "wheelhouse"), *pins])
    with _phase("debootstrap --variant=minbase"):
        rootfs = scratch / "rootfs"
        _check(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
                DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR])
        shutil.copyfile(HOST_CA_BUNDLE, rootfs / HOST_CA_BUNDLE.relative_to("/"))
    with _phase("podman import"):
        tarball = scratch / "rootfs.tar"
        _check(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."])
        podman("import", str(tarball), debian_tag)
    with _phase("podman build (venv + torch)"):
        podman("build", "--network", "none", "--file", str(CONTAINERFILE), "--tag", tag,
               "--label", f"{RECIPE_LABEL}={digest}", "--build-arg", f"DEBIAN_IMAGE={debian_tag}",
               "--build-arg", f"TORCH_PIN={pins[0]}", "--build-arg", f"TORCHVISION_PIN={pins[1]}",
               str(context))
    podman("rmi", debian_tag, check=False)
    podman("image", "prune", "--force", check=False)  # an older build of the tag: several GB of CUDA libraries


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``podman ARGS`` on this machine's own store (never through CONTAINER_HOST's service)."""
    environment = {name: value for name, value in os.environ.items() if name != "CONTAINER_HOST"}
    result = subprocess.run(["podman", *args], env=environment, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise SystemExit(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout[-4000:]}\n"
                         f"{result.stderr[-4000:]}")
    return result


def _check(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")


@contextmanager
def _phase(name: str) -> Iterator[None]:
    """Print how long one step of the cold build took."""
    start = time.monotonic()
    yield
    print(f"[base image] {name}: {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    print(ensure_base_image())
