"""What every loader backend provides, and the seeding scheme they share.

A loader yields `Batch` objects (views already augmented and normalised, dataset indices, labels when
revealed) and is deterministic: the order of epoch ``e`` and the augmentation of each batch/sample depend only
on ``(seed, e, position)``, never on how many workers ran or whether the run was resumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from baselines.protocol import Batch


@runtime_checkable
class MultiViewLoader(Protocol):
    batch_size: int
    backend: str  # the data.backend it implements

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate next, starting at batch ``start_batch`` (resuming mid-epoch)."""
        ...


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, position, …), well mixed (NumPy's SeedSequence)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The sample order of one epoch: a permutation seeded by ``(seed, epoch)``, or ``0..n-1``."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, epoch)))


#: The sample order of each epoch: ``order(epoch)`` is a permutation of the loader's dataset positions.
EpochOrder = Callable[[int], torch.Tensor]


#: Builds the `EpochOrder` of a loader from the dataset rows it iterates (e.g. to group them by class).
OrderFactory = Callable[[np.ndarray], EpochOrder]


def shuffled_order(n: int, seed: int, shuffle: bool = True) -> EpochOrder:
    """The default order: `epoch_order` of ``n`` positions."""
    return lambda epoch: epoch_order(n, seed, epoch, shuffle)


@dataclass(frozen=True)
class GoodCrops:
    """Force a share of the positive pairs to be good (noise control, `auxssl.noise.crops`): with probability
    ``fraction`` per sample, the second view's crop is redrawn to overlap the first's with IoU ≥ ``min_iou``."""

    fraction: float
    min_iou: float


@dataclass(frozen=True)
class LoaderOptions:
    """What every backend's loader takes besides the dataset, recipe and batch size.

    Attributes:
        labels: the labels the loader may reveal in ``batch.label`` (by dataset row, -1 hidden); None hides them.
        device: where batches are made (tensor, FFCV) or moved to (torchvision).
        seed: the seed of the epoch orders and augmentations.
        num_workers: decoding processes (torchvision, FFCV).
        shuffle: seeded shuffling of each epoch (else dataset order).
        drop_last: drop the last incomplete batch.
        order: replaces the seeded shuffling (e.g. batches grouped by class, noise control).
        good_crops: forces a share of good positive pairs (noise control).
    """

    labels: np.ndarray | None = None
    device: str | torch.device = "cpu"
    seed: int = 0
    num_workers: int = 2
    shuffle: bool = True
    drop_last: bool = True
    order: OrderFactory | None = None
    good_crops: GoodCrops | None = None

    def epoch_order(self, rows: np.ndarray) -> EpochOrder:
        """The order of the loader's positions over dataset ``rows``: ``order``'s, else seeded shuffling."""
        return self.order(rows) if self.order is not None else shuffled_order(len(rows), self.seed, self.shuffle)


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def visible_labels(labels: np.ndarray | None, rows: np.ndarray) -> torch.Tensor | None:
    """Labels of the given dataset rows, or None when no labels were revealed to the loader."""
    if labels is None:
        return None
    return torch.from_numpy(np.asarray(labels, dtype=np.int64)[rows])


def fill_skipped(kept: np.ndarray, n: int) -> np.ndarray:
    """Positions into ``kept`` (the sorted dataset rows that decoded) for all ``n`` rows of the dataset: a row that
    failed takes the next row that decoded (cyclically), so an epoch keeps ``n`` samples and, under
    torch.distributed, every rank the same number of steps whatever files it could not read."""
    kept = np.asarray(kept, dtype=np.int64)
    if len(kept) == 0:
        raise ValueError("no image decoded")
    following = np.searchsorted(kept, np.arange(n)) % len(kept)
    return following.astype(np.int64)
