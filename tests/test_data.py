"""Datasets: the embedded digits (shapes, labels, split, determinism), image folders, errors."""

import os
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


def test_digit_class_subsets_are_relabelled_their_own_version_and_written_one_way():
    """A transfer task on the embedded data: pretrain on digits:0-4, fine-tune on digits:5-9."""
    from joulebench.data import check_dataset_spec

    whole = load_dataset("digits", Path("unused"), image_size=8, seed=0)
    upper = load_dataset("digits:5-9", Path("unused"), image_size=8, seed=0)
    lower = load_dataset("digits:0-4", Path("unused"), image_size=8, seed=0)
    assert (upper.name, upper.num_classes) == ("digits:5-9", 5)
    assert len(upper.train) + len(upper.val) + len(lower.train) + len(lower.val) == 1797
    assert set(upper.train.labels.tolist()) == set(upper.val.labels.tolist()) == {0, 1, 2, 3, 4}
    assert len({whole.version, upper.version, lower.version}) == 3
    # digit 9 is upper's label 4: its images are whole's label-9 images
    nines = {image.numpy().tobytes() for image, label in zip(whole.train.images, whole.train.labels) if label == 9}
    nines |= {image.numpy().tobytes() for image, label in zip(whole.val.images, whole.val.labels) if label == 9}
    assert all(image.numpy().tobytes() in nines for image, label in zip(upper.train.images, upper.train.labels)
               if label == 4)
    assert check_dataset_spec("digits:9,5-8") == "digits:5-9"
    assert check_dataset_spec("digits:0-9") == "digits"
    for spec, said in (("digits:3", "it names 1 class"), ("digits:0-10", "'0-10' is not a digit 0–9"),
                       ("digits:٣,4", "'٣' is not a digit"), ("digits:", "'' is not a digit")):
        with pytest.raises(ConfigError, match=said):
            check_dataset_spec(spec)


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
    with pytest.raises(ConfigError, match="/dev/null is a file, not a directory"):
        load_dataset("imagefolder:/dev/null", tmp_path, 32, 0)


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


# The front door of image folders: each file once, every image decoded, any mode converted.

