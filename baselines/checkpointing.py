"""Activation checkpointing of ResNet and RegNet stages (SEER): recompute each stage's activations in the backward
pass instead of keeping them, with batch-norm running statistics advanced once per step as without it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def _batchnorm_stats_restored(module: nn.Module) -> Iterator[None]:
    """Undo every running-statistics update of the batch norms in ``module`` made inside this block."""
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


class CheckpointedStage(nn.Sequential):
    """A ResNet stage whose activations are recomputed in the backward pass (SEER's activation checkpointing).

    Same children, hence the same parameter names, as the `nn.Sequential` it replaces. The recomputation
    leaves batch-norm running statistics untouched, so they advance once per step as without checkpointing.
    """

    def _contexts(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), _batchnorm_stats_restored(self)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        if torch.compiler.is_compiling():
            # Dynamo traces the recomputation into the backward graph without replaying the running-statistics
            # update, so no context is needed (and it would call a bound ``context_fn`` without ``self``)
            return checkpoint(super().forward, x, use_reentrant=False)
        return checkpoint(super().forward, x, use_reentrant=False, context_fn=self._contexts)


def enable_activation_checkpointing(backbone: nn.Module) -> None:
    """Replace the stages of a torchvision ResNet (``layer1``-``layer4``) or RegNet (``trunk_output``) by
    `CheckpointedStage` s, in place (same parameter names)."""
    stages = [n for n in ("layer1", "layer2", "layer3", "layer4", "trunk_output")
              if isinstance(getattr(backbone, n, None), nn.Sequential)]
    if not stages:
        raise ValueError("activation checkpointing supports torchvision ResNet and RegNet backbones")
    for name in stages:
        setattr(backbone, name, CheckpointedStage(*getattr(backbone, name)))
