"""Shared plumbing of the base methods: encoding views, parameter groups, momentum pairs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.backbones import feature_dim
from baselines.ema import ema_update_pairs_
from baselines.protocol import Batch


def split_weight_decay(named_params: Iterable[tuple[str, nn.Parameter]], **extra: Any) -> list[dict[str, Any]]:
    """Split trainable parameters into a regular group and a bias/norm group.

    The second group (every parameter with at most one dimension: biases, BN/LN scales and shifts) is marked
    ``weight_decay=0`` and ``lars_exclude=True``, as in SimCLR/SwAV/SEER's LARS setup. ``extra`` keys are
    added to both groups. Empty groups are dropped.
    """
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, **extra},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True, **extra},
    ]
    return [g for g in groups if g["params"]]


def encode_views(encoder: nn.Module | Sequence[nn.Module], views: Sequence[Tensor],
                 together: bool = False) -> list[Tensor]:
    """Run ``views`` through ``encoder`` (a module, or modules applied in turn).

    By default each view gets its own call, so batch norms normalise each view with its own statistics, as in
    BYOL's official code and solo-learn (whose CIFAR recipes the configs copy); on CPU it is also faster than one
    call on the concatenated views. ``together=True`` makes one call per run of consecutive same-resolution views
    (SwAV's official multi-crop forward).
    """
    modules = [encoder] if isinstance(encoder, nn.Module) else list(encoder)
    outputs: list[Tensor] = []
    start = 0
    while start < len(views):
        end = start + 1
        while together and end < len(views) and views[end].shape[1:] == views[start].shape[1:]:
            end += 1
        out = torch.cat(list(views[start:end])) if end - start > 1 else views[start]
        for module in modules:
            out = module(out)
        outputs.extend(out.chunk(end - start) if end - start > 1 else [out])
        start = end
    return outputs


@torch.no_grad()
def embedding_std(z: Tensor) -> Tensor:
    """Collapse monitor: mean per-dimension std of L2-normalised embeddings times sqrt(D).

    About 1 for embeddings spread over the sphere, near 0 when they collapse to a point (Chen & He 2021, fig. 2).
    """
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean() * z.shape[1] ** 0.5


class JointEmbeddingMethod(nn.Module):
    """Base class of the methods in `baselines`; implements the `SSLMethod` protocol's plumbing.

    Subclasses build their heads in ``__init__`` and implement ``forward(batch) -> dict``.
    """

    #: Initial EMA coefficient of the momentum pairs (None when the method has none).
    base_tau: float | None = None
    #: Final EMA coefficient reached by the cosine schedule (1 in BYOL; 0.999 in solo-learn's MoCo v2+).
    final_tau: float = 1.0
    #: How many views the method consumes (None: any number, e.g. multi-crop).
    num_views: int | None = 2

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim(backbone)

    def param_groups(self) -> list[dict[str, Any]]:
        return split_weight_decay(self.named_parameters())

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return []

    def momentum_update(self, tau: float) -> None:
        """EMA-update every target network of `momentum_pairs` with coefficient ``tau``."""
        ema_update_pairs_(self.momentum_pairs(), tau)

    def check_views(self, batch: Batch) -> list[Tensor]:
        if self.num_views is not None and len(batch.views) != self.num_views:
            raise ValueError(
                f"{type(self).__name__} uses exactly {self.num_views} views per sample, got {len(batch.views)}"
            )
        return batch.views
