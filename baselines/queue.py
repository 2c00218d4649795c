"""A FIFO memory of past embeddings (MoCo's negatives, SwAV's extra samples for Sinkhorn)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FeatureQueue(nn.Module):
    """A ring buffer of ``size`` embeddings of dimension ``dim``, stored as buffers (saved in checkpoints).

    `push` writes the new rows after the most recently written ones, wrapping around; the oldest rows are
    overwritten first. ``index`` keeps the dataset index of each stored embedding (-1 when unknown) so that
    noise control can recognise same-sample or same-class entries.
    """

    def __init__(self, size: int, dim: int, init: str = "random") -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue size must be positive, got {size}")
        data = F.normalize(torch.randn(size, dim), dim=1) if init == "random" else torch.zeros(size, dim)
        self.register_buffer("items", data)
        self.register_buffer("index", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_written", torch.zeros((), dtype=torch.long))
        self._written: int | None = 0  # num_written on the host (None: read it once, after loading a state)

    @property
    def size(self) -> int:
        return self.items.shape[0]

    @property
    def full(self) -> bool:
        """Whether every row holds a real embedding (written at least once); known on the host, so asking costs
        no device sync (after a loaded state, once)."""
        if self._written is None:
            self._written = int(self.num_written)
        return self._written >= self.size

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super()._load_from_state_dict(*args, **kwargs)
        self._written = None

    @torch.no_grad()
    def push(self, x: Tensor, index: Tensor | None = None) -> None:
        n = x.shape[0]
        if n > self.size:
            raise ValueError(f"cannot push {n} embeddings into a queue of size {self.size}")
        rows = (self.ptr + torch.arange(n, device=self.items.device)) % self.size
        self.items[rows] = x.detach().to(self.items.dtype)
        self.index[rows] = -1 if index is None else index.to(self.index.device)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.num_written.add_(n)
        if self._written is not None:
            self._written += n
