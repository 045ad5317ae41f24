"""Download datasets and pretrained weights, checksum-verified and written atomically.

This is what ``joulebench fetch`` (and so DVC's ``fetch_data`` / ``fetch_weights`` stages) runs
on a host with network. URLs and checksums are torchvision's own: weights carry a sha256 prefix
in their file name, dataset archives a published md5. A mirror (``--mirror`` or
``JOULEBENCH_MIRROR``) serves the same file names from another base URL.

A file or dataset folder appears under its final name only after its checksum matched (temp
file or folder, then a rename), so an interrupted download leaves nothing that looks complete;
the ``.partial-`` leftovers a killed process may leave are ignored by DVC (``.dvcignore``).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from torchvision import datasets
from torchvision.datasets.utils import extract_archive

from joulebench.data import stratified_split
from joulebench.errors import ConfigError, EnvironmentFault
from joulebench.models import (
    TINY_MODELS,
    check_model_name,
    default_weights_path,
    published_hash_prefix,
    published_weights_url,
    sha256_of,
)

MIRROR_ENV = "JOULEBENCH_MIRROR"
PARTIAL = ".partial-"  # marks temp files and folders; .dvcignore hides them from DVC
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0  # seconds without a byte before a download counts as stalled
DIGITS_SPLIT_SEED = 0  # the exported digits' train/val split (the same as --seed 0 on `digits`)


@dataclass(frozen=True)
class Checksum:
    """What a download must hash to: ``expected`` may be a prefix (torchvision's weights)."""

    algorithm: str  # a hashlib name: md5 | sha256
    expected: str

    def matches(self, digest: str) -> bool:
        return digest.startswith(self.expected)


@dataclass(frozen=True)
class Archive:
    """A dataset published as one archive, and the folder in it that becomes ``<to>/<name>/``."""

    url: str
    md5: str
    folder: str | None = None  # None: everything the archive holds


# torchvision's published archives. cifar10 keeps its cifar-10-batches-py/ folder (where
# joulebench.data reads it); imagenette (320 px side) brings train/ and val/ class folders.
# Imagenette's URL and md5 are written out: torchvision keeps them in a private table (a test
# holds them to it, so a change there is seen).
ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive(datasets.CIFAR10.url, datasets.CIFAR10.tgz_md5),
    "imagenette": Archive("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz",
                          "3df6f0d01a2c9592104656642f5e78a3", folder="imagenette2-320"),
}
EMBEDDED = ("digits",)  # exported from scikit-learn's copy: no network needed
DATASET_NAMES = (*ARCHIVES, *EMBEDDED)


@dataclass(frozen=True)
class Fetched:
    """One fetched file or folder and what was done to get it (the line the CLI prints)."""

    path: Path
    outcome: str


MIRROR_SCHEMES = ("https", "http", "file")


def check_mirror(mirror: str | None) -> None:
    """A mirror, when one is given, is a URL this can fetch from (ConfigError otherwise)."""
    if mirror and urlsplit(mirror).scheme not in MIRROR_SCHEMES:
        raise ConfigError(f"mirror {mirror!r} is not a URL this can fetch from; accepted: "
                          f"{', '.join(f'{scheme}://…' for scheme in MIRROR_SCHEMES)}, "
                          "e.g. https://mirror.example/torchvision")


def source_url(url: str, mirror: str | None) -> str:
    """``url``, or the same file name under ``mirror`` when one is given."""
    if not mirror:
        return url
    check_mirror(mirror)
    return f"{mirror.rstrip('/')}/{url.rsplit('/', 1)[-1]}"


