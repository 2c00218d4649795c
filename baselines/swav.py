"""SwAV: Swapping Assignments between Views (Caron et al., NeurIPS 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.base import JointEmbeddingMethod, embedding_std, encode_views
from baselines.heads import mlp
from baselines.losses import sinkhorn_knopp, swav_loss
from baselines.protocol import Batch, as_batch
from baselines.queue import FeatureQueue


class SwAV(JointEmbeddingMethod):
    """SwAV: online clustering with equipartitioned (Sinkhorn-Knopp) codes and swapped prediction.

    Supports multi-crop: the first ``batch.num_global`` views are the global crops codes are computed for;
    every view (local crops included) predicts the codes of the other global views. Views of one resolution
    share one backbone call.

    Defaults for CIFAR (the SwAV repository's small-batch advice, solo-learn's CIFAR recipe): projector
    2048→128, 3000 prototypes, temperature 0.1, Sinkhorn ε=0.05 with 3 iterations. ``queue_length > 0``
    keeps that many past embeddings per global crop and appends them to the Sinkhorn input once the queue
    is full (useful for batches below 256). ``freeze_prototypes_steps`` drops the prototypes' gradient during
    the first steps (the engine calls `on_before_optimizer_step`). Prototypes are L2-normalised before each
    forward pass.
    """

    num_views = None

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        num_prototypes: int = 3000,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        queue_length: int = 0,
        num_global_crops: int = 2,
        freeze_prototypes_steps: int = 0,
    ) -> None:
        super().__init__(backbone)
        self.projector = mlp([self.feature_dim, proj_hidden_dim, proj_dim])
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.freeze_prototypes_steps = freeze_prototypes_steps
        self.queues = nn.ModuleList(
            [FeatureQueue(queue_length, proj_dim, init="zeros") for _ in range(num_global_crops)]
            if queue_length > 0
            else []
        )

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def on_before_optimizer_step(self, step: int) -> None:
        if step < self.freeze_prototypes_steps:
            self.prototypes.weight.grad = None

    def codes(self, scores: Tensor, crop: int) -> Tensor:
        """Sinkhorn codes of one global crop's scores, using that crop's queue once it is full."""
        if self.queues and self.queues[crop].full:
            queue_scores = self.prototypes(self.queues[crop].items)
            return sinkhorn_knopp(torch.cat([scores, queue_scores]), self.epsilon, self.sinkhorn_iterations)[
                : scores.shape[0]
            ]
        return sinkhorn_knopp(scores, self.epsilon, self.sinkhorn_iterations)

    def forward(self, batch: Batch | Sequence[Tensor]) -> dict[str, Tensor]:
        batch = as_batch(batch)
        if self.queues and batch.num_global > len(self.queues):
            raise ValueError(f"the batch has {batch.num_global} global crops but SwAV has {len(self.queues)} queues")
        self.normalize_prototypes()
        z = [F.normalize(zi, dim=1) for zi in encode_views([self.backbone, self.projector], batch.views)]
        scores = [self.prototypes(zi) for zi in z]
        codes = [self.codes(scores[a].detach(), a) for a in range(batch.num_global)]
        loss = swav_loss(scores, codes, self.temperature)
        if self.training:
            for a, queue in zip(range(batch.num_global), self.queues):
                queue.push(z[a].detach().float())
        return {"loss": loss, "stat/z_std": embedding_std(z[0])}
