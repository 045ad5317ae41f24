"""Image folders, read once before a run opens: every file found once, decoded whole, and turned
into 8-bit RGB correctly whatever its mode and bit depth.

Why all of it up front: an image that fails to decode mid-epoch kills a run that has already
spent its energy; a file reached twice (a symlink loop, a link into another class or into the
other half of a train/val split) trains on duplicates or validates on training images and is
recorded FINISHED; a 16-bit image converted the way PIL does by default is clipped to white.
Each of those is found here, where it costs a read of the data and no run.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from joulebench.errors import ConfigError

# MLflow's and joulebench's own folders: a dataset root that holds them is the project, not data.
STORE_FOLDERS = frozenset({"mlruns", "mlartifacts", "joulebench-unsent"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def shown(path: str | Path) -> str:
    """``path`` as text MLflow can hold: bytes that are not UTF-8 shown as \\x escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass
class FolderScan:
    """The images of one folder: class names, (path, class index) pairs, files left out."""

    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[str] = field(default_factory=list)  # "path: why", one per unreadable file
    real_paths: set[str] = field(default_factory=set)  # to find the same file in another folder

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]


def scan_folder(root: Path, within: Path, layout: str) -> FolderScan:
    """The class folders of ``root`` and their images, each file once, every image decoded.

    ``within``: the dataset's root; a folder link leading out of it is refused (its images are
    not versioned with the dataset). File links may lead anywhere: DVC's symlink cache is one.
    ConfigError for a loop, an escape, a file in two classes, the store's folders, or a class
    with no readable image.
    """
    classes = _class_names(root, layout)
    found: dict[str, tuple[str, int]] = {}  # real path → (path as found, class index)
    for label, name in enumerate(classes):
        for path in _files(root / name, os.path.realpath(within), (), layout):
            real = os.path.realpath(path)
            if real in found:
                first, other = found[real]
                if other != label:
                    raise ConfigError(
                        f"{shown(first)} and {shown(path)} are one file in two classes "
                        f"({classes[other]}, {name}); an image must belong to one class: remove the link"
                    )
                continue  # the same image reached twice in one class: counted once
            found[real] = (str(path), label)
    problems = _decode_all([path for path, _ in found.values()])
    readable = {real: sample for (real, sample), problem in zip(found.items(), problems) if problem is None}
    skipped = sorted(shown(f"{path}: {problem}") for (path, _), problem in zip(found.values(), problems)
                     if problem is not None)
    scan = FolderScan(classes, list(readable.values()), skipped, set(readable))
    labelled = set(scan.targets)
    empty = [name for label, name in enumerate(classes) if label not in labelled]
    if empty:
        raise ConfigError(f"{shown(root)}: class folder {shown(empty[0])} holds no readable image; {layout}")
    return scan


def refuse_shared_files(train: FolderScan, val: FolderScan, root: Path) -> None:
    """ConfigError when one file is in both halves: validating on training images measures memory."""
    shared = train.real_paths & val.real_paths
    if shared:
        raise ConfigError(
            f"{len(shared)} image(s) of {shown(root)}/train are also in its val/ (first: "
            f"{shown(min(shared))}); validation on training images overstates accuracy: "
            "remove the links so each image is in one half"
        )


def _class_names(root: Path, layout: str) -> list[str]:
    entries = _listing(root, layout)
    store = [entry.name for entry in entries if entry.name in STORE_FOLDERS]
    if store:
        raise ConfigError(f"{shown(root)} holds {store[0]}/, a tracking store's folder, not a class of "
                          "images; point imagefolder: at the folder holding only the class folders")
    names = [entry.name for entry in entries if not entry.name.startswith(".") and _is_folder(entry.path)]
    if not names:
        raise ConfigError(f"{shown(root)} is not an image folder: it holds no class folders; {layout}")
    return names


def _listing(folder: Path, layout: str) -> list[os.DirEntry]:
    try:
        return sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        raise ConfigError(f"{shown(folder)} cannot be listed ({error.strerror}); {layout}") from None


def _is_folder(path: str) -> bool:
    """Whether ``path`` is a folder, links followed; ConfigError for a link that loops (a
    dangling link is not a folder: as a file it is reported unreadable)."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ConfigError(f"{shown(path)} is a symlink loop; replace it with the folder or file "
                              "it should name") from None
        return False


def _files(folder: Path, within: str, ancestors: tuple[str, ...], layout: str) -> Iterator[Path]:
    """The image files under ``folder`` (links followed, hidden entries skipped), sorted."""
    real = os.path.realpath(folder)
    holder = os.path.realpath(folder.parent)
    if real in ancestors or os.path.commonpath([real, holder]) == real:
        raise ConfigError(f"{shown(folder)} links back to {shown(real)}, a folder that holds it: a "
                          "symlink loop would count its images again and again; remove the link")
    if os.path.commonpath([real, within]) != within:
        raise ConfigError(f"{shown(folder)} leads out of the dataset (to {shown(real)}), whose version "
                          "does not cover it; copy those images into the dataset or remove the link")
    if folder.name in STORE_FOLDERS:
        raise ConfigError(f"{shown(folder)} is a tracking store's folder, not images; move it out of the dataset")
    for entry in _listing(folder, layout):
        if entry.name.startswith("."):  # .ipynb_checkpoints, .dvc, .git: copies and metadata
            continue
        if _is_folder(entry.path):
            yield from _files(Path(entry.path), within, (*ancestors, real), layout)
        elif entry.name.lower().endswith(IMG_EXTENSIONS):
            yield Path(entry.path)


def _decode_all(paths: list[str]) -> list[str | None]:
    """Why each image cannot be used, or None: decoded in threads (PIL's decoders release the GIL)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(decode_problem, paths, chunksize=64))


def decode_problem(path: str) -> str | None:
    """None when ``path`` decodes whole into an image ``load_rgb`` converts; else why not.

    Decoding, not only a header check: a truncated JPEG has a perfect header and fails at its
    last row.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the read for ever
            return "not a regular file"
        with Image.open(path) as image:
            # JPEG: decode at 1/8 scale, a third faster; every byte of the stream is still read,
            # so truncation is still found. Other formats ignore the draft.
            image.draft(None, (1, 1))
            image.load()
            return "32-bit float pixels (mode F) have no agreed range" if image.mode == "F" else None
    except Image.DecompressionBombError:
        return f"more than {2 * Image.MAX_IMAGE_PIXELS} pixels (PIL's decompression-bomb limit)"
    except FileNotFoundError:
        return "a link to a file that does not exist"
    except UnidentifiedImageError:
        return "not an image PIL can identify"
    except OSError as error:  # the decoder's words ("image file is truncated"), or the system's
        return error.strerror or _first_line(error)
    except (SyntaxError, ValueError) as error:
        return _first_line(error)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def load_rgb(path: str) -> Image.Image:
    """The image at ``path`` as 8-bit RGB; 16-bit pixels scaled to 8 bits, not clipped at 255."""
    with Image.open(path) as image:
        if image.mode in SIXTEEN_BIT_MODES:  # "I": PIL's mode for 16-bit PNG greyscale, as "I;16"
            pixels = np.asarray(image, dtype=np.float64).clip(0, 65535) / 257.0
            return Image.fromarray(pixels.round().astype(np.uint8), "L").convert("RGB")
        return image.convert("RGB")


class ImageFiles(Dataset):
    """The readable images of a scan, converted by ``load_rgb`` and then ``transform``."""

    def __init__(self, scan: FolderScan, transform) -> None:
        self.classes, self.samples, self.skipped = scan.classes, scan.samples, scan.skipped
        self.targets = scan.targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label
