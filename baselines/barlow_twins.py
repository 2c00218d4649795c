"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction (Zbontar et al., ICML 2021)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from baselines.base import JointEmbeddingMethod, embedding_std, encode_views
from baselines.distributed import gather
from baselines.heads import mlp
from baselines.losses import barlow_twins_loss
from baselines.protocol import Batch, as_batch


class BarlowTwins(JointEmbeddingMethod):
    """Barlow Twins: drive the cross-correlation of the two views' embeddings towards the identity.

    Defaults for CIFAR (solo-learn's recipe): a 3-layer projector 2048-2048-2048, ``lambd=5e-3`` (the
    paper's 0.0051). ``scale_loss`` multiplies the loss (the official code's ``scale-loss``; 1 keeps the
    paper's eq. 1). The cross-correlation uses the global batch under torch.distributed.
    """

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 2048,
        lambd: float = 5e-3,
        scale_loss: float = 1.0,
    ) -> None:
        super().__init__(backbone)
        self.projector = mlp([self.feature_dim, proj_hidden_dim, proj_hidden_dim, proj_dim])
        self.lambd = lambd
        self.scale_loss = scale_loss

    def forward(self, batch: Batch | Sequence[Tensor]) -> dict[str, Tensor]:
        batch = as_batch(batch)
        z1, z2 = encode_views([self.backbone, self.projector], self.check_views(batch))
        loss = self.scale_loss * barlow_twins_loss(gather(z1), gather(z2), self.lambd)
        return {"loss": loss, "stat/z_std": embedding_std(z1)}
