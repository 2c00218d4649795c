"""SimSiam: Exploring Simple Siamese Representation Learning (Chen & He, CVPR 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from baselines.base import JointEmbeddingMethod, embedding_std, encode_views, split_weight_decay
from baselines.heads import mlp
from baselines.losses import simsiam_loss
from baselines.protocol import Batch, as_batch


class SimSiam(JointEmbeddingMethod):
    """SimSiam: a predictor maps one view's projection to the other's, with a stop-gradient.

    Loss: ``(simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2`` (paper, eq. 2), range [-1, 1].

    Defaults follow the paper's CIFAR setting (sec. 4 / appendix D): a 2-layer projector with 2048-d output
    ending in an affine-free BN, a bottleneck predictor 2048→512→2048. ``fix_predictor_lr`` marks the
    predictor's parameter groups ``fixed_lr=True`` (the paper's ImageNet trick) for the engine.
    """

    def __init__(
        self,
        backbone: nn.Module,
        proj_dim: int = 2048,
        pred_hidden_dim: int = 512,
        fix_predictor_lr: bool = False,
    ) -> None:
        super().__init__(backbone)
        self.projector = mlp([self.feature_dim, proj_dim, proj_dim], last_norm="bn_noaffine")
        self.predictor = mlp([proj_dim, pred_hidden_dim, proj_dim])
        self.fix_predictor_lr = fix_predictor_lr

    def param_groups(self) -> list[dict[str, Any]]:
        rest = ((n, p) for n, p in self.named_parameters() if not n.startswith("predictor."))
        predictor_extra = {"fixed_lr": True} if self.fix_predictor_lr else {}
        return split_weight_decay(rest) + split_weight_decay(self.predictor.named_parameters(), **predictor_extra)

    def forward(self, batch: Batch | Sequence[Tensor]) -> dict[str, Tensor]:
        batch = as_batch(batch)
        z1, z2 = encode_views([self.backbone, self.projector], self.check_views(batch))
        p1, p2 = encode_views(self.predictor, [z1, z2])
        w = batch.positive_weight
        loss = (simsiam_loss(p1, z2, w) + simsiam_loss(p2, z1, w)) / 2
        return {"loss": loss, "stat/z_std": embedding_std(z1)}
