"""Datasets: ``digits`` (embedded, scikit-learn's 1,797 8×8 images), ``cifar10``, ``imagefolder:PATH``.

Every dataset comes out as 3-channel images at the requested size, normalised with ImageNet's
statistics (the pretrained weights expect them), split into train and validation sets that are
fixed by the seed.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from joulebench.inputs import int_ranges
from joulebench.errors import ConfigError
from joulebench.images import ImageFiles, refuse_shared_files, scan_folder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VALIDATION_FRACTION = 0.2


@dataclass
class DataSplits:
    """The train and validation sets of one dataset, and what a run records about it."""

    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    version: str  # content hash: DVC's md5 where the data is DVC-tracked
    skipped: list[str] = field(default_factory=list)  # "path: why" of each image left out


class UpscaledDigits(Dataset):
    """Grey 8×8 digits, bilinearly upscaled once, expanded to 3 channels on access."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, image_size: int) -> None:
        grey = torch.from_numpy(images).float().div(16.0).reshape(-1, 1, 8, 8)
        self.images = F.interpolate(grey, size=image_size, mode="bilinear", align_corners=False)
        self.labels = torch.from_numpy(labels).long()
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].expand(3, -1, -1)
        return (image - self.mean) / self.std, int(self.labels[index])


DIGIT_CLASSES = range(10)


def check_dataset_spec(spec: str) -> str:
    """``spec`` as the run records it (a digits subset written one way: digits:0-4 as digits:0,1,2,3,4
    would be another config for the same data); ConfigError for one that names no dataset."""
    if spec.startswith("digits:"):
        classes = digit_classes(spec)
        return "digits" if classes == list(DIGIT_CLASSES) else "digits:" + _ranges_text(classes)
    if spec in ("digits", "cifar10") or (spec.startswith("imagefolder:") and len(spec) > 12):
        return spec
    raise ConfigError(
        f"unknown dataset {spec!r}; accepted: digits (embedded), digits:0-4 (some of its classes), "
        "cifar10, imagefolder:PATH"
    )


def digit_classes(spec: str) -> list[int]:
    """The digits ``digits`` or ``digits:CLASSES`` (``0-4``, ``5-9``, ``0,3,8``) names: a subset lets
    one model be pretrained on some classes and fine-tuned on others, as ImageNet → a task is."""
    if spec == "digits":
        return list(DIGIT_CLASSES)
    try:
        classes = int_ranges(spec.removeprefix("digits:"), DIGIT_CLASSES[-1])
    except ValueError as part:
        classes = []
        wrong = f"{str(part)!r} is not a digit 0–9 or a range of them"
    else:
        wrong = f"it names {len(classes)} class"
    if len(classes) < 2:
        raise ConfigError(f"--dataset {spec!r}: {wrong}; accepted: digits:CLASSES with at least two "
                          "classes, e.g. digits:0-4, digits:5-9 or digits:0,3,8")
    return classes


def _ranges_text(values: list[int]) -> str:
    """[0, 1, 2, 4] → "0-2,4"."""
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in runs)


def load_dataset(spec: str, data_dir: Path, image_size: int, seed: int) -> DataSplits:
    """The train/validation splits of ``spec``; ConfigError when its files are missing."""
    check_dataset_spec(spec)
    check_dataset_location(spec, data_dir)
    if spec == "digits" or spec.startswith("digits:"):
        return load_digits_splits(image_size, seed, digit_classes(spec))
    if spec == "cifar10":
        return _load_cifar10(data_dir / "cifar10", image_size)
    return _load_imagefolder(Path(spec.removeprefix("imagefolder:")), image_size, seed)


def load_digits_splits(image_size: int, seed: int, classes: Sequence[int] = DIGIT_CLASSES) -> DataSplits:
    """The embedded digits of ``classes`` (sorted), labelled 0…len(classes)−1 in that order."""
    digits, classes = load_digits(), list(classes)
    kept = np.isin(digits.target, classes)
    images = digits.images[kept].astype(np.float32)
    labels = np.searchsorted(classes, digits.target[kept])  # digit → its index among the classes
    train_idx, val_idx = stratified_split(labels, seed)
    # The hash covers the images and labels kept: a subset is another data version.
    version = "sha256:" + hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()[:16]
    return DataSplits(
        name="digits" if len(classes) == len(DIGIT_CLASSES) else "digits:" + _ranges_text(classes),
        train=UpscaledDigits(images[train_idx], labels[train_idx], image_size),
        val=UpscaledDigits(images[val_idx], labels[val_idx], image_size),
        num_classes=len(classes),
        version=version,
    )


