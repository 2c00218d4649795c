"""Users' own data: unlabelled folders of mixed-size images train end to end, evaluation streams, a separate labelled
evaluation set, the backend chosen by memory, caches keyed by content."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auxssl.cli import main
from auxssl.config import load_config
from auxssl.data.datasets import FolderDataset, get_dataset
from auxssl.data.loaders import beton_cache_path, choose_backend
from auxssl.engine.build import resolve_backend
from auxssl.engine.checkpoint import find_last_checkpoint
from auxssl.eval.tracker import read_metrics


def mixed_folder(root: Path, n: int = 36, seed: int = 0) -> Path:
    """An unlabelled tree of images of every kind a user has: tiny and large, odd aspect ratios, grayscale, RGBA,
    palette PNGs, images directly in the root and in nested folders at different depths, and one corrupt file."""
    rng = np.random.default_rng(seed)
    sizes = [(8, 8), (20, 37), (300, 200), (64, 64), (33, 90)]
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        folder = root / ("" if i % 3 == 0 else "a" if i % 2 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        if i % 7 == 3:
            image.convert("L").save(folder / f"{i}.jpg")
        elif i % 7 == 5:
            image.convert("RGBA").save(folder / f"{i}.png")
        elif i % 7 == 6:
            image.convert("P").save(folder / f"{i}.png")
        else:
            image.save(folder / f"{i}.jpg")
    (root / "a" / "broken.jpg").write_bytes(b"not an image at all")
    return root


def own_data_args(root: Path, out: Path, *extra: str) -> list[str]:
    sets = ["data.dataset=folder", f"data.root={root}", "data.image_size=16", "data.batch_size=8", "data.num_workers=0",
            "model.backbone=resnet10", "model.width=8", "model.method=simclr",
            "model.method_args={proj_hidden_dim: 32, proj_dim: 16}", "train.epochs=1", "train.precision=fp32",
            "train.progress=false", "eval.every_epochs=1", "optim.warmup_epochs=0", *extra]
    overrides = [a for s in sets for a in ("--set", s)]
    return ["train", "simclr_cifar10", "--name", "own", "--output-dir", str(out), *overrides]


@pytest.mark.parametrize("backend", ["auto", "tensor", "torchvision"])
def test_unlabelled_mixed_size_folder_trains_checkpoints_and_exports(tmp_path: Path, backend: str, capsys) -> None:
    root = mixed_folder(tmp_path / "photos")
    assert main(own_data_args(root, tmp_path / "runs", f"data.backend={backend}")) == 0
    # the CLI's own console lines (its handler does not propagate to pytest's log capture, whatever ran before)
    console = capsys.readouterr().err
    run = tmp_path / "runs" / "own"
    assert find_last_checkpoint(run) is not None
    assert read_metrics(run, "train") and read_metrics(run, "eval") == []
    assert "evaluation skipped" in console and "no labels" in console
    assert main(["export", str(run), "--out", str(tmp_path / "backbone.pt")]) == 0
    assert json.loads((run / "run.json").read_text())["budget"]["backend"] in ("tensor", "torchvision")


def test_folder_images_are_decoded_to_rgb_and_resized_corrupt_ones_skipped(tmp_path: Path) -> None:
    data = FolderDataset(mixed_folder(tmp_path / "photos"))
    assert not data.labelled and data.uniform_size() is None and "12 images directly in" in data.description
    assert len(data) == 36 and len(data.skipped) == 1 and data.skipped[0].endswith("broken.jpg")  # no header
    images, _ = data.to_uint8(size=16)
    assert images.shape == (36, 3, 16, 16)


def test_a_separate_labelled_set_evaluates_pretraining_on_an_unlabelled_folder(tmp_path: Path, capsys) -> None:
    root = mixed_folder(tmp_path / "photos")
    args = own_data_args(root, tmp_path / "runs", "eval.dataset=digits", "eval.test_subset=60", "data.backend=tensor")
    assert main(args) == 0
    run = tmp_path / "runs" / "own"
    evals = read_metrics(run, "eval")
    assert len(evals) == 1 and 0 <= evals[0]["knn/top1"] <= 100
    assert json.loads((run / "run.json").read_text())["evaluation"]["data"]["dataset"] == "digits"
    capsys.readouterr()
    checkpoint = find_last_checkpoint(run)
    assert main(["eval", str(checkpoint), "--dataset", "digits", "--image-size", "16", "--k", "10"]) == 0
    assert "knn/top1" in json.loads(capsys.readouterr().out)


def test_auto_backend_streams_data_that_exceed_the_memory_budget(tmp_path: Path) -> None:
    data = get_dataset("digits", "train")
    assert choose_backend(data, 32, budget_bytes=10**9) == "tensor"
    assert choose_backend(data, 32, budget_bytes=10**5) == "torchvision"
    small = load_config(None, ["data.memory_budget_gb=0.0001"])
    assert resolve_backend(small, data, torch.device("cpu")) == "torchvision"
    assert resolve_backend(load_config(None, []), data, torch.device("cpu")) == "tensor"


def test_beton_cache_is_keyed_by_the_source_content(tmp_path: Path) -> None:
    first = mixed_folder(tmp_path / "one" / "train", seed=0)
    second = mixed_folder(tmp_path / "two" / "train", seed=1)
    a, b = FolderDataset(first), FolderDataset(second)
    assert a.name == b.name == "train" and len(a) == len(b)
    assert beton_cache_path(a, 16) != beton_cache_path(b, 16)
    assert beton_cache_path(a, 16) == beton_cache_path(FolderDataset(first), 16)


PEAK_RSS = """
import resource, sys, torch
from auxssl.data.datasets import FolderDataset
from auxssl.eval.features import extract_features
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
data = FolderDataset(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
features, labels = extract_features(net, data, image_size=32, batch_size=64, num_workers=0, precision="fp32")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, features.shape[0], data.decoded_bytes(32) if data.uniform_size() else 0)
"""


def folder_of(root: Path, n: int, side: int) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / f"{i}.png", compress_level=0)
    return root


def test_streaming_evaluation_memory_follows_the_features_not_the_image_bytes(tmp_path: Path) -> None:
    """Peak RSS of extracting features from 600 images barely moves when the images are 16× larger."""
    growth = {}
    for side in (64, 256):
        folder = folder_of(tmp_path / f"px{side}", 600, side)
        out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(folder)], capture_output=True, text=True, check=True)
        before, after, count, _ = map(int, out.stdout.split())
        assert count == 600
        growth[side] = (after - before) * 1024  # ru_maxrss is in KiB on Linux
    decoded_difference = 600 * 3 * (256**2 - 64**2)  # 110 MB more pixels if the split were held decoded
    assert growth[256] - growth[64] < decoded_difference / 4, (growth, decoded_difference)


def test_a_shard_decodes_only_its_own_images(tmp_path: Path, monkeypatch) -> None:
    """Under DDP the tensor backend decoded the whole parent folder on every rank before taking its 1/W shard."""
    from auxssl.data.datasets import ImageSubset

    monkeypatch.setenv("AUXSSL_CACHE", str(tmp_path / "cache"))
    folder = folder_of(tmp_path / "imgs", 100, 8)
    data = FolderDataset(folder)
    loaded: list[int] = []
    original = FolderDataset.load
    monkeypatch.setattr(FolderDataset, "load", lambda self, i: loaded.append(i) or original(self, i))
    shard = ImageSubset(data, np.arange(3, 100, 8))
    images, rows = shard.to_uint8()
    assert sorted(loaded) == list(range(3, 100, 8))
    assert images.shape == (13, 3, 8, 8) and rows.tolist() == list(range(13))
    for k, i in enumerate(range(3, 100, 8)):  # the right image in every row
        assert torch.equal(images[k], torch.from_numpy(np.asarray(original(data, i))).permute(2, 0, 1))
    loaded.clear()
    again, _ = ImageSubset(FolderDataset(folder), np.arange(3, 100, 8)).to_uint8()
    assert loaded == [] and torch.equal(again, images)  # cached under the shard's fingerprint
