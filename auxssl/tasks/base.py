"""The pretext-task protocol, and the base class of classification pretext tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.heads import mlp
from baselines.losses import at_least_float32
from baselines.protocol import Batch


@runtime_checkable
class PretextTask(Protocol):
    """What `AuxWrapper` composes: an `nn.Module` with a name, a loss weight and a forward pass.

    Members:
        name: key suffix of the task's outputs (``loss/<name>``, ``acc/<name>``); unique within a wrapper.
        weight: λ, the task loss's weight in the total loss.
        build(feature_dim): create the task's head(s) for backbone features of that width (called once by
            the wrapper; idempotent).
        forward(backbone, batch): make the task's inputs from the batch, run them through the base method's
            *online* backbone and return a dict with ``"loss"`` plus metrics (every value a scalar tensor).

    Optional: ``uses_features = True`` declares ``forward(backbone, batch, features)``, where ``features`` are
    the base method's online features of the views (one ``(B, D)`` tensor per view, with their gradient;
    `auxssl.auxiliary.OnlineFeatures`): a task predicting from them needs no backbone pass of its own.
    ``takes_recipe = True``: the trainer passes the data recipe (``recipe=``, a `auxssl.data.Recipe`) to the
    constructor, for a task that depends on the augmentation settings.
    """

    name: str
    weight: float

    def build(self, feature_dim: int) -> None: ...

    def forward(self, backbone: nn.Module, batch: Batch) -> dict[str, Tensor]: ...


class ClassificationPretextTask(nn.Module):
    """A pretext task that transforms images and classifies the transformation from backbone features.

    Subclasses implement `make_inputs` (transformed images and their labels). This class selects the
    views, optionally resizes them, runs the transformed copies through the backbone and scores them with an
    MLP head (``Linear → BN → ReLU → Linear(num_classes)``) by cross-entropy.

    The loss is the official EffSSL one (Addepalli et al. 2022, ``main_swav_rotnet.py``): the *sum over the
    selected views* of each view's mean cross-entropy, ``Σ_m mean_i CE(h(f(t(x_i^m))), y_i^m)``; with two
    views at chance it is ``2·ln(num_classes)``. By default every view's transformed copies get their own
    backbone and head call, so batch-norm statistics are per view, as in the official code
    (``forward_rotation(rot1)``, ``forward_rotation(rot2)``); ``batch_views=True`` runs all views in one call
    instead (one set of batch-norm statistics over every view; the loss is still summed per view).

    Args:
        num_classes: number of transformation classes.
        weight: λ, the weight of the task loss.
        views: indices of the batch views that get transformed copies (default: the two global views).
        size: if set, resize the selected views to ``size × size`` first (e.g. half resolution for speed).
        hidden_dim: head width (default: the backbone feature dimension).
        generator: optional `torch.Generator` for the random transformations (default: the global RNG of
            the images' device, which the engine checkpoints).
        batch_views: one backbone call for all views' copies instead of one call per view (the official code).
    """

    name: str = "classification"

    def __init__(
        self,
        num_classes: int,
        weight: float,
        views: Sequence[int] = (0, 1),
        size: int | None = None,
        hidden_dim: int | None = None,
        generator: torch.Generator | None = None,
        batch_views: bool = False,
    ) -> None:
        super().__init__()
        if len(views) == 0:
            raise ValueError("a pretext task needs at least one view index")
        self.num_classes = num_classes
        self.weight = float(weight)
        self.views = tuple(views)
        self.size = size
        self.hidden_dim = hidden_dim
        self.generator = generator
        self.batch_views = batch_views
        self.head: nn.Module | None = None

    def build(self, feature_dim: int) -> None:
        if self.head is None:
            hidden = self.hidden_dim or feature_dim
            self.head = mlp([feature_dim, hidden, self.num_classes])

    def make_inputs(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Transformed images and their integer labels."""
        raise NotImplementedError

    def random_labels(self, n: int, device: torch.device) -> Tensor:
        """``n`` labels drawn uniformly from ``range(num_classes)``, one per image."""
        if self.generator is None:
            return torch.randint(self.num_classes, (n,), device=device)
        return torch.randint(self.num_classes, (n,), generator=self.generator, device=self.generator.device).to(device)

    def select_views(self, batch: Batch) -> list[Tensor]:
        """The selected views, each resized to ``size`` when set."""
        if max(self.views) >= len(batch.views):
            raise ValueError(f"{self.name} uses views {self.views} but the batch has {len(batch.views)} views")
        images = [batch.views[i] for i in self.views]
        if self.size is not None and images[0].shape[-2:] != (self.size, self.size):
            images = [F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True) for x in images]
        return images

    def forward(self, backbone: nn.Module, batch: Batch) -> dict[str, Tensor]:
        if self.head is None:
            raise RuntimeError(f"{type(self).__name__}.build(feature_dim) must be called before forward")
        inputs, labels = zip(*(self.make_inputs(view) for view in self.select_views(batch)))
        if self.batch_views:
            logits = self.head(backbone(torch.cat(inputs))).split([len(y) for y in labels])
        else:
            logits = [self.head(backbone(x)) for x in inputs]
        logits = [at_least_float32(z) for z in logits]
        loss = torch.stack([F.cross_entropy(z, y) for z, y in zip(logits, labels)]).sum()
        correct = torch.cat([z.detach().argmax(dim=1) == y for z, y in zip(logits, labels)])
        return {"loss": loss, "acc": correct.float().mean()}
