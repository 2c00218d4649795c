"""MoCo v2: Momentum Contrast (He et al., CVPR 2020; Chen et al., arXiv:2003.04297), as solo-learn's ``mocov2plus``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.base import JointEmbeddingMethod, embedding_std, encode_views
from baselines.distributed import gather_no_grad
from baselines.ema import frozen_copy
from baselines.heads import mlp
from baselines.losses import moco_loss
from baselines.protocol import Batch, ContrastSets, as_batch
from baselines.queue import FeatureQueue


class MoCoV2(JointEmbeddingMethod):
    """MoCo v2 (symmetric), exactly as solo-learn's ``mocov2plus`` that our CIFAR configs copy.

    - Projector ``Linear(D, 2048) → ReLU → Linear(2048, 256)`` (MoCo v2's MLP head: no batch norm), for the
      online and the momentum encoder; embeddings L2-normalised.
    - Two queues, one per view, of ``queue_size`` keys each (solo-learn default 65,536; its CIFAR config
      32,768): ``queues[0]`` holds keys of view 1, ``queues[1]`` keys of view 2.
    - Loss ``(InfoNCE(q1, k2, queues[1]) + InfoNCE(q2, k1, queues[0])) / 2`` at temperature 0.2.
    - Momentum ``τ`` cosine-increased from ``base_tau = 0.99`` to ``final_tau = 0.999``.
    - ``batch.negative_weight`` (noise control), ``(B, queue_size)``, weighs every queued key as a negative of
      every query, in both terms; the queues store the dataset index of each key (`contrast_sets`).
    - Under torch.distributed the keys of every rank are gathered and enqueued, so every rank holds the same
      queues (as in MoCo and solo-learn). Shuffle-BN is not used (nor is it in solo-learn).
    """

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 256,
        temperature: float = 0.2,
        queue_size: int = 65536,
        base_tau: float = 0.99,
        final_tau: float = 0.999,
    ) -> None:
        super().__init__(backbone)
        self.projector = mlp([self.feature_dim, proj_hidden_dim, proj_dim], hidden_norm=False)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.queues = nn.ModuleList([FeatureQueue(queue_size, proj_dim) for _ in range(2)])
        self.temperature = temperature
        self.base_tau = base_tau
        self.final_tau = final_tau

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.target_backbone), (self.projector, self.target_projector)]

    def forward(self, batch: Batch | Sequence[Tensor]) -> dict[str, Tensor]:
        batch = as_batch(batch)
        views = self.check_views(batch)
        q1, q2 = encode_views([self.backbone, self.projector], views)  # moco_loss normalises the queries
        with torch.no_grad():
            k1, k2 = (F.normalize(k, dim=1) for k in encode_views([self.target_backbone, self.target_projector], views))
        negatives = [queue.items.clone() for queue in self.queues]
        weight = batch.negative_weight
        loss = (moco_loss(q1, k2, negatives[1], self.temperature, weight)
                + moco_loss(q2, k1, negatives[0], self.temperature, weight)) / 2
        if self.training:
            index = None if batch.index is None else gather_no_grad(batch.index)
            for queue, keys in zip(self.queues, (k1, k2)):
                queue.push(gather_no_grad(keys.float()), index)
        return {"loss": loss, "stat/z_std": embedding_std(q1)}

    def contrast_sets(self, batch: Batch) -> ContrastSets | None:
        """The local queries against the queued keys (both queues hold keys of the same images, in the same rows)."""
        if batch.index is None:
            return None
        return ContrastSets(batch.index, self.queues[0].index.clone())
