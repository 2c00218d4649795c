"""E-SSL's rotation task exactly (Dangovski et al., ICLR 2022, "Equivariant Contrastive Learning"; rdangovs/essl,
MIT): the four rotations of a separate small crop, all in one batch, scored by a LayerNorm MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.losses import at_least_float32
from baselines.protocol import Batch


def four_rotations(images: Tensor) -> tuple[Tensor, Tensor]:
    """``(4B, C, H, W)`` images and labels: every image at 0°, 90°, 180°, 270° in this order of blocks, as E-SSL's
    ``rotate_images`` builds them (90°: flip the width then swap the axes; 180°: flip both; 270°: swap then flip
    the width) — counter-clockwise quarter turns, `torch.rot90` on the last two dims."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(images.shape[-2:])}")
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
    return rotated, torch.arange(4, device=images.device).repeat_interleave(len(images))


def layer_norm_head(feature_dim: int, hidden_dim: int = 2048, num_classes: int = 4) -> nn.Sequential:
    """E-SSL's CIFAR rotation predictor: ``Linear → LayerNorm → ReLU`` twice, then ``Linear(num_classes)``."""
    return nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, num_classes))


class ESSLRotation(nn.Module):
    """E-SSL's four-fold rotation prediction, as its official CIFAR code computes it: a *separate* crop of each
    image (``Batch.task_views``; the ``essl`` recipe draws it: ``RandomResizedCrop(16, scale=(0.2, 1))`` plus the
    main views' flip, jitter and grayscale), all four rotations of it in one backbone call (batch-norm statistics
    over the 4B copies), the LayerNorm head ``D → 2048 → 2048 → 4``, the mean cross-entropy over the 4B copies,
    λ = 0.4 (the paper's CIFAR-10 SimCLR setting).

    This differs from `RotationPrediction` ``mode="all"``, which rotates the base method's two views (optionally
    resized) and uses the batch-norm MLP head: an E-SSL-style variant, not E-SSL.

    Args:
        weight: λ.
        view: which task view to rotate.
        hidden_dim: the head's width (2048).
    """

    name = "essl"

    def __init__(self, weight: float = 0.4, view: int = 0, hidden_dim: int = 2048) -> None:
        super().__init__()
        self.weight, self.view, self.hidden_dim = float(weight), view, hidden_dim
        self.head: nn.Module | None = None

    def build(self, feature_dim: int) -> None:
        if self.head is None:
            self.head = layer_norm_head(feature_dim, self.hidden_dim)

    def forward(self, backbone: nn.Module, batch: Batch) -> dict[str, Tensor]:
        if self.head is None:
            raise RuntimeError("ESSLRotation.build(feature_dim) must be called before forward")
        if len(batch.task_views) <= self.view:
            raise ValueError(f"essl rotates a separate small crop (task view {self.view}) and the batch has "
                             f"{len(batch.task_views)} task views: use data.recipe=essl (E-SSL's views) or a recipe "
                             "with task_views")
        images, labels = four_rotations(batch.task_views[self.view])
        logits = at_least_float32(self.head(backbone(images)))
        correct = logits.detach().argmax(dim=1) == labels
        return {"loss": F.cross_entropy(logits, labels), "acc": correct.float().mean()}
