"""Datasets: ``digits`` (embedded, scikit-learn's 1,797 8×8 images), ``cifar10``, ``imagefolder:PATH``.

Every dataset comes out as 3-channel images at the requested size, normalised with ImageNet's
statistics (the pretrained weights expect them), split into train and validation sets that are
fixed by the seed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from joulebench.errors import ConfigError

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


def check_dataset_spec(spec: str) -> None:
    if spec in ("digits", "cifar10") or (spec.startswith("imagefolder:") and len(spec) > 12):
        return
    raise ConfigError(
        f"unknown dataset {spec!r}; accepted: digits (embedded), cifar10, imagefolder:PATH"
    )


def load_dataset(spec: str, data_dir: Path, image_size: int, seed: int) -> DataSplits:
    """The train/validation splits of ``spec``; ConfigError when its files are missing."""
    check_dataset_spec(spec)
    if spec == "digits":
        return load_digits_splits(image_size, seed)
    if spec == "cifar10":
        return _load_cifar10(data_dir / "cifar10", image_size)
    return _load_imagefolder(Path(spec.removeprefix("imagefolder:")), image_size, seed)


def load_digits_splits(image_size: int, seed: int) -> DataSplits:
    digits = load_digits()
    images, labels = digits.images.astype(np.float32), digits.target
    train_idx, val_idx = stratified_split(labels, seed)
    version = "sha256:" + hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()[:16]
    return DataSplits(
        name="digits",
        train=UpscaledDigits(images[train_idx], labels[train_idx], image_size),
        val=UpscaledDigits(images[val_idx], labels[val_idx], image_size),
        num_classes=10,
        version=version,
    )


def stratified_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/validation split, the same for the same seed."""
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


def _load_cifar10(root: Path, image_size: int) -> DataSplits:
    if not (root / "cifar-10-batches-py").is_dir():
        raise _missing(root, "cifar10")
    transform = _image_transform(image_size)
    train = datasets.CIFAR10(root, train=True, download=False, transform=transform)
    val = datasets.CIFAR10(root, train=False, download=False, transform=transform)
    return DataSplits("cifar10", train, val, 10, dvc_version(root))


def _load_imagefolder(root: Path, image_size: int, seed: int) -> DataSplits:
    if not root.is_dir():
        raise _missing(root, "imagenette")
    transform = _image_transform(image_size)
    try:
        if (root / "train").is_dir() and (root / "val").is_dir():
            train = datasets.ImageFolder(root / "train", transform=transform)
            val = datasets.ImageFolder(root / "val", transform=transform)
            classes = len(train.classes)
        else:
            whole = datasets.ImageFolder(root, transform=transform)
            train_idx, val_idx = stratified_split(np.array(whole.targets), seed)
            train, val, classes = Subset(whole, train_idx), Subset(whole, val_idx), len(whole.classes)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(
            f"{root} is not an image folder ({error}); expected one sub-directory of images per "
            "class, or train/ and val/ holding such sub-directories"
        ) from None
    return DataSplits(f"imagefolder:{root}", train, val, classes, dvc_version(root))


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
    """A loader whose shuffling order is fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    in_memory = isinstance(dataset, UpscaledDigits)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=0 if in_memory else min(4, os.cpu_count() or 1),
        pin_memory=device.type == "cuda",
        persistent_workers=not in_memory,
    )
