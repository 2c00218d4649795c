"""Crop boxes of positive pairs: drawing them, measuring their overlap, forcing "good" pairs.

A box is ``(x0, y0, x1, y1)`` in fractions of the source image's width and height, so that boxes of images of any
size compare directly; the overlap of two views of one image is their intersection over union (IoU), which is the
same in fractions as in pixels.

The good-pair criterion, ``IoU(box_1, box_2) ≥ min_iou``, is this project's operationalisation of the paper's
"good positive pair" (Addepalli et al., ECCV 2022, Table 2: two crops that show the same content). Overlap of the
two crops is the label-free signal that crop-noise studies use to tell informative positive pairs from false
positives (Purushwalkam & Gupta, NeurIPS 2020, measure it; Peng et al., "Crafting Better Contrastive Views",
CVPR 2022, call pairs that miss the shared object false positives); on object-centred images such as CIFAR-10, two
crops that overlap show the same object. The default threshold, 0.5, is the overlap at which PASCAL VOC counts two
boxes as the same object (Everingham et al., IJCV 2010).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Candidates drawn per sample when a pair is forced to be good (rejection sampling, vectorised).
GOOD_CROP_CANDIDATES = 256


def paired_overlap(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection area of ``a[i]`` and ``b[i]`` and the two areas, for boxes ``(..., 4)`` as ``(x0, y0, x1, y1)``."""
    width = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    height = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return width * height, area_a, area_b


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of ``a[i]`` with ``b[i]`` for boxes ``(..., 4)`` as ``(x0, y0, x1, y1)``."""
    inter, area_a, area_b = paired_overlap(a, b)
    return inter / (area_a + area_b - inter).clamp_min(1e-12)


def crop_to_box(crop: Tensor, image_size: Tensor) -> Tensor:
    """Fractional boxes ``(..., 4)`` of pixel crops ``(..., 4)`` given as ``(left, top, width, height)`` in images
    of ``image_size`` ``(..., 2)`` as ``(width, height)`` (broadcast)."""
    corner = crop[..., :2].double() / image_size
    return torch.cat([corner, corner + crop[..., 2:].double() / image_size], dim=-1).float()


def random_resized_crop_candidates(
    image_height: Tensor, image_width: Tensor, scale: tuple[float, float], ratio: tuple[float, float],
    count: int, generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """``count`` random-resized-crop boxes per image, drawn as torchvision draws one attempt: area fraction
    ``U(scale)``, log aspect ratio ``U(log ratio)``, side lengths rounded to pixels, position uniform.

    Returns ``(left, top, width, height)`` stacked as ``(n, count, 4)`` integer pixels and a ``(n, count)`` mask of
    the candidates that fit inside the image (torchvision retries those that do not).
    """
    n = image_height.shape[0]
    h_img = image_height.view(n, 1).double()
    w_img = image_width.view(n, 1).double()
    area = (h_img * w_img) * torch.empty(n, count, dtype=torch.float64).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n, count, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                                    generator=generator)
    aspect = torch.exp(log_ratio)
    width = torch.round(torch.sqrt(area * aspect))
    height = torch.round(torch.sqrt(area / aspect))
    valid = (width > 0) & (height > 0) & (width <= w_img) & (height <= h_img)
    width, height = torch.minimum(width.clamp_min(1), w_img), torch.minimum(height.clamp_min(1), h_img)
    left = torch.floor(torch.rand(n, count, dtype=torch.float64, generator=generator) * (w_img - width + 1))
    top = torch.floor(torch.rand(n, count, dtype=torch.float64, generator=generator) * (h_img - height + 1))
    return torch.stack([left, top, width, height], dim=-1).long(), valid


def force_good_crops(
    reference: Tensor, image_height: Tensor, image_width: Tensor, scale: tuple[float, float],
    ratio: tuple[float, float], min_iou: float, generator: torch.Generator,
    candidates: int = GOOD_CROP_CANDIDATES,
) -> Tensor:
    """A second crop for each reference crop that overlaps it with IoU ≥ ``min_iou``.

    Draws ``candidates`` crops per image from the same random-resized-crop distribution and keeps the first that
    satisfies the criterion, i.e. a draw from the crop distribution conditioned on being good. When none of them
    does (a tiny reference crop), the reference crop itself is returned (IoU 1), so every forced pair is good.

    Args:
        reference: ``(n, 4)`` pixel crops ``(left, top, width, height)`` of the first view.
    Returns:
        ``(n, 4)`` pixel crops ``(left, top, width, height)``.
    """
    boxes, valid = random_resized_crop_candidates(image_height, image_width, scale, ratio, candidates, generator)
    size = torch.stack([image_width, image_height], dim=-1).double()
    iou = paired_iou(crop_to_box(boxes, size.unsqueeze(1)), crop_to_box(reference, size).unsqueeze(1))
    good = valid & (iou >= min_iou)
    first = torch.where(good.any(dim=1), good.int().argmax(dim=1), torch.full_like(good[:, 0], -1, dtype=torch.long))
    chosen = boxes[torch.arange(len(boxes)), first.clamp_min(0)]
    return torch.where((first >= 0).unsqueeze(-1), chosen, reference.long())


def redraw_some_good(
    crops: Tensor, reference: Tensor, image_height: Tensor, image_width: Tensor, scale: tuple[float, float],
    ratio: tuple[float, float], fraction: float, min_iou: float, generator: torch.Generator,
) -> Tensor:
    """``crops`` ``(n, 4)`` (pixel ``left, top, width, height``) with each one, with probability ``fraction``,
    replaced by a crop that is good with its ``reference`` crop (`force_good_crops`); draws from ``generator`` only,
    so every other augmentation stays that of the unforced run."""
    forced = torch.rand(len(crops), generator=generator) < fraction
    good = force_good_crops(reference, image_height, image_width, scale, ratio, min_iou, generator)
    return torch.where(forced.unsqueeze(1), good, crops.long())
