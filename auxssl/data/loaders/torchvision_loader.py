"""The reference backend: a torch `DataLoader` with per-sample torchvision transforms in worker processes."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from auxssl.data.datasets import CorruptImageError, ImageDataset
from auxssl.data.loaders.base import derive_seed, epoch_order, num_batches, visible_labels
from auxssl.data.recipes import Recipe, ViewSpec
from baselines.protocol import Batch


def torchvision_transform(spec: ViewSpec, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """The per-sample pipeline of one view (PIL image → normalised float tensor)."""
    steps: list[torch.nn.Module] = []
    if spec.scale is not None:
        steps.append(v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio, antialias=True))
    else:
        steps.append(v2.Resize((spec.size, spec.size), antialias=True))
    if spec.flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(spec.flip_p))
    if spec.jitter_p > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(*spec.jitter)], p=spec.jitter_p))
    if spec.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(spec.grayscale_p))
    if spec.blur_p > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(spec.blur_kernel, spec.blur_sigma)], p=spec.blur_p))
    if spec.solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=spec.solarize_p))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if spec.noise_std > 0:
        steps.append(v2.GaussianNoise(sigma=spec.noise_std, clip=True))
    steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


class _SeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(dataset position, per-sample seed)`` for one epoch; `set_epoch` selects the epoch."""

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle, self.epoch, self.start = n, seed, shuffle, 0, 0

    def __len__(self) -> int:
        return self.n - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.n, self.seed, self.epoch, self.shuffle).tolist()
        for position in range(self.start, self.n):
            yield order[position], derive_seed(self.seed, self.epoch, position, 1)


class _MultiViewDataset(Dataset):
    def __init__(self, dataset: ImageDataset, transforms: list[v2.Compose]) -> None:
        self.dataset, self.transforms = dataset, transforms

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> tuple[list[Tensor], int] | None:
        row, seed = item
        try:
            image = self.dataset.load(row)
        except CorruptImageError as err:
            warnings.warn(f"skipping {err}", stacklevel=2)
            return None
        torch.manual_seed(seed)  # per-sample augmentation independent of worker count and resumption
        return [t(image) for t in self.transforms], row


def _collate(samples: list[tuple[list[Tensor], int] | None]) -> tuple[list[Tensor], Tensor, int]:
    kept = [s for s in samples if s is not None]
    if not kept:
        raise RuntimeError("every image of a batch failed to decode")
    views = [torch.stack([s[0][v] for s in kept]) for v in range(len(kept[0][0]))]
    return views, torch.tensor([s[1] for s in kept]), len(samples) - len(kept)


class TorchvisionLoader:
    """Multi-view batches from per-sample torchvision transforms in ``num_workers`` processes.

    Corrupt images are skipped (the batch shrinks by one) with a warning; ``skipped`` counts them and each
    batch reports its own count in ``batch.extra["skipped"]``.
    """

    def __init__(
        self,
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
    ) -> None:
        self.dataset, self.recipe, self.batch_size = dataset, recipe, batch_size
        self.labels, self.device, self.drop_last = labels, torch.device(device), drop_last
        self.sampler = _SeededSampler(len(dataset), seed, shuffle)
        transforms = [torchvision_transform(spec, dataset.mean, dataset.std) for spec in recipe.views]
        self.loader = DataLoader(
            _MultiViewDataset(dataset, transforms),
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=_collate,
            drop_last=drop_last,
            persistent_workers=num_workers > 0,
            pin_memory=self.device.type == "cuda",
        )
        self.skipped = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.epoch, self.sampler.start = epoch, start_batch * self.batch_size

    def __len__(self) -> int:
        return num_batches(len(self.dataset), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        for views, rows, skipped in self.loader:
            self.skipped += skipped
            batch = Batch(
                views=views,
                index=rows,
                label=visible_labels(self.labels, rows.numpy()),
                num_global=self.recipe.num_global,
                extra={"skipped": skipped},
            )
            yield batch.to(self.device, non_blocking=True)
