"""Datasets: sizes and label ranges, folder layouts, corrupt files, offline errors, label reveal."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auxssl.data import (
    CorruptImageError,
    FolderDataset,
    Recipe,
    ViewSpec,
    balanced_subset,
    build_loader,
    cifar10_jpg,
    digits,
    get_dataset,
    reveal_labels,
    torchvision_dataset,
)
from auxssl.data.datasets import find_shared_cifar10_archive


def write_image(path: Path, value: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """cat/ holds 3 images, dog/ holds 2 good ones plus one garbage file (no readable header) and one truncated
    PNG (its header reads, its pixels do not decode)."""
    for i in range(3):
        write_image(tmp_path / "cat" / f"{i}.png", 10 * i)
    for i in range(2):
        write_image(tmp_path / "dog" / f"{i}.png", 100 + 10 * i)
    (tmp_path / "dog" / "garbage.jpg").write_bytes(b"this is not an image")
    noise = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "dog" / "truncated.png")
    whole = (tmp_path / "dog" / "truncated.png").read_bytes()
    (tmp_path / "dog" / "truncated.png").write_bytes(whole[:-30])  # the header reads, the pixel data ends early
    return tmp_path


def test_digits_sizes_and_labels() -> None:
    train, test = digits("train"), digits("test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    for ds in (train, test):
        assert ds.labels.min() == 0 and ds.labels.max() == 9 and len(ds.classes) == 10
        image, label = ds[0]
        assert image.size == (32, 32) and image.mode == "RGB" and label == ds.labels[0]
    assert np.bincount(test.labels).min() >= 35  # stratified split


def test_image_folder_labels_and_corrupt_files(image_folder: Path) -> None:
    ds = FolderDataset(image_folder)
    # the garbage file has no readable header: left out when the dataset is built, and listed
    assert ds.classes == ["cat", "dog"] and len(ds) == 6 and [Path(p).name for p in ds.skipped] == ["garbage.jpg"]
    by_name = {p.name: int(label) for p, label in zip(ds.files, ds.labels)}
    assert by_name["truncated.png"] == 1 and by_name["2.png"] == 0
    bad = [i for i, p in enumerate(ds.files) if p.name == "truncated.png"]
    with pytest.raises(CorruptImageError, match="truncated.png"):
        ds.load(bad[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # skipping is recorded, not a raw Python warning
        images, rows = ds.to_uint8(cache=False)
    assert images.shape == (5, 3, 8, 8) and sorted(set(range(6)) - set(rows.tolist())) == bad
    assert sorted(Path(p).name for p in ds.skipped) == ["garbage.jpg", "truncated.png"]
    # pixel value identifies the file: every kept row carries its own file's label
    for image, row in zip(images, rows):
        assert (int(image[0, 0, 0]) >= 100) == (ds.labels[row] == 1)


def test_loader_skips_corrupt_files_without_shifting_labels(image_folder: Path) -> None:
    ds = FolderDataset(image_folder)
    recipe = Recipe("plain", (ViewSpec(size=8, scale=None, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0),), num_global=1)
    loader = build_loader("torchvision", ds, recipe, 6, labels=ds.labels, num_workers=0, shuffle=False, drop_last=False)
    batches = list(loader)  # the truncated image's place is taken by the next image: the batch keeps its size
    assert loader.skipped == 1 and batches[0].extra["skipped"] == 1 and batches[0].size == 6
    bad = [f.name for f in ds.files].index("truncated.png")
    assert batches[0].index.tolist() == [(r + 1) % 6 if r == bad else r for r in range(6)]
    assert torch.equal(batches[0].label, torch.from_numpy(ds.labels)[batches[0].index])


def test_flat_tree_is_unlabelled(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", 1)
    write_image(tmp_path / "nested" / "deeper" / "b.png", 2)
    ds = FolderDataset(tmp_path)
    assert len(ds) == 2 and (ds.labels == -1).all() and not ds.labelled


def test_missing_data_errors_say_where_to_put_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        torchvision_dataset("cifar10", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="choose one of"):
        get_dataset("imagenet-21k")


@pytest.mark.skipif(find_shared_cifar10_archive() is None, reason="shared CIFAR-10 archive not present")
def test_shared_cifar10_archive_sizes_and_labels() -> None:
    train, test = cifar10_jpg("train"), cifar10_jpg("test")
    assert (len(train), len(test)) == (50_000, 10_000)
    assert train.classes[0] == "airplane" and train.classes[-1] == "truck"
    assert np.array_equal(np.bincount(train.labels), np.full(10, 5000))
    image, label = test[0]
    assert image.size == (32, 32) and 0 <= label < 10


def test_balanced_subset_exact_and_deterministic() -> None:
    labels = np.repeat(np.arange(10), 100)
    subset = balanced_subset(labels, 0.1, seed=3)
    assert len(subset) == 100 and np.array_equal(np.bincount(labels[subset]), np.full(10, 10))
    assert np.array_equal(subset, balanced_subset(labels, 0.1, seed=3))
    assert not np.array_equal(subset, balanced_subset(labels, 0.1, seed=4))
    visible = reveal_labels(labels, 0.01, seed=0)
    assert (visible >= 0).sum() == 10 and np.array_equal(visible[visible >= 0], np.arange(10))
