"""The augmentation parameters each view was drawn with, recorded by every loader backend (``Batch.aug_params``).

Every recorded parameter has one entry per view and sample, ``(V, B, …)``; a view whose recipe lacks a step, or
a sample the step was not applied to, holds the step's identity value, so that differences between views mean
the same whatever the recipe (AugSelf predicts them):

- ``flip`` ``(V, B)`` bool: horizontally flipped;
- ``jitter`` ``(V, B, 4)``: colour-jitter brightness, contrast and saturation factors and hue shift, as drawn
  (torchvision's and kornia's semantics; identity ``(1, 1, 1, 0)``);
- ``grayscale`` ``(V, B)`` bool; ``blur_sigma`` ``(V, B)``: the Gaussian blur's σ (0: not blurred);
- ``solarize`` ``(V, B)`` bool.

The crop of each view travels separately, as ``Batch.crop_boxes``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: The recorded parameters and the value of a view or sample without the step.
IDENTITY: dict[str, tuple[float, ...] | bool | float] = {
    "flip": False, "jitter": (1.0, 1.0, 1.0, 0.0), "grayscale": False, "blur_sigma": 0.0, "solarize": False,
}


def identity_params(n: int, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """The parameters of ``n`` samples to which no step was applied."""
    out = {}
    for name, value in IDENTITY.items():
        if isinstance(value, bool):
            out[name] = torch.full((n,), value, dtype=torch.bool, device=device)
        elif isinstance(value, tuple):
            out[name] = torch.tensor(value, device=device).expand(n, len(value)).clone()
        else:
            out[name] = torch.full((n,), value, device=device)
    return out


def stack_views(views: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Per-view parameter dicts (each ``(B, …)``) as one dict of ``(V, B, …)`` tensors."""
    return {name: torch.stack([view[name] for view in views]) for name in IDENTITY}
