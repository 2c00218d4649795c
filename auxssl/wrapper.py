"""`AuxWrapper`: add auxiliary pretext tasks to any base SSL method (Addepalli et al., ECCV 2022)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from auxssl.auxiliary import AuxiliaryLoss, OnlineFeatureRecorder
from auxssl.tasks import PretextTask
from baselines.backbones import feature_dim
from baselines.ema import ema_update_pairs_
from baselines.protocol import Batch, ContrastSets, as_batch, missing_protocol_members


class AuxWrapper(nn.Module):
    """A base method plus auxiliary tasks, itself following the base method's protocol.

    ``loss = L_base + Σ_t λ_t · L_t``. The base method sees the batch unchanged (only unrotated views); each
    task builds its own inputs from the views and runs them through the base method's *online* backbone, so
    a momentum/target encoder never sees them. The output dict keeps every term: the base method's own keys,
    ``loss/base``, and ``loss/<task>`` plus the task's metrics (``acc/<task>``) for every task.

    **The base method's online features** are the one channel from the base call to the tasks and the online
    probe: while the base method runs, the wrapper's `OnlineFeatureRecorder` records every output of its online
    backbone (armed only then, so the tasks' own backbone calls and evaluations are never recorded) as one
    ``(B, D)`` tensor per view, in view order. Tasks that declare ``uses_features = True`` receive them with their
    gradient (AugSelf predicts from them, no extra backbone pass); `online_features` is the last forward's,
    detached, for the probe.

    Args:
        base: any module following `baselines.protocol.SSLMethod` (``backbone``, ``forward``,
            ``param_groups``, ``momentum_pairs``).
        tasks: the pretext tasks (default: ``[RotationPrediction()]``, λ = 0.1).
        weights: optional override of the tasks' λ: one float for all, a sequence aligned with ``tasks`` or
            a mapping from task name to λ.
    """

    def __init__(
        self,
        base: nn.Module,
        tasks: Sequence[PretextTask] | None = None,
        weights: float | Sequence[float] | Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        missing = missing_protocol_members(base)
        if missing:
            raise TypeError(f"{type(base).__name__} does not follow the SSLMethod protocol: missing {missing}")
        self.base = base
        #: The tasks and their heads: the same `AuxiliaryLoss` a user's own loop would call.
        self.tasks = AuxiliaryLoss(tasks, weights, feature_dim=feature_dim(base.backbone))
        self.recorder = OnlineFeatureRecorder(base)

    @property
    def online_features(self) -> list[Tensor]:
        """The base method's online features of the last forward's views, detached (for the online probe)."""
        return self.recorder.online_features

    @property
    def backbone(self) -> nn.Module:
        return self.base.backbone

    @property
    def base_tau(self) -> float | None:
        return getattr(self.base, "base_tau", None)

    @property
    def final_tau(self) -> float:
        return getattr(self.base, "final_tau", 1.0)

    @property
    def weights(self) -> dict[str, float]:
        """λ of every task, by name."""
        return self.tasks.weights

    def param_groups(self) -> list[dict[str, Any]]:
        return list(self.base.param_groups()) + self.tasks.param_groups()

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return list(self.base.momentum_pairs()) + self.tasks.momentum_pairs()

    def momentum_update(self, tau: float) -> None:
        ema_update_pairs_(self.momentum_pairs(), tau)

    def on_train_epoch_start(self, epoch: int) -> None:
        hook = getattr(self.base, "on_train_epoch_start", None)
        if hook is not None:
            hook(epoch)

    def on_before_optimizer_step(self, step: int) -> None:
        hook = getattr(self.base, "on_before_optimizer_step", None)
        if hook is not None:
            hook(step)

    def contrast_sets(self, batch: Batch) -> ContrastSets | None:
        """The base method's negatives (noise control); None when it has none."""
        sets = getattr(self.base, "contrast_sets", None)
        return None if sets is None else sets(batch)

    def forward(self, batch: Batch | Sequence[Tensor]) -> dict[str, Tensor]:
        batch = as_batch(batch)
        out = dict(self.base(batch))
        out["loss/base"] = out["loss"]
        auxiliary = self.tasks(self.base.backbone, batch, self.recorder.features)
        terms = {name: value for name, value in auxiliary.items() if name != "loss"}
        collisions = sorted(set(terms) & set(out))
        if collisions:
            raise KeyError(f"task outputs {collisions} collide with keys of the base method")
        out.update(terms)
        out["loss"] = out["loss/base"] + auxiliary["loss"]
        return out
