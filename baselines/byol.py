"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from baselines.base import JointEmbeddingMethod, embedding_std, encode_views
from baselines.ema import frozen_copy
from baselines.heads import mlp
from baselines.losses import byol_loss
from baselines.protocol import Batch, as_batch


class BYOL(JointEmbeddingMethod):
    """BYOL: an online network predicts the projection of a momentum (EMA) target network.

    Loss: the symmetrised ``byol_loss(p1, z2') + byol_loss(p2, z1')`` (paper, eq. 2), range [0, 8].

    Defaults are the usual CIFAR settings (solo-learn's CIFAR recipe): projector 2-layer MLP 4096→256,
    predictor 2-layer MLP 4096→256, ``base_tau=0.99`` cosine-increased to 1 (the paper uses 0.996 on
    ImageNet). The target network never receives gradients.
    """

    base_tau: float = 0.99

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        pred_hidden_dim: int = 4096,
        base_tau: float = 0.99,
    ) -> None:
        super().__init__(backbone)
        self.projector = mlp([self.feature_dim, proj_hidden_dim, proj_dim])
        self.predictor = mlp([proj_dim, pred_hidden_dim, proj_dim])
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.base_tau = base_tau

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.target_backbone), (self.projector, self.target_projector)]

    def forward(self, batch: Batch | Sequence[Tensor]) -> dict[str, Tensor]:
        batch = as_batch(batch)
        views = self.check_views(batch)
        z = encode_views([self.backbone, self.projector], views)
        p = encode_views(self.predictor, z)
        with torch.no_grad():
            target = encode_views([self.target_backbone, self.target_projector], views)
        w = batch.positive_weight
        loss = byol_loss(p[0], target[1], w) + byol_loss(p[1], target[0], w)
        return {"loss": loss, "stat/z_std": embedding_std(z[0])}