def download(url: str, destination: Path, checksum: Checksum, timeout_s: float = TIMEOUT_S) -> int:
    """Stream ``url`` to ``destination`` if it hashes to ``checksum``; returns the byte count.

    The bytes go to a temp file beside ``destination`` that is renamed only once the length
    and checksum are right; on any failure (or Ctrl-C) the temp file is removed.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        dir=destination.parent, prefix=f".{destination.name}{PARTIAL}", delete=False
    )
    temp = Path(handle.name)
    try:
        with handle:
            received, digest = _stream(_open(url, timeout_s), url, handle, hashlib.new(checksum.algorithm))
        if not checksum.matches(digest):
            raise EnvironmentFault(
                f"{url} has {checksum.algorithm} {digest[:12]}…, the published one is "
                f"{checksum.expected[:12]}…: refused and nothing kept; the download is corrupt "
                "or the mirror serves another file, fetch again or from another mirror"
            )
        os.replace(temp, destination)
        return received
    finally:
        temp.unlink(missing_ok=True)


def _open(url: str, timeout_s: float) -> http.client.HTTPResponse:
    """The response to GET ``url``; EnvironmentFault when the host cannot be reached or refuses."""
    try:
        return urllib.request.urlopen(url, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        raise EnvironmentFault(
            f"{urlsplit(url).netloc} answered HTTP {error.code} for {url}; check the mirror "
            f"(--mirror or {MIRROR_ENV}) or try again later"
        ) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise _offline(url, getattr(error, "reason", error)) from None


def _stream(response: http.client.HTTPResponse, url: str, sink: IO[bytes], digest: Any) -> tuple[int, str]:
    """Copy the response body into ``sink``, hashing it; EnvironmentFault unless it arrived whole."""
    announced = response.headers.get("Content-Length")
    received = 0
    try:
        with response:
            while block := response.read1(CHUNK_BYTES):  # what has arrived, so a stall counts it
                sink.write(block)
                digest.update(block)
                received += len(block)
    except (TimeoutError, ConnectionError, http.client.HTTPException) as error:
        raise _stopped(url, received, announced, error) from None
    # http.client ends the body quietly when the connection drops early: count the bytes.
    if announced is not None and received != int(announced):
        raise _stopped(url, received, announced, "connection closed early")
    return received, digest.hexdigest()


def _stopped(url: str, received: int, announced: str | None, reason: object) -> EnvironmentFault:
    of_total = f" of {announced}" if announced else ""
    return EnvironmentFault(
        f"the download of {url} stopped after {received}{of_total} bytes ({reason}); nothing "
        "was kept, run the same command again"
    )


def _offline(url: str, reason: object) -> EnvironmentFault:
    return EnvironmentFault(
        f"cannot reach {urlsplit(url).netloc} ({reason}): this host has no network to it; get "
        "the files with `dvc pull` from the project's DVC remote (see docs/dvc.md), or fetch on "
        f"a host with network, or set {MIRROR_ENV} to a mirror you can reach"
    )


def fetch_weights(model: str, to: Path, mirror: str | None = None) -> Fetched:
    """``<to>/<model>-imagenet.pth``: torchvision's ImageNet weights, sha256-prefix checked."""
    check_model_name(model)
    if model in TINY_MODELS:
        raise ConfigError(f"{model} has no published weights to fetch; it trains with --weights none")
    checksum = Checksum("sha256", published_hash_prefix(model))
    destination = default_weights_path(model, to)
    if destination.is_file() and checksum.matches(sha256_of(destination)):
        return Fetched(destination, f"already present, sha256 {checksum.expected}… verified")
    size = download(source_url(published_weights_url(model), mirror), destination, checksum)
    return Fetched(destination, f"downloaded {size / 1e6:.1f} MB, sha256 {checksum.expected}… verified")


def fetch_dataset(name: str, to: Path, mirror: str | None = None) -> Fetched:
    """``<to>/<name>/`` for one of :data:`DATASET_NAMES`."""
    if name in ARCHIVES:
        return fetch_archive(name, ARCHIVES[name], to, mirror)
    if name not in EMBEDDED:
        raise ConfigError(
            f"unknown dataset {name!r} to fetch; accepted: {', '.join(DATASET_NAMES)}; "
            "for other image folders copy them under data/datasets/ and `dvc add` them"
        )
    return _install_once(to / name, _export_digits, "exported from scikit-learn's copy (no network)")


def fetch_archive(name: str, archive: Archive, to: Path, mirror: str | None = None) -> Fetched:
    """``<to>/<name>/`` from ``archive``: downloaded, md5-checked, extracted, renamed into place."""
    outcome = f"downloaded, md5 {archive.md5[:12]}… verified, extracted"
    check_mirror(mirror)  # before any folder is made
    return _install_once(to / name, partial(_unpack, archive, mirror), outcome)


def _install_once(destination: Path, build: Callable[[Path], Path], outcome: str) -> Fetched:
    """Let ``build`` fill a scratch folder beside ``destination``, then rename its result there.

    The rename is the only way the folder appears, so a present folder is a complete one.
    """
    if destination.is_dir():
        return Fetched(destination, "already present")
    destination.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{destination.name}{PARTIAL}", dir=destination.parent))
    try:
        os.rename(build(scratch), destination)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Fetched(destination, outcome)


def _unpack(archive: Archive, mirror: str | None, scratch: Path) -> Path:
    url = source_url(archive.url, mirror)
    packed = scratch / url.rsplit("/", 1)[-1]
    download(url, packed, Checksum("md5", archive.md5))
    extracted = Path(extract_archive(packed, scratch / "extracted", remove_finished=True))
    content = extracted / archive.folder if archive.folder else extracted
    if not content.is_dir():
        raise EnvironmentFault(f"{url} holds no {archive.folder}/ folder; the published archive changed")
    return content


def _export_digits(scratch: Path) -> Path:
    """scikit-learn's 1,797 digits as 8×8 grey PNGs in train/ and val/ class folders."""
    digits = load_digits()
    grey = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # the 0–16 ink levels as 0–255
    root = scratch / "digits"
    for split, indices in zip(("train", "val"), stratified_split(digits.target, DIGITS_SPLIT_SEED)):
        for index in indices:
            folder = root / split / str(digits.target[index])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grey[index]).save(folder / f"{index:04d}.png")
    return root
