"""`AuxWrapper`: add auxiliary pretext tasks to any base SSL method (Addepalli et al., ECCV 2022)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from auxssl.tasks import PretextTask, RotationPrediction
from baselines.backbones import feature_dim
from baselines.base import split_weight_decay
from baselines.ema import ema_update_pairs_
from baselines.protocol import Batch, ContrastSets, as_batch, missing_protocol_members


class AuxWrapper(nn.Module):
    """A base method plus auxiliary tasks, itself following the base method's protocol.

    ``loss = L_base + Σ_t λ_t · L_t``. The base method sees the batch unchanged (only unrotated views); each
    task builds its own inputs from the views and runs them through the base method's *online* backbone, so
    a momentum/target encoder never sees them. The output dict keeps every term: the base method's own keys,
    ``loss/base``, and ``loss/<task>`` plus the task's metrics (``acc/<task>``) for every task.

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
        tasks = [RotationPrediction()] if tasks is None else list(tasks)
        for task in tasks:
            if not isinstance(task, nn.Module) or not isinstance(task, PretextTask):
                raise TypeError(f"{task!r} is not a PretextTask nn.Module (name, weight, build, forward)")
        names = [task.name for task in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        self._set_weights(tasks, weights)
        dim = feature_dim(base.backbone)
        for task in tasks:
            task.build(dim)
        self.base = base
        self.tasks = nn.ModuleList(tasks)

    @staticmethod
    def _set_weights(tasks: list[PretextTask], weights: float | Sequence[float] | Mapping[str, float] | None) -> None:
        if weights is None:
            return
        if isinstance(weights, Mapping):
            unknown = set(weights) - {t.name for t in tasks}
            if unknown:
                raise ValueError(f"weights name unknown tasks {sorted(unknown)}; tasks are {[t.name for t in tasks]}")
            for task in tasks:
                task.weight = float(weights.get(task.name, task.weight))
        elif isinstance(weights, (int, float)):
            for task in tasks:
                task.weight = float(weights)
        else:
            if len(weights) != len(tasks):
                raise ValueError(f"got {len(weights)} weights for {len(tasks)} tasks")
            for task, w in zip(tasks, weights):
                task.weight = float(w)

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
        return {task.name: task.weight for task in self.tasks}

    def param_groups(self) -> list[dict[str, Any]]:
        groups = list(self.base.param_groups())
        for task in self.tasks:
            groups += split_weight_decay(task.named_parameters())
        return groups

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = list(self.base.momentum_pairs())
        for task in self.tasks:
            pairs += list(getattr(task, "momentum_pairs", lambda: [])())
        return pairs

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
        total = out["loss"]
        out["loss/base"] = total
        backbone = self.base.backbone
        for task in self.tasks:
            task_out = task(backbone, batch)
            for key, value in task_out.items():
                name = f"{key}/{task.name}"
                if name in out:
                    raise KeyError(f"task {task.name!r} output {name!r} collides with a key of the base method")
                out[name] = value
            total = total + task.weight * task_out["loss"]
        out["loss"] = total
        return out
