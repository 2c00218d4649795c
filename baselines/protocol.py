"""The method protocol every base method follows, and the batch it consumes.

`auxssl.AuxWrapper` and the training engine rely only on what is declared here, so a method written
outside this package works with them as long as it exposes the same members.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@dataclass
class Batch:
    """A multi-view SSL batch.

    Attributes:
        views: augmented views, each ``(B, C, H, W)``; the first ``num_global`` are the global crops,
            any further ones are (smaller) local crops for multi-crop methods.
        index: index of every sample ``(B,)`` in the source dataset (not its position in a subset or shard),
            when known.
        label: class label of every sample ``(B,)``, only when revealed (noise control, online probes).
        num_global: how many leading views are global crops.
        positive_weight: optional ``(B,)`` weight of each positive pair (noise control of false positives).
        negative_weight: optional weight of each negative pair (noise control of false negatives; 0 removes the
            pair from contrastive denominators), shaped ``(anchors, candidates)`` of the method's `contrast_sets`:
            ``(B, B)`` in-batch for a single process (SimCLR), the global batch under torch.distributed,
            ``(B, queue size)`` for a queue (MoCo).
        crop_boxes: optional ``(V, B, 4)`` crop box of every view in its source image, ``(x0, y0, x1, y1)`` as
            fractions of the image's width and height (noise control and measurement of false positives).
        task_views: further views for the auxiliary tasks alone (`auxssl.data.Recipe.task_views`, e.g. E-SSL's
            small crop); base methods never read them.
        aug_params: optional augmentation parameters each view was drawn with, ``name → (V, B, …)`` tensor
            (``flip``, ``jitter``, ``grayscale``, ``blur_sigma``, ``solarize``; `auxssl.data.params`), recorded by
            every loader backend; what AugSelf predicts the differences of.
    """

    views: list[Tensor]
    index: Tensor | None = None
    label: Tensor | None = None
    num_global: int = 2
    positive_weight: Tensor | None = None
    negative_weight: Tensor | None = None
    crop_boxes: Tensor | None = None
    aug_params: dict[str, Tensor] | None = None
    task_views: list[Tensor] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.views) == 0:
            raise ValueError("Batch needs at least one view")
        sizes = {v.shape[0] for v in [*self.views, *self.task_views]}
        if len(sizes) != 1:
            raise ValueError(f"all views must hold the same number of samples, got sizes {sorted(sizes)}")
        if not 1 <= self.num_global <= len(self.views):
            raise ValueError(f"num_global={self.num_global} but the batch has {len(self.views)} views")

    @property
    def size(self) -> int:
        """Number of samples (not views) in the batch."""
        return self.views[0].shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move every tensor of the batch to ``device`` (tensors in ``extra`` included)."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(
            views=[v.to(device, non_blocking=non_blocking) for v in self.views],
            index=move(self.index),
            label=move(self.label),
            num_global=self.num_global,
            positive_weight=move(self.positive_weight),
            negative_weight=move(self.negative_weight),
            crop_boxes=move(self.crop_boxes),
            task_views=[v.to(device, non_blocking=non_blocking) for v in self.task_views],
            aug_params=None if self.aug_params is None else {k: v.to(device, non_blocking=non_blocking)
                                                             for k, v in self.aug_params.items()},
            extra={k: v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v
                   for k, v in self.extra.items()},
        )


class ContrastSets(NamedTuple):
    """The dataset indices a contrastive loss compares: every anchor against every candidate (its negatives, apart
    from the anchor's own image). ``Batch.negative_weight`` has shape ``(len(anchors), len(candidates))``; a
    candidate index of -1 is an unused slot (an unwritten queue row)."""

    anchors: Tensor
    candidates: Tensor


def as_batch(batch: Batch | Sequence[Tensor]) -> Batch:
    """Accept either a `Batch` or a plain sequence of views."""
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, Tensor):
        raise TypeError("expected a Batch or a list of views, got a single tensor; pass [view1, view2]")
    return Batch(views=list(batch), num_global=min(2, len(batch)))


@runtime_checkable
class SSLMethod(Protocol):
    """What a joint-embedding SSL method exposes.

    Members:
        backbone: the online encoder mapping images ``(B, C, H, W)`` to pooled features ``(B, D)``.
        forward(batch): returns a dict with the total ``"loss"`` plus named terms and metrics, every value a
            scalar tensor (the engine averages and logs them). The online backbone encodes each view once, in
            view order (one call per view or several views per call): `auxssl.AuxWrapper` hands those features
            to the tasks and the online probe.
        param_groups(): optimiser parameter groups; bias/norm parameters are flagged with
            ``{"weight_decay": 0.0, "lars_exclude": True}`` so the engine can exclude them.
        momentum_pairs(): ``(online, target)`` module pairs updated by EMA (empty for none).

    Optional members the engine and `AuxWrapper` honour when present:
        base_tau: the initial EMA coefficient of the momentum pairs (cosine-scheduled to ``final_tau``).
        final_tau: the EMA coefficient the cosine schedule ends at (1 when absent).
        on_before_optimizer_step(step): a hook run after backward and before the optimiser step.
        on_train_epoch_start(epoch): a hook run before each training epoch (also when resuming mid-epoch).
        contrast_sets(batch): for a loss with negatives, the dataset indices it contrasts (anchors against
            candidates, a `ContrastSets`); the shape ``batch.negative_weight`` must have.
    """

    backbone: nn.Module

    def forward(self, batch: Batch) -> dict[str, Tensor]: ...

    def param_groups(self) -> list[dict[str, Any]]: ...

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]: ...


def missing_protocol_members(obj: object) -> list[str]:
    """Names of `SSLMethod` members that ``obj`` lacks (empty when it follows the protocol)."""
    required = ("backbone", "forward", "param_groups", "momentum_pairs")
    return [name for name in required if not hasattr(obj, name)]