def stratified_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/validation split, the same for the same seed; ConfigError
    where a class has too few images to be in both halves, or the validation half cannot hold
    one image of every class."""
    classes, counts = np.unique(labels, return_counts=True)
    validation = math.ceil(len(labels) * VALIDATION_FRACTION)
    if counts.min() < 2 or not len(classes) <= validation <= len(labels) - len(classes):
        raise ConfigError(
            f"{len(labels)} images in {len(classes)} classes (the smallest holds {counts.min()}) are too few "
            f"to split {1 - VALIDATION_FRACTION:.0%}/{VALIDATION_FRACTION:.0%} with every class in both halves; "
            f"give each class at least 2 images and the set at least {math.ceil(len(classes) / VALIDATION_FRACTION)}, "
            "or pass train/ and val/ folders"
        )
    return train_test_split(
        np.arange(len(labels)), test_size=VALIDATION_FRACTION, stratify=labels, random_state=seed
    )


def _image_transform(image_size: int) -> transforms.Compose:
    return transforms.Compose([
        transforms.Resize((image_size, image_size)),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _missing(path: Path, name: str) -> ConfigError:
    return ConfigError(
        f"dataset directory {path} not found; run `dvc pull` or `joulebench fetch dataset "
        f"{name}`, or use --dataset digits (embedded, no download)"
    )


def check_dataset_location(spec: str, data_dir: Path) -> None:
    """The dataset's files are where ``spec`` says, checked before any run opens (a sweep checks
    every cell's): ConfigError naming how to get them otherwise."""
    if spec == "cifar10" and not (data_dir / "cifar10" / "cifar-10-batches-py").is_dir():
        raise _missing(data_dir / "cifar10", "cifar10")
    if spec.startswith("imagefolder:"):
        root = Path(spec.removeprefix("imagefolder:"))
        if root.exists() and not root.is_dir():
            raise ConfigError(f"imagefolder:{root} is a file, not a directory; {IMAGE_FOLDER_LAYOUT}")
        if not root.is_dir():
            raise _missing(root, "imagenette")


def _load_cifar10(root: Path, image_size: int) -> DataSplits:
    transform = _image_transform(image_size)
    train = datasets.CIFAR10(root, train=True, download=False, transform=transform)
    val = datasets.CIFAR10(root, train=False, download=False, transform=transform)
    return DataSplits("cifar10", train, val, 10, dvc_version(root))


IMAGE_FOLDER_LAYOUT = ("expected one sub-directory of images per class (at least two classes), "
                       "or train/ and val/ each holding the same class sub-directories")


def _load_imagefolder(root: Path, image_size: int, seed: int) -> DataSplits:
    transform = _image_transform(image_size)
    halves = [(root / half).is_dir() for half in ("train", "val")]
    if any(halves) and not all(halves):
        present, absent = ("train", "val") if halves[0] else ("val", "train")
        raise ConfigError(f"{root} has {present}/ but no {absent}/; {IMAGE_FOLDER_LAYOUT}")
    if all(halves):
        train_scan, val_scan = (scan_folder(root / half, root, IMAGE_FOLDER_LAYOUT) for half in ("train", "val"))
        if train_scan.classes != val_scan.classes:
            differ = sorted(set(train_scan.classes) ^ set(val_scan.classes))
            raise ConfigError(
                f"{root}/train and {root}/val hold different classes ({', '.join(differ[:5])} in only "
                f"one); validation labels would name other classes: {IMAGE_FOLDER_LAYOUT}"
            )
        _require_classes(train_scan.classes, root)
        refuse_shared_files(train_scan, val_scan, root)
        train, val = ImageFiles(train_scan, transform), ImageFiles(val_scan, transform)
        classes, skipped = train_scan.classes, train_scan.skipped + val_scan.skipped
    else:
        scan = scan_folder(root, root, IMAGE_FOLDER_LAYOUT)
        _require_classes(scan.classes, root)
        train_idx, val_idx = stratified_split(np.array(scan.targets), seed)
        whole = ImageFiles(scan, transform)
        train, val, classes, skipped = Subset(whole, train_idx), Subset(whole, val_idx), scan.classes, scan.skipped
    return DataSplits(f"imagefolder:{root}", train, val, len(classes), dvc_version(root), skipped)


def _require_classes(classes: list[str], root: Path) -> None:
    if len(classes) < 2:
        raise ConfigError(f"{root} holds {len(classes)} class ({', '.join(classes)}); accuracy on one "
                          f"class means nothing: {IMAGE_FOLDER_LAYOUT}")


def dvc_version(path: Path) -> str:
    """The md5 DVC recorded for ``path``: in its ``.dvc`` file, or in ``dvc.lock`` (a stage's output).

    ``dvc.lock`` is looked up in the working directory, where ``dvc repro`` runs its stages.
    """
    dvc_file = path.with_name(path.name + ".dvc")
    if dvc_file.is_file():
        for line in dvc_file.read_text().splitlines():
            key, _, value = line.strip().lstrip("- ").partition(":")
            if key == "md5":
                return "dvc-md5:" + value.strip()
    md5 = _dvc_lock_md5(Path("dvc.lock"), path)
    return f"dvc-md5:{md5}" if md5 else "untracked"


def _dvc_lock_md5(lock: Path, path: Path) -> str | None:
    """The md5 of output ``path`` in the ``lock`` file, if a stage there outputs it."""
    if not lock.is_file():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    wanted = path.resolve()
    for stage in stages.values():
        for out in stage.get("outs", []):
            if (lock.parent / out["path"]).resolve() == wanted:
                return out.get("md5")
    return None


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int, device: torch.device
) -> DataLoader:
    """A loader whose shuffling order is fixed by ``seed``.

    A training loader drops a last batch of one sample: BatchNorm cannot take a batch
    statistic over one value and would end the run after a whole epoch (1437 digits at
    batch size 4). Only that one sample is dropped; any larger remainder is trained on.
    """
    generator = torch.Generator().manual_seed(seed)
    in_memory = isinstance(dataset, UpscaledDigits)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(dataset) % batch_size == 1,
        generator=generator,
        num_workers=0 if in_memory else min(4, os.cpu_count() or 1),
        pin_memory=device.type == "cuda",
        persistent_workers=not in_memory,
    )
