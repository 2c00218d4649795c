"""The folder layouts users bring: a flat labelled folder is split (never evaluated on its own bank), train/ + val/,
nested and symlinked class folders, and the reason a folder was read as unlabelled."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auxssl.cli import main
from auxssl.config import load_config
from auxssl.data.datasets import HELD_OUT_FRACTION, FolderDataset, get_dataset, stratified_held_out
from auxssl.engine.build import build_datasets, check_disjoint
from auxssl.errors import InputError
from auxssl.eval.tracker import read_metrics


def write(path: Path, value: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value % 256, dtype=np.uint8)).save(path)


def labelled_folder(root: Path, per_class: dict[str, int]) -> Path:
    for k, (name, count) in enumerate(per_class.items()):
        for i in range(count):
            write(root / name / f"{i}.png", 40 * k + i)
    return root


def source_paths(dataset) -> set[str]:
    files = dataset.source.files
    return {str(files[i]) for i in dataset.source_indices()}


def test_a_flat_labelled_folder_is_split_and_never_evaluated_on_its_own_bank(tmp_path: Path) -> None:
    root = labelled_folder(tmp_path / "pets", {"cat": 20, "dog": 30, "owl": 3})
    train, test = get_dataset("folder", "train", root), get_dataset("folder", "test", root)
    assert not source_paths(train) & source_paths(test)  # today's code: test was the training folder itself
    assert len(train) + len(test) == 53
    assert np.bincount(test.labels).tolist() == [2, 3, 1]  # 10% of every class, at least one
    assert "held out" in test.description and "seed 0" in test.description
    again = get_dataset("folder", "test", root)  # deterministic
    assert source_paths(again) == source_paths(test)


def test_held_out_split_is_stratified_by_an_independent_count() -> None:
    labels = np.repeat(np.arange(4), [100, 10, 2, 1])
    mask = stratified_held_out(labels, HELD_OUT_FRACTION, seed=0)
    assert [int(mask[labels == c].sum()) for c in range(4)] == [10, 1, 1, 0]
    assert not np.array_equal(mask, stratified_held_out(labels, HELD_OUT_FRACTION, seed=1))


def test_the_training_run_states_its_held_out_split(tmp_path: Path) -> None:
    root = labelled_folder(tmp_path / "pets", {"cat": 20, "dog": 20})
    config = load_config(None, ["data.dataset=folder", f"data.root={root}"])
    data = build_datasets(config)
    assert len(data.bank) == 36 and len(data.test) == 4 and not source_paths(data.bank) & source_paths(data.test)
    args = ["train", "own_folder", "--output-dir", str(tmp_path / "runs"), "--name", "pets"]
    sets = [f"data.root={root}", "data.image_size=8", "data.batch_size=8", "data.num_workers=0",
            "model.backbone=resnet10", "model.width=16", "model.cifar_stem=true", "train.epochs=1",
            "train.precision=fp32", "train.progress=false", "eval.knn_k=3", "optim.warmup_epochs=0",
            "model.method_args={proj_hidden_dim: 32, proj_dim: 16}"]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    info = json.loads((tmp_path / "runs" / "pets" / "run.json").read_text())
    assert info["evaluation"]["data"]["bank_size"] == 36 and info["evaluation"]["data"]["test_size"] == 4
    assert "held out" in info["evaluation"]["data"]["split"] and "held out" in info["protocol"]["data"]
    assert len(read_metrics(tmp_path / "runs" / "pets", "eval")) == 2  # epoch 0 and 1


def test_train_and_val_folders_are_the_imagenet_layout(tmp_path: Path) -> None:
    labelled_folder(tmp_path / "data" / "train", {"a": 4, "b": 4})
    labelled_folder(tmp_path / "data" / "val", {"a": 2, "b": 2})
    train, test = get_dataset("folder", "train", tmp_path / "data"), get_dataset("folder", "test", tmp_path / "data")
    assert len(train) == 8 and len(test) == 4 and test.labelled and test.root.name == "val"


def test_a_train_folder_without_a_test_folder_is_split_too(tmp_path: Path) -> None:
    labelled_folder(tmp_path / "data" / "train", {"a": 10, "b": 10})
    train, test = get_dataset("folder", "train", tmp_path / "data"), get_dataset("folder", "test", tmp_path / "data")
    assert len(train) == 18 and len(test) == 2 and not source_paths(train) & source_paths(test)


def test_nested_files_are_labelled_by_their_class_folder(tmp_path: Path) -> None:
    root = labelled_folder(tmp_path / "pets", {"cat": 2, "dog": 2})
    write(root / "dog" / "puppies" / "deep" / "p.png", 7)
    data = FolderDataset(root)
    assert data.labelled and data.classes == ["cat", "dog"]  # today's code: the whole folder became unlabelled
    assert data.labels[[f.name for f in data.files].index("p.png")] == 1
    assert "1 image in nested sub-folders" in data.description


def test_symlinked_class_folders_are_followed_and_link_cycles_end(tmp_path: Path) -> None:
    elsewhere = labelled_folder(tmp_path / "store", {"dog": 3})
    root = labelled_folder(tmp_path / "pets", {"cat": 2})
    os.symlink(elsewhere / "dog", root / "dog")
    os.symlink(root, root / "cat" / "loop")  # a cycle: pets/cat/loop -> pets
    data = FolderDataset(root)
    assert data.classes == ["cat", "dog"] and np.bincount(data.labels).tolist() == [2, 3]


@pytest.mark.parametrize(("layout", "reason"), [("loose", "2 images directly in"), ("single", "single folder")])
def test_an_unlabelled_folder_says_why(tmp_path: Path, layout: str, reason: str) -> None:
    root = labelled_folder(tmp_path / "photos", {"holiday": 3})
    if layout == "loose":
        write(root / "a.png", 1)
        write(root / "b.png", 2)
    data = FolderDataset(root)
    assert not data.labelled and reason in data.description
    with pytest.raises(InputError, match="not an ImageFolder tree"):
        FolderDataset(root, labelled=True)


def test_an_unlabelled_run_records_that_it_has_no_evaluation_and_why(tmp_path: Path, capsys) -> None:
    root = tmp_path / "photos"
    for i in range(20):
        write(root / f"{i}.png", 10 * i)
    sets = [f"data.root={root}", "data.image_size=8", "data.batch_size=8", "data.num_workers=0",
            "model.backbone=resnet10", "model.width=16", "train.epochs=1", "train.precision=fp32",
            "train.progress=false", "optim.warmup_epochs=0", "model.method_args={proj_hidden_dim: 32, proj_dim: 16}"]
    run = tmp_path / "runs" / "photos"
    assert main(["train", "own_folder", "--output-dir", str(tmp_path / "runs"), "--name", "photos",
                 *(a for s in sets for a in ("--set", s))]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["no_evaluation"].endswith("kNN and probes need them") and "directly in" in info["no_evaluation"]
    assert list(info["protocol"]) == ["data"] and info["protocol"]["data"].startswith("no evaluation")
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "**no evaluation**: photos: photos has no labels" in text and "## Final accuracy" not in text
    assert not (tmp_path / "report" / "knn_vs_noise.png").exists()


def test_a_bank_that_holds_test_images_is_refused(tmp_path: Path) -> None:
    root = labelled_folder(tmp_path / "pets", {"cat": 4, "dog": 4})
    with pytest.raises(InputError, match="8 of the 8 test images"):
        check_disjoint(FolderDataset(root), FolderDataset(root))
    check_disjoint(get_dataset("folder", "train", root), get_dataset("folder", "test", root))  # the held-out split
