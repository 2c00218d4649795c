"""Frozen-backbone feature extraction with the evaluation transform (no augmentation).

Images held in memory are read directly; any other dataset (a folder) is *streamed*: worker processes decode and
resize one batch at a time, so memory is bounded by the batch and the features, not by the dataset. Under
torch.distributed each process extracts the features of its own shard (`auxssl.eval.sharded`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from auxssl.auxiliary import PooledFeatures
from auxssl.data.datasets import CorruptImageError, ImageDataset
from auxssl.engine.precision import resolve_precision
from auxssl.errors import InputError


def _resize(x: Tensor, size: int | None) -> Tensor:
    """Float images ``(B, 3, H, W)`` in [0, 1] resized to ``size``² (bilinear, antialiased); unchanged when None."""
    if size is None or x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _normalise(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    mean_t = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def normalise_images(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                     size: int | None = None) -> Tensor:
    """uint8 ``(B, 3, H, W)`` → float, optionally resized to ``size``², normalised with the dataset statistics."""
    return _normalise(_resize(images.float().div_(255.0), size), mean, std)


class _EvalImages(Dataset):
    """Rows of a dataset decoded and resized for evaluation, one at a time (in DataLoader workers)."""

    def __init__(self, dataset: ImageDataset, rows: np.ndarray, size: int | None) -> None:
        self.dataset, self.rows, self.size = dataset, rows, size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Tensor, int] | int:
        """The resized image and its row; only its row when the image cannot be decoded."""
        row = int(self.rows[i])
        try:
            image = self.dataset.load(row)
        except CorruptImageError:
            return row
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        return _resize(x[None], self.size)[0], row


def _collate(samples: list[tuple[Tensor, int] | int]) -> tuple[Tensor | None, Tensor, list[int]]:
    kept = [s for s in samples if not isinstance(s, int)]
    failed = [s for s in samples if isinstance(s, int)]
    if not kept:
        return None, torch.empty(0, dtype=torch.int64), failed
    return torch.stack([s[0] for s in kept]), torch.tensor([s[1] for s in kept]), failed


def _batches(dataset: ImageDataset, rows: np.ndarray, batch_size: int, image_size: int | None,
             images: Tensor | None, num_workers: int) -> Iterator[tuple[Tensor, np.ndarray]]:
    """``(images, their dataset rows)`` batch by batch: uint8 as stored when in memory (converted on the device),
    else float in [0, 1] already at ``image_size``."""
    if images is not None:  # already decoded: rows index the tensor's rows
        for start in range(0, len(rows), batch_size):
            yield images[start : start + batch_size], rows[start : start + batch_size]
        return
    if image_size is None and dataset.uniform_size() is None:
        raise InputError(f"{dataset.name}: images of different sizes need an evaluation size (eval.image_size)")
    loader = DataLoader(_EvalImages(dataset, rows, image_size), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate, persistent_workers=False)
    for images, batch_rows, failed in loader:
        if failed:
            dataset.note_skipped(failed)  # unreadable files are listed by the dataset, not warned about
        if images is not None:
            yield images, batch_rows.numpy()


def extract_features(backbone: nn.Module, dataset: ImageDataset, **options: Any) -> tuple[Tensor, Tensor]:
    """Pooled features ``(N, D)`` (float32, CPU) and labels ``(N,)`` of every decodable image of ``dataset``; the
    options and their behaviour are `extract_features_and_rows`'s (which also returns the rows)."""
    features, labels, _ = extract_features_and_rows(backbone, dataset, **options)
    return features, labels


@torch.no_grad()
def extract_features_and_rows(
    backbone: nn.Module,
    dataset: ImageDataset,
    *,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    images: Tensor | None = None,
    rows: np.ndarray | None = None,
    precision: str = "auto",
    num_workers: int = 2,
) -> tuple[Tensor, Tensor, np.ndarray]:
    """Pooled features ``(N, D)`` (float32, CPU), labels ``(N,)`` and dataset rows ``(N,)`` of every decodable image
    of ``dataset`` (a backbone returning ``(B, D, 1, 1)``, as lightly's ResNet trunks do, is flattened).

    The backbone runs in eval mode (its mode is restored afterwards) on channels-last input, under autocast at
    ``precision`` (``auto``: bf16 where native, as in training, else fp32; ``fp32``; ``bf16``). Images in memory
    (`ImageDataset.in_memory`, or ``images``/``rows`` from `ImageDataset.to_uint8`) are read directly; others are
    streamed by ``num_workers`` processes.
    """
    if images is None and dataset.in_memory:
        images, rows = dataset.to_uint8()
    if images is not None:
        rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    else:
        rows = np.arange(len(dataset))
    autocast = resolve_precision(precision, torch.device(device)).autocast()
    pooled = PooledFeatures(backbone)  # lightly-style trunks return (B, D, 1, 1)
    was_training = backbone.training
    backbone.eval()
    chunks: list[Tensor] = []
    kept: list[np.ndarray] = []
    try:
        for x, batch_rows in _batches(dataset, rows, batch_size, image_size, images, num_workers):
            x = x.to(device)
            x = _normalise(_resize(x.float().div_(255.0) if x.dtype == torch.uint8 else x, image_size),
                           dataset.mean, dataset.std)
            with autocast:
                features = pooled(x.contiguous(memory_format=torch.channels_last))
            chunks.append(features.float().cpu())
            kept.append(batch_rows)
    finally:
        backbone.train(was_training)
    features = torch.cat(chunks) if chunks else torch.empty(0)
    rows = np.concatenate(kept) if kept else np.empty(0, dtype=np.int64)
    return features, torch.from_numpy(np.asarray(dataset.labels)[rows]), rows
