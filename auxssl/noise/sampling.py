"""False-negative injection: an epoch order whose batches are drawn from few classes."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from auxssl.data.loaders.base import derive_seed


class ClassGroupedOrder:
    """Each epoch, a permutation of the dataset positions in which every aligned block of ``batch_size`` positions
    holds images of at most ``classes_per_batch`` classes: with c classes per batch, about 1/c of the in-batch
    negatives share the anchor's class (against about 1/C for C balanced classes), a controlled rise of the
    false-negative rate.

    Each class's images are shuffled and cut into chunks of ``batch_size / c``; the chunks are shuffled and every
    ``c`` consecutive chunks form a batch. The few images left over per class (fewer than a chunk) end the epoch.
    Deterministic in ``(seed, epoch)``, so a resumed epoch sees the same batches.
    """

    def __init__(self, labels: np.ndarray, classes_per_batch: int, batch_size: int, seed: int) -> None:
        labels = np.asarray(labels)
        if classes_per_batch < 1 or batch_size % classes_per_batch:
            raise ValueError(f"the batch size {batch_size} must be a multiple of classes_per_batch={classes_per_batch}")
        if (labels < 0).any():
            raise ValueError("noise.fn_injection.classes_per_batch needs a label for every training image")
        self.members = [torch.from_numpy(np.flatnonzero(labels == c)) for c in np.unique(labels)]
        self.chunk, self.seed = batch_size // classes_per_batch, seed

    def __call__(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 5))
        chunks: list[Tensor] = []
        rest: list[Tensor] = []
        for members in self.members:
            shuffled = members[torch.randperm(len(members), generator=generator)]
            full = len(shuffled) // self.chunk * self.chunk
            chunks += list(shuffled[:full].split(self.chunk))
            rest.append(shuffled[full:])
        order = torch.randperm(len(chunks), generator=generator)
        leftover = torch.cat(rest)
        shuffled_leftover = leftover[torch.randperm(len(leftover), generator=generator)]
        return torch.cat([chunks[i] for i in order.tolist()] + [shuffled_leftover])
