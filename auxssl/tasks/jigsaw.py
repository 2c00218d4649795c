"""2×2 jigsaw permutation prediction (after Noroozi & Favaro, ECCV 2016), a second auxiliary task."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from auxssl.tasks.base import ClassificationPretextTask


def permute_tiles(images: Tensor, order: Tensor) -> Tensor:
    """Cut every image into a 2×2 grid and reassemble it with tile ``order[i, j]`` at position ``j``.

    Positions are numbered row-major (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right).
    """
    b, c, h, w = images.shape
    if h % 2 or w % 2:
        raise ValueError(f"jigsaw needs even image sides, got {h}×{w}")
    tiles = images.reshape(b, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(b, 4, c, h // 2, w // 2)
    shuffled = tiles[torch.arange(b, device=images.device)[:, None], order]
    return shuffled.reshape(b, 2, 2, c, h // 2, w // 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


class JigsawPrediction(ClassificationPretextTask):
    """Predict which of the 24 permutations of a 2×2 grid of tiles was applied to each view.

    The shuffled image keeps its size, so it shares the backbone like any view. Label 0 is the identity. The
    loss is summed over views like rotation's (see `ClassificationPretextTask`).
    """

    name = "jigsaw"

    def __init__(
        self,
        weight: float = 0.1,
        views: Sequence[int] = (0, 1),
        size: int | None = None,
        hidden_dim: int | None = None,
        generator: torch.Generator | None = None,
        batch_views: bool = False,
    ) -> None:
        super().__init__(24, weight, views, size, hidden_dim, generator, batch_views)
        self.register_buffer("permutations", torch.tensor(list(itertools.permutations(range(4)))), persistent=False)

    def make_inputs(self, images: Tensor) -> tuple[Tensor, Tensor]:
        labels = self.random_labels(images.shape[0], images.device)
        return permute_tiles(images, self.permutations[labels]), labels
