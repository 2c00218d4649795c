"""`AuxiliaryLoss`: the auxiliary pretext tasks as one loss term for any training loop (Addepalli et al., ECCV 2022).

A lightly, Lightning or hand-written SSL loop adds the rotation objective in three lines::

    aux = AuxiliaryLoss(feature_dim=512)                    # rotation prediction, λ = 0.1
    optimizer = torch.optim.SGD([*model.parameters(), *aux.parameters()], lr=0.06)
    loss = ssl_loss + aux(model.backbone, [x0, x1])["loss"]  # λ-weighted; terms in the same dict

`AuxWrapper` is this module around a base method that follows `baselines.protocol.SSLMethod`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from auxssl.tasks import PretextTask, RotationPrediction
from baselines.base import split_weight_decay
from baselines.protocol import Batch, as_batch


class PooledFeatures(nn.Module):
    """A backbone whose output is made ``(B, D)``: lightly's usual ResNet trunk,
    ``nn.Sequential(*list(resnet.children())[:-1])``, returns ``(B, D, 1, 1)``. Feature maps with a spatial extent
    are refused (pool them first): flattening them would hand the heads ``D·H·W`` spatially ordered values."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x)
        if features.dim() == 4 and features.shape[-2:] == (1, 1):
            return features.flatten(1)
        if features.dim() != 2:
            raise ValueError(f"the backbone returned features of shape {tuple(features.shape)}; the auxiliary heads "
                             "need pooled features (B, D) or (B, D, 1, 1): end the backbone with global pooling")
        return features


class OnlineFeatures:
    """The base method's online features of a batch's views: one ``(B, D)`` tensor per encoded view, in view
    order — what tasks with ``uses_features = True`` predict from (`AuxWrapper` records them around the base
    call; a loop of one's own passes ``[f(x1), f(x2)]``)."""

    @staticmethod
    def split(outputs: Sequence[Tensor], batch: Batch, method: str = "the base method") -> list[Tensor]:
        """Per-view features from the online backbone's outputs during the base call (one call per view, or
        several views in one call, in view order); ``[]`` when the base method encoded nothing."""
        rows = [o.flatten(1) if o.dim() == 4 and o.shape[-2:] == (1, 1) else o for o in outputs]
        if not rows:
            return []
        if any(r.dim() != 2 for r in rows):
            raise ValueError(f"{method}'s backbone returned unpooled features {tuple(outputs[0].shape)}")
        total = sum(len(r) for r in rows)
        if total % batch.size or total // batch.size > len(batch.views):
            raise ValueError(f"{method}'s online backbone encoded {total} rows for {len(batch.views)} views of "
                             f"{batch.size} images: the tasks and the online probe need each view encoded once, in "
                             "view order")
        return list(torch.cat(rows).split(batch.size))


