"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce & LeCun, ICLR 2022)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from baselines.base import JointEmbeddingMethod, embedding_std, encode_views
from baselines.distributed import gather
from baselines.heads import mlp
from baselines.losses import vicreg_terms
from baselines.protocol import Batch, as_batch


class VICReg(JointEmbeddingMethod):
    """VICReg: invariance (MSE) plus variance and covariance regularisers on each branch.

    Defaults: the paper's coefficients 25/25/1 and, for CIFAR, a 3-layer projector 2048-2048-2048 (solo-learn;
    the paper uses 8192 on ImageNet). Every term uses the global batch under torch.distributed.
    """

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 2048,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
    ) -> None:
        super().__init__(backbone)
        self.projector = mlp([self.feature_dim, proj_hidden_dim, proj_hidden_dim, proj_dim])
        self.sim_coeff, self.std_coeff, self.cov_coeff = sim_coeff, std_coeff, cov_coeff

    def forward(self, batch: Batch | Sequence[Tensor]) -> dict[str, Tensor]:
        batch = as_batch(batch)
        z1, z2 = encode_views([self.backbone, self.projector], self.check_views(batch))
        invariance, variance, covariance = vicreg_terms(gather(z1), gather(z2))
        loss = self.sim_coeff * invariance + self.std_coeff * variance + self.cov_coeff * covariance
        return {
            "loss": loss,
            "loss/invariance": invariance,
            "loss/variance": variance,
            "loss/covariance": covariance,
            "stat/z_std": embedding_std(z1),
        }
