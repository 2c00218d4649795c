"""Loader backends behind one interface (`MultiViewLoader`): torchvision (reference), tensor+kornia (fast
default for datasets that fit in memory), FFCV (optional extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from auxssl.data.datasets import ImageDataset, default_cache_dir
from auxssl.data.loaders.base import GoodCrops, LoaderOptions, MultiViewLoader, OrderFactory, derive_seed
from auxssl.data.loaders.ffcv_loader import FFCVLoader, ffcv_available, write_beton
from auxssl.data.loaders.tensor_loader import TensorLoader, kornia_augmentation
from auxssl.data.loaders.torchvision_loader import TorchvisionLoader, torchvision_transform
from auxssl.data.recipes import Recipe

BACKENDS = ("torchvision", "tensor", "ffcv")


def beton_cache_path(dataset: ImageDataset, size: int | None) -> Path:
    """Where the ``.beton`` of ``dataset`` is cached: keyed by its content (`ImageDataset.fingerprint`: paths,
    sizes and times of a folder's files, the bytes of an in-memory array, the indices of a subset) and the stored
    size, so two different folders of the same name and length never share a file."""
    return default_cache_dir() / "beton" / f"{dataset.name}-{len(dataset)}-{dataset.fingerprint()[:16]}-{size}.beton"


def choose_backend(dataset: ImageDataset, image_size: int, budget_bytes: int) -> str:
    """``data.backend: auto``: the in-memory tensor backend when the decoded dataset fits in ``budget_bytes``,
    else the streaming torchvision backend (memory bounded by its batches)."""
    return "tensor" if dataset.decoded_bytes(image_size) <= budget_bytes else "torchvision"


def build_loader(
    backend: str,
    dataset: ImageDataset,
    recipe: Recipe,
    batch_size: int,
    *,
    labels: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    num_workers: int = 2,
    shuffle: bool = True,
    drop_last: bool = True,
    beton_path: str | Path | None = None,
    order: OrderFactory | None = None,
    good_crops: GoodCrops | None = None,
) -> MultiViewLoader:
    """A multi-view loader over ``dataset`` with the given backend (one of `BACKENDS`).

    ``labels``: the labels the loader may reveal in ``batch.label`` (indexed by dataset index, -1 hidden; see
    `auxssl.data.labels.reveal_labels`); None hides them. ``beton_path`` (FFCV): where the ``.beton`` is, or
    is written once (default: the cache directory). ``order`` replaces the seeded shuffling (e.g. batches grouped
    by class); ``good_crops`` forces a share of good positive pairs (noise control).
    """
    options = LoaderOptions(labels=labels, device=device, seed=seed, num_workers=num_workers, shuffle=shuffle,
                            drop_last=drop_last, order=order, good_crops=good_crops)
    if backend == "torchvision":
        return TorchvisionLoader(dataset, recipe, batch_size, options)
    if backend == "tensor":
        return TensorLoader(dataset, recipe, batch_size, options)
    if backend == "ffcv":
        size = dataset.storage_size(max(spec.size for spec in recipe.all_views))
        path = Path(beton_path) if beton_path else beton_cache_path(dataset, size)
        if not path.exists():
            write_beton(dataset, path, size=size)
        return FFCVLoader(path, dataset, recipe, batch_size, options)
    raise ValueError(f"unknown loader backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "FFCVLoader",
    "GoodCrops",
    "LoaderOptions",
    "MultiViewLoader",
    "TensorLoader",
    "TorchvisionLoader",
    "beton_cache_path",
    "build_loader",
    "choose_backend",
    "derive_seed",
    "ffcv_available",
    "kornia_augmentation",
    "torchvision_transform",
    "write_beton",
]