class OnlineFeatureRecorder:
    """The one channel of a base method's online features: records what its online backbone computes from the
    batch's views *while the method's forward runs* (forward hooks on the method arm and disarm it, so the tasks'
    transformed copies, which reach the same backbone after the base call, and evaluations are never recorded).

    `features` holds the last forward's per-view features with their gradient (`OnlineFeatures.split`), for the
    tasks; `online_features` the same detached, for the online probe."""

    def __init__(self, method: nn.Module) -> None:
        self.method_name = type(method).__name__
        self.features: list[Tensor] = []
        self._recorded: list[Tensor] | None = None
        self._batch: Batch | None = None
        method.backbone.register_forward_hook(self._record)
        method.register_forward_pre_hook(self._start)
        method.register_forward_hook(self._stop)

    def _start(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._recorded, self._batch = [], as_batch(args[0])

    def _record(self, module: nn.Module, args: Any, output: Tensor) -> None:
        if self._recorded is not None:
            self._recorded.append(output)

    def _stop(self, module: nn.Module, args: Any, output: Any) -> None:
        recorded, self._recorded = self._recorded, None
        assert recorded is not None and self._batch is not None
        self.features = OnlineFeatures.split(recorded, self._batch, self.method_name)

    @property
    def online_features(self) -> list[Tensor]:
        """The last forward's per-view features, detached."""
        return [f.detach() for f in self.features]


class AuxiliaryLoss(nn.ModuleList):
    """The λ-weighted sum of pretext-task losses, ``Σ_t λ_t · L_t``, computed through the caller's backbone: a
    list of `PretextTask` modules (its state dict holds their heads, ``"<i>.head.…"``) with a forward.

    Call it with the *online* backbone (a momentum/target encoder must never see the transformed copies) and
    the augmented views (a list of ``(B, C, H, W)`` tensors or a `Batch`); it returns ``"loss"`` (the weighted
    total to add to the SSL loss) and every term, ``loss/<task>`` (unweighted) and ``acc/<task>``. Tasks that
    predict from the SSL method's own features of the views (``uses_features = True``, e.g. AugSelf) need
    ``features``: one ``(B, D)`` tensor per view, with its gradient (`OnlineFeatures`).

    Args:
        tasks: the pretext tasks (default: ``[RotationPrediction()]``, λ = 0.1, both global views, the official
            code's loss).
        weights: optional override of the tasks' λ: one float for all, a sequence aligned with ``tasks`` or a
            mapping from task name to λ.
        feature_dim: the width of the backbone's pooled features. When given the heads exist at once (create the
            optimiser any time); else they are built from the features of the first call, and reading
            `parameters` before that call is refused at that call (an optimiser created then would not hold
            the heads and would silently never train them).
    """

    def __init__(
        self,
        tasks: Sequence[PretextTask] | None = None,
        weights: float | Sequence[float] | Mapping[str, float] | None = None,
        feature_dim: int | None = None,
    ) -> None:
        tasks = [RotationPrediction()] if tasks is None else list(tasks)
        for task in tasks:
            if not isinstance(task, nn.Module) or not isinstance(task, PretextTask):
                raise TypeError(f"{task!r} is not a PretextTask nn.Module (name, weight, build, forward)")
        names = [task.name for task in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        _set_weights(tasks, weights)
        super().__init__(tasks)
        self.feature_dim: int | None = None
        self._parameters_read_unbuilt = False
        if feature_dim is not None:
            self.build(feature_dim)

    def build(self, feature_dim: int) -> None:
        """Create every task's head for features of width ``feature_dim`` (idempotent)."""
        if self.feature_dim is not None and self.feature_dim != feature_dim:
            raise ValueError(f"the heads were built for {self.feature_dim}-d features, not {feature_dim}-d")
        for task in self:
            task.build(feature_dim)
        self.feature_dim = feature_dim

    @property
    def weights(self) -> dict[str, float]:
        """λ of every task, by name."""
        return {task.name: task.weight for task in self}

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        if self.feature_dim is None:
            self._parameters_read_unbuilt = True
        return super().parameters(recurse)

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups of the heads: biases and norm parameters flagged ``weight_decay: 0`` and
        ``lars_exclude`` (as the base methods' groups)."""
        if self.feature_dim is None:
            self._parameters_read_unbuilt = True
        return [group for task in self for group in split_weight_decay(task.named_parameters())]

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [pair for task in self for pair in getattr(task, "momentum_pairs", list)()]

    def forward(self, backbone: nn.Module, views: Batch | Sequence[Tensor],
                features: Sequence[Tensor] | None = None) -> dict[str, Tensor]:
        batch = as_batch(views)
        pooled = backbone if isinstance(backbone, PooledFeatures) else PooledFeatures(backbone)
        if self.feature_dim is None:
            self._build_from(pooled, batch.views[0])
        else:
            self.build(self.feature_dim)  # a task appended since (idempotent for the others)
        out: dict[str, Tensor] = {}
        total: Tensor | None = None
        for task in self:
            if getattr(task, "uses_features", False):
                if not features:
                    raise ValueError(f"task {task.name} predicts from the SSL method's online features of the views, "
                                     "and none were given: pass features=[f(x1), f(x2)] (AuxWrapper records them; "
                                     "model.method=none computes none)")
                terms = task(pooled, batch, [f.flatten(1) for f in features])
            else:
                terms = task(pooled, batch)
            for key, value in terms.items():
                out[f"{key}/{task.name}"] = value
            weighted = task.weight * terms["loss"]
            total = weighted if total is None else total + weighted
        out["loss"] = total if total is not None else batch.views[0].new_zeros(())
        return out

    def _build_from(self, backbone: PooledFeatures, images: Tensor) -> None:
        if self._parameters_read_unbuilt:
            raise RuntimeError("AuxiliaryLoss: its parameters were read before its heads existed (an optimiser "
                               "built then holds none of them and would never train them); pass "
                               "AuxiliaryLoss(feature_dim=D) or create the optimiser after the first call")
        was_training = backbone.training
        backbone.eval()  # one image, without touching batch-norm statistics
        try:
            with torch.no_grad():
                dim = backbone(images[:1]).shape[1]
        finally:
            backbone.train(was_training)
        self.build(int(dim))
        self.to(images.device)

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """A checkpoint of built heads loads into an unbuilt `AuxiliaryLoss`: the width is read from it."""
        if self.feature_dim is None:
            for task_index in range(len(self)):
                head = f"{prefix}{task_index}.head."
                first = next((v for k, v in state_dict.items() if k.startswith(head) and k.endswith("weight")
                              and v.dim() == 2), None)
                if first is not None:
                    self.build(int(first.shape[1]))
                    break
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


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