def _pngs(folder: Path, count: int = 5, shade: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", (12, 12), (shade, index * 40, 0)).save(folder / f"{index}.png")


def _two_classes(root: Path, per_class: int = 5) -> None:
    _pngs(root / "cat", per_class)
    _pngs(root / "dog", per_class, shade=200)


def _load(root: Path):
    return load_dataset(f"imagefolder:{root}", Path("unused"), image_size=16, seed=0)


def _refusal(root: Path) -> str:
    with pytest.raises(ConfigError) as raised:
        _load(root)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_symlink_loop_inside_a_class_is_refused_not_walked_again_and_again(tmp_path):
    """Was: 128 samples from 12 images, and the same images in both halves of the split."""
    _two_classes(tmp_path)
    (tmp_path / "cat" / "again").symlink_to(tmp_path / "cat")
    assert "cat/again links back to" in _refusal(tmp_path)
    (tmp_path / "cat" / "again").unlink()
    (tmp_path / "cat" / "a").mkdir(), (tmp_path / "cat" / "b").mkdir()
    (tmp_path / "cat" / "a" / "to-b").symlink_to("../b", True)
    (tmp_path / "cat" / "b" / "to-a").symlink_to("../a", True)  # a loop through two links
    assert "cat/a/to-b/to-a links back to" in _refusal(tmp_path)


def test_a_class_folder_that_is_a_symlink_to_itself_is_refused(tmp_path):
    _two_classes(tmp_path)
    (tmp_path / "fox").symlink_to("fox")
    assert "fox is a symlink loop" in _refusal(tmp_path)


def test_one_file_in_two_classes_is_refused(tmp_path):
    _two_classes(tmp_path)
    (tmp_path / "dog" / "mine.png").symlink_to(tmp_path / "cat" / "0.png")
    assert "are one file in two classes (cat, dog)" in _refusal(tmp_path)


def test_a_file_reached_twice_in_one_class_counts_once(tmp_path):
    _two_classes(tmp_path)
    (tmp_path / "cat" / "copy.png").symlink_to(tmp_path / "cat" / "0.png")
    (tmp_path / "cat" / "more").symlink_to(tmp_path / "cat" / "0.png")  # no image extension: not an image
    (tmp_path / "cat" / "sub").mkdir()
    (tmp_path / "cat" / "sub" / "again.png").symlink_to(tmp_path / "cat" / "1.png")
    splits = _load(tmp_path)
    assert len(splits.train) + len(splits.val) == 10


def test_a_file_in_both_train_and_val_is_refused(tmp_path):
    for half in ("train", "val"):
        _two_classes(tmp_path / half)
    (tmp_path / "val" / "cat" / "leak.png").symlink_to(tmp_path / "train" / "cat" / "3.png")
    assert "1 image(s) of" in (message := _refusal(tmp_path)) and "also in its val/" in message


def test_a_folder_link_out_of_the_dataset_is_refused_a_file_link_is_not(tmp_path):
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    _two_classes(root)
    _pngs(elsewhere / "birds")
    (root / "dog" / "linked.png").symlink_to(elsewhere / "birds" / "0.png")  # as DVC's symlink cache does
    assert len(_load(root).train) + len(_load(root).val) == 11
    (root / "bird").symlink_to(elsewhere / "birds")
    assert "bird leads out of the dataset" in _refusal(root)


def test_the_stores_folders_are_never_data(tmp_path):
    _two_classes(tmp_path)
    (tmp_path / "mlruns" / "0").mkdir(parents=True)
    assert "holds mlruns/, a tracking store's folder" in _refusal(tmp_path)
    (tmp_path / "mlruns" / "0").rmdir(), (tmp_path / "mlruns").rmdir()
    (tmp_path / "dog" / "mlartifacts").mkdir()
    assert "dog/mlartifacts is a tracking store's folder" in _refusal(tmp_path)


def test_hidden_folders_are_neither_classes_nor_images(tmp_path):
    _two_classes(tmp_path)
    _pngs(tmp_path / ".ipynb_checkpoints")
    _pngs(tmp_path / "cat" / ".ipynb_checkpoints")
    splits = _load(tmp_path)
    assert splits.num_classes == 2 and len(splits.train) + len(splits.val) == 10


def test_every_image_is_decoded_up_front_a_truncated_one_is_left_out_with_why(tmp_path):
    """A truncated JPEG passes a header check and used to kill the loader mid-epoch."""
    _two_classes(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "cat" / "whole.jpg", quality=95)
    data = (tmp_path / "cat" / "whole.jpg").read_bytes()
    (tmp_path / "cat" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "dog" / "gone.png").symlink_to(tmp_path / "absent.png")
    Image.fromarray(np.ones((8, 8), np.float32)).save(tmp_path / "dog" / "float.tiff")
    os.mkfifo(tmp_path / "dog" / "pipe.png")  # opening it to read would wait for a writer for ever
    splits = _load(tmp_path)
    assert [entry.split(": ", 1)[0].rsplit("/", 2)[-2:] for entry in splits.skipped] == [
        ["cat", "cut.jpg"], ["dog", "float.tiff"], ["dog", "gone.png"], ["dog", "pipe.png"]]
    assert "truncated" in splits.skipped[0] and "does not exist" in splits.skipped[2]
    assert splits.skipped[3].endswith("pipe.png: not a regular file")
    assert "mode F" in splits.skipped[1]
    assert len(splits.train) + len(splits.val) == 11
    for index in range(len(splits.train)):  # every image left in decodes
        assert splits.train[index][0].shape == (3, 16, 16)


def test_16_bit_greyscale_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    """Was: PIL's convert("RGB") clips 16-bit values at 255: every image white, accuracy 0.50."""
    for name, level in (("dark", 16448), ("bright", 49344)):  # 64 × 257 and 192 × 257
        (tmp_path / name).mkdir()
        for index in range(5):
            Image.fromarray(np.full((8, 8), level, np.uint16)).save(tmp_path / name / f"{index}.png")
    assert Image.open(tmp_path / "dark" / "0.png").mode.startswith("I")
    splits = _load(tmp_path)
    pixels = {}
    for index in range(len(splits.train)):
        image, label = splits.train[index]
        pixels[label] = image[0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # back to 0..1
    assert torch.allclose(torch.stack([pixels[0], pixels[1]]), torch.tensor([192 / 255, 64 / 255]), atol=1e-3)
