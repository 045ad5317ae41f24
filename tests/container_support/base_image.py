"""Build (once) the local base image that stands in for the official PyTorch CUDA runtime image.

No image registry is reachable from these machines, so the project's Dockerfile is built with
``--build-arg BASE_IMAGE=<this image>``: Debian from ``debootstrap --variant=minbase`` imported
into podman, plus a venv holding torch and torchvision at the versions pyproject.toml pins,
installed from a wheelhouse filled by this machine's own pip (which serves those CUDA wheels
from local disk). The image is tagged with a digest of its recipe; when that tag exists nothing
is built, so only the first run on a machine pays for it.

Run as a script to build it ahead of the tests: ``python tests/container_support/base_image.py``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the sibling module importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from container_support.podman import Podman

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = Path(__file__).with_name("base.Containerfile")
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Holds the certificates this machine trusts for its package registries; pip in the image needs them.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE_NAME = "localhost/joulebench-base"


def torch_pins(pyproject: Path = PROJECT_ROOT / "pyproject.toml") -> tuple[str, str]:
    """The exact ``torch==X`` and ``torchvision==Y`` requirements of the project."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = {requirement.split("==")[0].strip(): requirement for requirement in dependencies if "==" in requirement}
    try:
        return pins["torch"], pins["torchvision"]
    except KeyError as missing:
        raise RuntimeError(
            f"{pyproject} must pin {missing} with '=='; the base image installs that exact build"
        ) from None


def recipe_digest(pins: tuple[str, str]) -> str:
    """Digest of everything the image is made from: a change to any of it means a new image."""
    recipe = {"suite": DEBIAN_SUITE, "mirror": DEBIAN_MIRROR, "packages": DEBIAN_PACKAGES, "pins": pins}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    digest.update(CONTAINERFILE.read_bytes())
    digest.update(HOST_CA_BUNDLE.read_bytes())
    return digest.hexdigest()[:16]


def ensure_base_image(podman: Podman) -> str:
    """Return the tag of the base image, building it first if this machine has not got it."""
    pins = torch_pins()
    tag = f"{IMAGE_NAME}:{recipe_digest(pins)}"
    if podman.image_exists(tag):
        return tag
    build_root = podman.cache_root / "build"
    build_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=build_root) as scratch:
        _build(podman, Path(scratch), tag, pins)
    _remove_superseded(podman, tag)
    return tag


def _build(podman: Podman, scratch: Path, tag: str, pins: tuple[str, str]) -> None:
    debian_tag = tag.replace(IMAGE_NAME, "localhost/joulebench-debian")
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
        podman.run("import", str(tarball), debian_tag)
    with _phase("podman build (venv + torch)"):
        podman.run("build", "--network", "none", "--file", str(CONTAINERFILE), "--tag", tag,
                   "--build-arg", f"DEBIAN_IMAGE={debian_tag}",
                   "--build-arg", f"TORCH_PIN={pins[0]}", "--build-arg", f"TORCHVISION_PIN={pins[1]}",
                   str(context), timeout=1800)
    podman.run("untag", debian_tag)


def _remove_superseded(podman: Podman, keep: str) -> None:
    """Drop base images built from older recipes: each holds several GB of CUDA libraries."""
    listing = podman.run("images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_NAME).stdout.split()
    for stale in set(listing) - {keep}:
        podman.run("rmi", stale, check=False)


def _check(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{command[0]} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )


@contextmanager
def _phase(name: str) -> Iterator[None]:
    """Print how long one step of the cold build took (the numbers reported for the issue)."""
    start = time.monotonic()
    yield
    print(f"[base image] {name}: {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    podman = Podman()
    podman.configure()
    print(ensure_base_image(podman))
