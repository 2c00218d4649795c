"""False negatives: removing same-class negatives, and measuring how many a loss contrasts against.

A *false negative* is a negative pair whose two images share a class: the loss pushes apart what a classifier
should keep together. With the labels of some images revealed, false-negative elimination (Huynh et al., "Boosting
Contrastive Self-Supervised Learning with False Negative Cancellation", WACV 2022; Addepalli et al., ECCV 2022,
Table 1) drops a negative from the denominator when the anchor and the negative are both revealed and share a class.
"""

from __future__ import annotations

import torch
from torch import Tensor


def lookup(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` with -1 wherever ``index`` is -1 (unknown image)."""
    return torch.where(index >= 0, table[index.clamp_min(0)], torch.full_like(index, -1))


def same_class_weight(anchor_labels: Tensor, candidate_labels: Tensor) -> Tensor:
    """``(A, K)`` negative weights: 0 where anchor and candidate are both revealed (label ≥ 0) and share a class,
    1 elsewhere."""
    same = (anchor_labels[:, None] == candidate_labels[None, :]) & (anchor_labels[:, None] >= 0)
    return (~same).float()


def false_negative_rates(
    anchors: Tensor, candidates: Tensor, true_labels: Tensor, weight: Tensor | None = None
) -> dict[str, Tensor]:
    """The share of negative pairs whose two images share a true class.

    Pairs of an image with itself (the positive, or a stale copy of the anchor in a queue) and pairs involving an
    image without a true label are not counted. ``noise/fn_rate_raw`` counts every remaining pair;
    ``noise/fn_rate`` weighs each by its ``weight`` in the loss (0 = removed), i.e. the rate among the negatives
    the loss actually uses; ``noise/fn_removed`` is the share of the false-negative pairs the weights remove (the
    intervention's real strength: revealing a fraction p of the images removes about p² of them). NaN when no pair
    can be counted (left out of the logged means).
    """
    a, c = lookup(true_labels, anchors), lookup(true_labels, candidates)
    counted = (a[:, None] >= 0) & (c[None, :] >= 0) & (anchors[:, None] != candidates[None, :])
    same = (a[:, None] == c[None, :]) & counted
    counted_f, same_f = counted.float(), same.float()
    # NaN when no pair can be counted (left out of the logged means), decided on the device: no host sync
    rates = {"noise/fn_rate_raw": same_f.sum() / counted_f.sum()}
    used = counted_f if weight is None else counted_f * weight.float()
    rates["noise/fn_rate"] = torch.where(counted.any(), (same_f * used).sum() / used.sum().clamp_min(1e-12),
                                         float("nan"))
    removed = torch.zeros_like(same_f) if weight is None else same_f * (1 - weight.float())
    rates["noise/fn_removed"] = removed.sum() / same_f.sum()  # NaN without false negatives
    return rates


def random_pair_weight(anchor_labels: Tensor, candidate_labels: Tensor, fraction: float,
                       generator: torch.Generator) -> Tensor:
    """``(A, K)`` negative weights removing each false-negative pair (same true class) with probability
    ``fraction``: the "fraction of false negatives removed" reading of the paper's Table 1."""
    same = (anchor_labels[:, None] == candidate_labels[None, :]) & (anchor_labels[:, None] >= 0)
    drawn = torch.rand(same.shape, generator=generator, device=generator.device).to(same.device) < fraction
    return (~(same & drawn)).float()
