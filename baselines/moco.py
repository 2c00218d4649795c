"""MoCo v2: Momentum Contrast (He et al., CVPR 2020; Chen et al., arXiv:2003.04297)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from baselines.base import JointEmbeddingMethod, embedding_std, encode_views
from baselines.distributed import gather_no_grad
from baselines.ema import frozen_copy
from baselines.heads import mlp
from baselines.losses import moco_loss
from baselines.protocol import Batch, as_batch
from baselines.queue import FeatureQueue


class MoCoV2(JointEmbeddingMethod):
    """MoCo v2: queries contrast against momentum-encoder keys and a queue of past keys.

    Defaults for CIFAR (the MoCo authors' CIFAR-10 demo and solo-learn): MLP projector 2048→128, temperature
    0.2 (MoCo v2), queue of 4096 keys, ``base_tau=0.99``, symmetric loss (both views serve as queries; the
    two InfoNCE terms are averaged and both key sets are enqueued). Shuffle-BN is not used; the projector's
    batch norm is what prevents the information leak it addressed (as in MoCo v3 and solo-learn).
    """

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        temperature: float = 0.2,
        queue_size: int = 4096,
        base_tau: float = 0.99,
        symmetric: bool = True,
    ) -> None:
        super().__init__(backbone)
        self.projector = mlp([self.feature_dim, proj_hidden_dim, proj_dim])
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.queue = FeatureQueue(queue_size, proj_dim)
        self.temperature = temperature
        self.base_tau = base_tau
        self.symmetric = symmetric

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.target_backbone), (self.projector, self.target_projector)]

    def forward(self, batch: Batch | Sequence[Tensor]) -> dict[str, Tensor]:
        batch = as_batch(batch)
        views = self.check_views(batch)
        q1, q2 = encode_views([self.backbone, self.projector], views)
        with torch.no_grad():
            k1, k2 = encode_views([self.target_backbone, self.target_projector], views)
        negatives = self.queue.items.clone()
        if self.symmetric:
            loss = (moco_loss(q1, k2, negatives, self.temperature) + moco_loss(q2, k1, negatives, self.temperature)) / 2
            keys, index = torch.cat([k1, k2]), batch.index.repeat(2) if batch.index is not None else None
        else:
            loss = moco_loss(q1, k2, negatives, self.temperature)
            keys, index = k2, batch.index
        if self.training:
            self.queue.push(
                nn.functional.normalize(gather_no_grad(keys.float()), dim=1),
                None if index is None else gather_no_grad(index),
            )
        return {"loss": loss, "stat/z_std": embedding_std(q1)}
