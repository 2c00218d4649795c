"""SimCLR: A Simple Framework for Contrastive Learning (Chen et al., ICML 2020)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from baselines.base import JointEmbeddingMethod, embedding_std, encode_views
from baselines.distributed import gather, gather_no_grad, is_distributed
from baselines.heads import mlp
from baselines.losses import nt_xent_loss
from baselines.protocol import Batch, ContrastSets, as_batch


class SimCLR(JointEmbeddingMethod):
    """SimCLR: NT-Xent between the projections of two views, the other samples as negatives.

    Defaults follow the paper's CIFAR-10 setting (appendix B.9): temperature 0.5, a 2-layer projector with
    128-d output (hidden 2048, with batch norm). Under torch.distributed the negatives span the global batch
    (every process computes the loss of the gathered batch), and ``batch.negative_weight`` (noise control) is then
    the ``(global B, global B)`` weight of that gathered batch, in rank order.
    """

    def __init__(
        self, backbone: nn.Module, proj_hidden_dim: int = 2048, proj_dim: int = 128, temperature: float = 0.5
    ) -> None:
        super().__init__(backbone)
        self.projector = mlp([self.feature_dim, proj_hidden_dim, proj_dim])
        self.temperature = temperature

    def forward(self, batch: Batch | Sequence[Tensor]) -> dict[str, Tensor]:
        batch = as_batch(batch)
        z1, z2 = encode_views([self.backbone, self.projector], self.check_views(batch))
        if is_distributed():
            z1, z2 = gather(z1), gather(z2)
        loss = nt_xent_loss(z1, z2, self.temperature, batch.negative_weight)
        return {"loss": loss, "stat/z_std": embedding_std(z1)}

    def contrast_sets(self, batch: Batch) -> ContrastSets | None:
        """In-batch negatives: every sample of the (global) batch against every other."""
        if batch.index is None:
            return None
        index = gather_no_grad(batch.index) if is_distributed() else batch.index
        return ContrastSets(index, index)
