"""Datasets: the embedded digits (shapes, labels, split, determinism), image folders, errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from joulebench.data import IMAGENET_MEAN, IMAGENET_STD, load_dataset, make_loader
from joulebench.errors import ConfigError


def test_digits_shapes_labels_and_split_sizes():
    splits = load_dataset("digits", Path("unused"), image_size=32, seed=0)
    assert (len(splits.train), len(splits.val)) == (1437, 360)  # 1,797 real images, 80/20
    image, label = splits.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0 <= label < 10 and splits.num_classes == 10
    labels = splits.val.labels.numpy()
    # Stratified: every class holds 35 or 36 of the 360 validation images.
    assert set(np.bincount(labels, minlength=10)) <= {35, 36, 37}


def test_digits_normalised_with_imagenet_statistics():
    splits = load_dataset("digits", Path("unused"), image_size=16, seed=0)
    image, _ = splits.train[0]
    background = image[:, 0, 0]  # top-left pixel of every digit is blank (value 0)
    expected = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(background, expected, atol=1e-6)


def test_digits_split_and_order_fixed_by_seed():
    a = load_dataset("digits", Path("unused"), image_size=8, seed=3)
    b = load_dataset("digits", Path("unused"), image_size=8, seed=3)
    c = load_dataset("digits", Path("unused"), image_size=8, seed=4)
    assert torch.equal(a.val.images, b.val.images) and not torch.equal(a.val.images, c.val.images)
    device = torch.device("cpu")
    first_a = next(iter(make_loader(a.train, 32, True, 3, device)))[1]
    first_b = next(iter(make_loader(b.train, 32, True, 3, device)))[1]
    assert torch.equal(first_a, first_b)
    assert a.version == b.version and a.version.startswith("sha256:")


def test_image_folder_split(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for index in range(10):
            Image.new("RGB", (20, 20), (index * 20, 0, 0)).save(tmp_path / cls / f"{index}.png")
    splits = load_dataset(f"imagefolder:{tmp_path}", Path("unused"), image_size=24, seed=0)
    assert splits.num_classes == 2 and (len(splits.train), len(splits.val)) == (16, 4)
    assert splits.train[0][0].shape == (3, 24, 24)
    assert splits.version == "untracked"


def test_missing_dataset_directories(tmp_path):
    with pytest.raises(ConfigError, match=r"cifar10 not found.*dvc pull.*joulebench fetch dataset cifar10"):
        load_dataset("cifar10", tmp_path, 32, 0)
    with pytest.raises(ConfigError, match="not found"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}", tmp_path, 32, 0)


def test_unknown_dataset_lists_accepted():
    with pytest.raises(ConfigError, match="accepted: digits .*cifar10, imagefolder:PATH"):
        load_dataset("mnist", Path("x"), 32, 0)


def test_data_version_from_dvc_lock(tmp_path, monkeypatch):
    from joulebench.data import dvc_version

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/datasets/digits").mkdir(parents=True)
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  fetch_data:\n    cmd: joulebench fetch dataset digits\n"
        "    outs:\n    - path: data/datasets/digits\n      md5: 65ea97c6296278600d3566b4b3472e66.dir\n"
    )
    assert dvc_version(Path("data/datasets/digits")) == "dvc-md5:65ea97c6296278600d3566b4b3472e66.dir"
    assert dvc_version(Path("data/datasets/cifar10")) == "untracked"
