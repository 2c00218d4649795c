"""AugSelf (Lee et al., NeurIPS 2021, "Improving Transferability of Representations via Augmentation-Aware
Self-Supervision"): predict how the two views' augmentations differ, from the base method's own features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auxssl.data.recipes import Recipe
from baselines.heads import mlp
from baselines.losses import at_least_float32
from baselines.protocol import Batch

#: The colour jitter the targets are normalised by when no recipe is given (brightness, contrast, saturation, hue).
DEFAULT_JITTER = (0.4, 0.4, 0.4, 0.1)


def crop_parameters(boxes: Tensor, flipped: Tensor) -> Tensor:
    """``(B, 4)`` crop parameters of one view, as AugSelf regresses them: the crop's centre ``(y, x)`` and size
    ``(h, w)`` as fractions of the image, from ``(x0, y0, x1, y1)`` boxes; a horizontally flipped view's ``x`` is
    mirrored (``1 − x``: where the centre appears in the flipped image)."""
    x = (boxes[:, 0] + boxes[:, 2]) / 2
    x = torch.where(flipped, 1 - x, x)
    y = (boxes[:, 1] + boxes[:, 3]) / 2
    return torch.stack([y, x, boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], dim=1)


def colour_parameters(jitter: Tensor, strength: Sequence[float]) -> Tensor:
    """``(B, 4)`` colour parameters of one view: each jitter factor's deviation from identity over the width of
    its range (``(f − 1) / 2s`` for brightness, contrast, saturation; ``h / 2s`` for hue), 0 where not jittered
    (or where a strength is 0)."""
    identity = jitter.new_tensor([1.0, 1.0, 1.0, 0.0])
    width = 2 * jitter.new_tensor(strength)
    return torch.where(width > 0, (jitter - identity) / width.clamp(min=1e-12), 0.0)


class AugSelf(nn.Module):
    """Regress the difference of the two views' augmentation parameters from ``concat(f(x1), f(x2))``.

    As the paper and its official code (hankook/AugSelf, ``SSObjective``; read for facts only, it has no licence):
    one MLP per parameter group on the *base method's* features of the two global views (no backbone pass of its
    own: ``uses_features``), ``2D → 512 → 512 → n`` with batch norm, symmetric (the batch holds both
    ``[f1, f2] → ω1 − ω2`` and ``[f2, f1] → ω2 − ω1``); ``crop`` (centre and size difference, 4) and ``colour``
    (the four jitter factors normalised by their ranges, 4) by MSE of ``tanh`` of the head's output, ``flip``
    (whether both views are flipped alike, 1) by binary cross-entropy. The task loss is
    ``crop · L_crop + colour · L_colour + flip · L_flip``; the paper's CIFAR/STL-10 setting is crop = colour = 1,
    flip off (0), λ (``weight``) = 1. One deliberate difference: each view's crop centre is mirrored by *its own*
    flip; the official ``extract_diff`` mirrors the second view's with the first view's flag.

    Args:
        weight: λ, the weight of the task loss.
        crop, colour, flip: the weight of each parameter group (0 drops it and its head).
        recipe: the data recipe, whose first view's jitter strengths normalise the colour targets (default: 0.4,
            0.4, 0.4, 0.1); the trainer passes it (``takes_recipe``).
        hidden_dim: the heads' width (512 as the official code).
        views: the two views whose features are compared.
    """

    name = "augself"
    uses_features = True
    takes_recipe = True

    def __init__(self, weight: float = 1.0, crop: float = 1.0, colour: float = 1.0, flip: float = 0.0,
                 recipe: Recipe | None = None, hidden_dim: int = 512, views: Sequence[int] = (0, 1)) -> None:
        super().__init__()
        self.weight = float(weight)
        self.groups = {name: float(w) for name, w in (("crop", crop), ("colour", colour), ("flip", flip)) if w > 0}
        if not self.groups:
            raise ValueError("augself needs at least one of crop, colour, flip with a positive weight")
        if len(views) != 2:
            raise ValueError(f"augself compares two views, got views={list(views)}")
        self.views = tuple(views)
        self.jitter = tuple(recipe.views[self.views[0]].jitter) if recipe is not None else DEFAULT_JITTER
        self.hidden_dim = hidden_dim
        self.heads: nn.ModuleDict | None = None

    def build(self, feature_dim: int) -> None:
        if self.heads is None:
            outputs = {"crop": 4, "colour": 4, "flip": 1}
            self.heads = nn.ModuleDict({name: mlp([2 * feature_dim, self.hidden_dim, self.hidden_dim, outputs[name]])
                                        for name in self.groups})

    def targets(self, batch: Batch) -> dict[str, Tensor]:
        """``ω1 − ω2`` of every group (flip: 1 where both views are flipped alike), ``(B, n)``."""
        first, second = self.views
        params = batch.aug_params
        if params is None:
            raise ValueError("augself needs the augmentation parameters of the views (Batch.aug_params): every "
                             "auxssl loader records them; a loop of one's own passes them in its Batch")
        flipped = params["flip"]
        out = {}
        if "crop" in self.groups:
            if batch.crop_boxes is None:
                raise ValueError("augself's crop term needs the views' crop boxes (Batch.crop_boxes): crop every "
                                 "view, or set crop: 0")
            boxes = batch.crop_boxes
            out["crop"] = (crop_parameters(boxes[first], flipped[first])
                           - crop_parameters(boxes[second], flipped[second]))
        if "colour" in self.groups:
            jitter = params["jitter"].float()
            out["colour"] = colour_parameters(jitter[first], self.jitter) - colour_parameters(jitter[second],
                                                                                             self.jitter)
        if "flip" in self.groups:
            out["flip"] = (flipped[first] == flipped[second]).float()[:, None]
        return out

    def forward(self, backbone: nn.Module, batch: Batch, features: Sequence[Tensor]) -> dict[str, Tensor]:
        if self.heads is None:
            raise RuntimeError("AugSelf.build(feature_dim) must be called before forward")
        first, second = (features[i] for i in self.views)
        pairs = torch.cat([torch.cat([first, second], dim=1), torch.cat([second, first], dim=1)])
        out: dict[str, Tensor] = {}
        total: Tensor | None = None
        for name, target in self.targets(batch).items():
            target = target.to(pairs.device)
            # the reversed pairs' targets: differences change sign, "flipped alike" does not
            prediction = at_least_float32(self.heads[name](pairs))
            # in the prediction's precision (BCE's result takes the target's dtype: a float32 target would round a
            # float64 loss)
            target = torch.cat([target, target if name == "flip" else -target]).to(prediction.dtype)
            if name == "flip":
                loss = F.binary_cross_entropy_with_logits(prediction, target)
                out["acc_flip"] = ((prediction.detach() > 0) == (target > 0.5)).float().mean()
            else:
                loss = F.mse_loss(torch.tanh(prediction), target)
            out[f"loss_{name}"] = loss.detach()
            weighted = self.groups[name] * loss
            total = weighted if total is None else total + weighted
        assert total is not None
        out["loss"] = total
        return out
