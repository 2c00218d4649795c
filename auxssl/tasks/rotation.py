"""Rotation prediction (Gidaris et al., ICLR 2018) as the auxiliary task of Addepalli et al. (ECCV 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from auxssl.tasks.base import ClassificationPretextTask


def rotate(images: Tensor, k: Tensor) -> Tensor:
    """Rotate each image ``images[i]`` by ``k[i] · 90°`` counter-clockwise (`torch.rot90` on the last two dims).

    Batched: every rotation is computed for the whole batch and selected per image, with no host sync.
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(images.shape[-2:])}")
    k = k.view(-1, *([1] * (images.dim() - 1)))
    out = images
    for quarter_turns in (1, 2, 3):
        out = torch.where(k == quarter_turns, torch.rot90(images, quarter_turns, dims=(-2, -1)), out)
    return out


class RotationPrediction(ClassificationPretextTask):
    """Predict the rotation (0°, 90°, 180°, 270°) of rotated copies of the views.

    Rotation prediction assumes that an image's orientation is not already arbitrary: on data whose rotated
    copies occur naturally (aerial and satellite images, microscopy, textures; E-SSL issue #3) the task cannot be
    solved, its accuracy stays near chance (25 %) whatever the representation, and its gradient is noise rather
    than signal. A rotation accuracy near chance on such data says nothing about the features; prefer another
    task (jigsaw, AugSelf) there.

    Loss, as the official code computes it (EffSSL ``main_swav_rotnet.py``: ``CE(rot_pred1, t1) +
    CE(rot_pred2, t2)``): ``Σ_m (1/B) Σ_i CE(h(f(rot_k(x_i^m))), k_i^m)``, the sum over the selected views of
    each view's mean cross-entropy (2·ln 4 ≈ 2.77 at chance with two views), weighted by ``weight``
    (λ = 0.1, the official ``rot_wt``) in `AuxWrapper`. Each view's rotated copies get their own backbone
    call (per-view batch-norm statistics, as officially); ``batch_views=True`` batches them into one call.

    Args:
        mode: ``"random"`` draws one k ∈ {0, 1, 2, 3} per image and view (the paper);
            ``"all"`` feeds all four rotations of every selected view: an E-SSL-style variant on the base method's
            views with this task's head; E-SSL itself (a separate small crop, a LayerNorm head) is `ESSLRotation`.
        views, size, hidden_dim, generator, batch_views: see `ClassificationPretextTask`.
    """

    name = "rotation"

    def __init__(
        self,
        weight: float = 0.1,
        mode: str = "random",
        views: Sequence[int] = (0, 1),
        size: int | None = None,
        hidden_dim: int | None = None,
        generator: torch.Generator | None = None,
        batch_views: bool = False,
    ) -> None:
        if mode not in ("random", "all"):
            raise ValueError(f"rotation mode must be 'random' or 'all', got {mode!r}")
        super().__init__(4, weight, views, size, hidden_dim, generator, batch_views)
        self.mode = mode

    def make_inputs(self, images: Tensor) -> tuple[Tensor, Tensor]:
        n = images.shape[0]
        if self.mode == "all":
            rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
            return rotated, torch.arange(4, device=images.device).repeat_interleave(n)
        k = self.random_labels(n, images.device)
        return rotate(images, k), k
