"""SwAV: Swapping Assignments between Views (Caron et al., NeurIPS 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.base import JointEmbeddingMethod, embedding_std, encode_views
from baselines.distributed import world_size
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
    2048→128, 3000 prototypes, temperature 0.1, Sinkhorn ε=0.05 with 3 iterations. Prototypes are
    L2-normalised before each forward pass.

    Queue (useful for batches below 256): ``queue_length > 0`` keeps past embeddings of each global crop,
    ``queue_length // world_size`` of them per process — one queue of *local* embeddings per process, as in
    the SwAV/EffSSL code and solo-learn. The queue is filled from the first step and appended to the
    Sinkhorn input from epoch ``epoch_queue_starts`` on, once full (solo-learn's semantics; the official code
    starts filling at that epoch, which delays its use by ``queue_length / batch`` steps). The default, 15, is
    the official SwAV default; solo-learn's CIFAR config (ours) uses 50. The engine reports the epoch through
    `on_train_epoch_start`.

    Prototype freezing: the prototypes get no gradient while ``step < freeze_prototypes_steps`` (the official
    ``freeze_prototypes_niters``) or ``epoch < freeze_prototypes_epochs`` (solo-learn's knob).
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
        freeze_prototypes_epochs: int = 0,
        epoch_queue_starts: int = 15,
    ) -> None:
        super().__init__(backbone)
        self.projector = mlp([self.feature_dim, proj_hidden_dim, proj_dim])
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.freeze_prototypes_steps = freeze_prototypes_steps
        self.freeze_prototypes_epochs = freeze_prototypes_epochs
        self.epoch_queue_starts = epoch_queue_starts
        self.epoch = 0
        local_length = queue_length // world_size()
        if queue_length > 0 and local_length == 0:
            raise ValueError(f"queue_length={queue_length} is smaller than the {world_size()} processes")
        self.queues = nn.ModuleList(
            [FeatureQueue(local_length, proj_dim, init="zeros") for _ in range(num_global_crops)]
            if queue_length > 0
            else []
        )

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def on_train_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def on_before_optimizer_step(self, step: int) -> None:
        if step < self.freeze_prototypes_steps or self.epoch < self.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None

    def queue_in_use(self, crop: int) -> bool:
        """Whether crop ``crop``'s queue joins the Sinkhorn input now (from ``epoch_queue_starts``, once full)."""
        return bool(self.queues) and self.epoch >= self.epoch_queue_starts and self.queues[crop].full

    def codes(self, scores: Tensor, crop: int) -> Tensor:
        """Sinkhorn codes of one global crop's scores, with that crop's queue appended when it is in use."""
        if self.queue_in_use(crop):
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
        z = [F.normalize(zi, dim=1) for zi in encode_views([self.backbone, self.projector], batch.views, together=True)]
        scores = [self.prototypes(zi) for zi in z]
        codes = [self.codes(scores[a].detach(), a) for a in range(batch.num_global)]
        loss = swav_loss(scores, codes, self.temperature)
        if self.training:
            for a, queue in zip(range(batch.num_global), self.queues):
                queue.push(z[a].detach().float())
        return {"loss": loss, "stat/z_std": embedding_std(z[0])}
