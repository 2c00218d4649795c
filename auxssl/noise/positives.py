"""False positives: injecting them on purpose, and measuring how many positive pairs a batch holds.

A *false positive* is a positive pair that does not show the same content: two views of different images
(injected here with probability ``q``), or two crops of one image that fail the good-pair criterion
(`auxssl.noise.crops`). Only the two global views form the positive pair considered here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from auxssl.noise.crops import paired_iou, paired_overlap
from baselines.protocol import Batch


def inject_false_positives(batch: Batch, probability: float, true_labels: Tensor | None,
                           generator: torch.Generator) -> Tensor:
    """Replace, with ``probability`` per sample, the second view by the second view of another image of the batch
    — of another class where both true labels are known. Modifies ``batch.views[1]`` and the second view's crop
    boxes and augmentation parameters (``batch.crop_boxes[1]``, ``batch.aug_params[…][1]``: they travel with their
    view); returns the ``(B,)`` mask of injected samples
    (a sample without any eligible donor keeps its own view).
    """
    n = batch.size
    cpu = torch.device("cpu")
    chosen = torch.rand(n, generator=generator, device=cpu) < probability
    eligible = ~torch.eye(n, dtype=torch.bool)
    if true_labels is not None:
        labels = true_labels.to(cpu)
        known = (labels[:, None] >= 0) & (labels[None, :] >= 0)
        eligible &= ~(known & (labels[:, None] == labels[None, :]))
    scores = torch.rand(n, n, generator=generator, device=cpu).masked_fill(~eligible, -1.0)
    donor = scores.argmax(dim=1)
    injected = chosen & eligible.any(dim=1)
    if bool(injected.any()):
        rows = injected.nonzero().squeeze(1)
        second = batch.views[1].clone()
        second[rows.to(second.device)] = batch.views[1][donor[rows].to(second.device)]
        batch.views[1] = second
        if batch.crop_boxes is not None:
            boxes = batch.crop_boxes.clone()
            boxes[1, rows.to(boxes.device)] = batch.crop_boxes[1, donor[rows].to(boxes.device)]
            batch.crop_boxes = boxes
        if batch.aug_params is not None:  # the donor view's augmentation parameters travel with it too
            params = {}
            for name, value in batch.aug_params.items():
                value = value.clone()
                value[1, rows.to(value.device)] = batch.aug_params[name][1, donor[rows].to(value.device)]
                params[name] = value
            batch.aug_params = params
    return injected


def false_positive_rate(injected: Tensor | None, crop_boxes: Tensor | None, min_iou: float) -> Tensor | None:
    """``noise/fp_rate``: the share of positive pairs that are injected or whose crops (``crop_boxes`` of the two
    global views, ``(V, B, 4)``) overlap with IoU below ``min_iou``; None when neither is known."""
    if injected is None and crop_boxes is None:
        return None
    false = torch.zeros(crop_boxes.shape[1] if injected is None else injected.shape[0], dtype=torch.bool)
    if injected is not None:
        false |= injected.cpu()
    if crop_boxes is not None:
        false |= paired_iou(crop_boxes[0], crop_boxes[1]).cpu() < min_iou
    return false.float().mean()


def crop_overlap_rates(crop_boxes: Tensor) -> dict[str, Tensor]:
    """Overlap of the two global crops of each positive pair, separating different *content* from different
    *scale* (IoU alone mixes them: a small crop inside a large one has a low IoU yet shows the same content):

    - ``noise/crop_iou_low``: IoU < 0.5 (the good-crop control's criterion, ``good_crop_iou``);
    - ``noise/crop_ios_low``: intersection over the *smaller* crop < 0.5 — less than half of the smaller crop is in
      the other: different content, the false-positive reading;
    - ``noise/crop_contained``: the smaller crop lies entirely inside the larger (same content, other scale);
    - ``noise/crop_disjoint``: no overlap at all.
    """
    inter, area_a, area_b = paired_overlap(crop_boxes[0], crop_boxes[1])
    over_smaller = inter / torch.minimum(area_a, area_b).clamp_min(1e-12)
    iou = inter / (area_a + area_b - inter).clamp_min(1e-12)
    return {
        "noise/crop_iou_low": (iou < 0.5).float().mean(),
        "noise/crop_ios_low": (over_smaller < 0.5).float().mean(),
        "noise/crop_contained": (over_smaller >= 1 - 1e-6).float().mean(),
        "noise/crop_disjoint": (inter <= 0).float().mean(),
    }
