"""Evaluators as objects: each is one evaluation protocol with a name, its settings, a readable description and a
call on extracted features that returns its metrics. The trainer keeps a list of them; ``run.json`` (``protocol``
and ``evaluation``, by evaluator name) and the report (`EVALUATORS`' metric prefixes) derive from that list.

A new evaluator is a subclass of `Evaluator` here (or in a module of one's own) registered in `EVALUATORS`;
`evaluate_backbone` runs any list of them on features extracted once.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from auxssl.eval.knn import KNNProtocol, knn_evaluate
from auxssl.eval.linear import OnlineLinearProbe, ProbeConfig, linear_probe, mlp_probe
from auxssl.eval.projector import PROJECTOR_PROTOCOL, OnlineProjectorProbes, projector_layers, projector_probes

if TYPE_CHECKING:
    from auxssl.eval.sharded import EvalGroup


@dataclass
class Features:
    """Pooled backbone features (float32, CPU) of the kNN bank / probe training split and of the test split, with
    their labels; ``device``: where an evaluator may compute (the kNN runs there)."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    device: torch.device = torch.device("cpu")


class Evaluator(ABC):
    """One evaluation protocol on frozen features.

    Class attributes:
        name: its key in ``run.json``'s ``protocol`` and ``evaluation`` (two runs compare on it only where its
            `settings` agree).
        prefix: what its metric names start with (``knn/`` → ``knn/top1``, ``knn/top5``).
        sharded: True when it runs on each process's own shards of the features under torch.distributed (a
            collective, with ``group``); False when it runs once, on the features gathered on rank 0.
        every_evaluation: True to run at every evaluation during training; False to run at the final one only
            (probes that train for many epochs).
    """

    name: ClassVar[str]
    prefix: ClassVar[str]
    sharded: ClassVar[bool] = False
    every_evaluation: ClassVar[bool] = False

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Every setting that changes its numbers (recorded in ``run.json``)."""

    @abstractmethod
    def describe(self) -> str:
        """One readable line for reports."""

    @abstractmethod
    def __call__(self, features: Features, group: EvalGroup | None = None) -> dict[str, float]:
        """Its metrics (accuracies in %) on ``features``; ``group``: the process group of a sharded evaluator."""


class KNNEvaluator(Evaluator):
    """Weighted cosine kNN (`auxssl.eval.knn`); under torch.distributed the queries and the bank are split over
    the ranks (`auxssl.eval.sharded`)."""

    name = "knn"
    prefix = "knn/"
    sharded = True
    every_evaluation = True

    def __init__(self, protocol: KNNProtocol = KNNProtocol()) -> None:
        self.protocol = protocol

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self.protocol)

    def describe(self) -> str:
        return self.protocol.describe()

    def __call__(self, features: Features, group: EvalGroup | None = None) -> dict[str, float]:
        f, p = features, self.protocol
        bank, queries = f.train_x.to(f.device), f.test_x.to(f.device)
        if group is None:
            return knn_evaluate(bank, f.train_y, queries, f.test_y, p, f.num_classes)
        from auxssl.eval.sharded import sharded_knn_evaluate

        return sharded_knn_evaluate(bank, f.train_y, queries, f.test_y, group, k=p.k, temperature=p.temperature,
                                    num_classes=f.num_classes)


class LinearProbe(Evaluator):
    """A linear probe trained on the frozen training features (`auxssl.eval.linear.linear_probe`)."""

    name = "linear"
    prefix = "linear/"

    def __init__(self, config: ProbeConfig = ProbeConfig()) -> None:
        if config.hidden_dim is not None:
            raise ValueError("a linear probe has no hidden layer: use MLPProbe")
        self.config = config

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def describe(self) -> str:
        return self.config.describe()

    def __call__(self, features: Features, group: EvalGroup | None = None) -> dict[str, float]:
        f = features
        return linear_probe(f.train_x, f.train_y, f.test_x, f.test_y, self.config)


class MLPProbe(LinearProbe):
    """A one-hidden-layer MLP probe on the frozen features (`auxssl.eval.linear.mlp_probe`)."""

    name = "mlp"
    prefix = "mlp/"

    def __init__(self, config: ProbeConfig = ProbeConfig(hidden_dim=1024)) -> None:
        if config.hidden_dim is None:
            raise ValueError("an MLP probe needs ProbeConfig.hidden_dim")
        self.config = config

    def __call__(self, features: Features, group: EvalGroup | None = None) -> dict[str, float]:
        f = features
        return mlp_probe(f.train_x, f.train_y, f.test_x, f.test_y, self.config)


class ProjectorLayerProbes(LinearProbe):
    """Linear probes on the backbone features and on every projector layer (`auxssl.eval.projector`; FFCV-SSL's
    per-layer evaluation); the layers' outputs come from the extracted backbone features."""

    name = "projector_layers"
    prefix = "linear/layer"

    def __init__(self, projector: nn.Sequential, config: ProbeConfig = ProbeConfig()) -> None:
        super().__init__(config)
        self.layers = len(projector_layers(projector)) + 1  # refuses a projector that is not an nn.Sequential
        self.projector = projector

    def settings(self) -> dict[str, Any]:
        return {"layers": self.layers, **super().settings()}

    def describe(self) -> str:
        return PROJECTOR_PROTOCOL + self.config.describe()

    def __call__(self, features: Features, group: EvalGroup | None = None) -> dict[str, float]:
        f = features
        return projector_probes(self.projector, f.train_x, f.train_y, f.test_x, f.test_y, self.config)


#: Every evaluator by its ``run.json`` name: the offline ones above and the online probes trained during SSL
#: (`OnlineLinearProbe`, `OnlineProjectorProbes`: updated by the trainer at every step, not called on features).
EVALUATORS: dict[str, type] = {cls.name: cls for cls in (KNNEvaluator, LinearProbe, MLPProbe, ProjectorLayerProbes,
                                                         OnlineLinearProbe, OnlineProjectorProbes)}


def offline_evaluators(knn: KNNProtocol | None = KNNProtocol(), linear: ProbeConfig | None = None,
                       mlp: ProbeConfig | None = None, projector: nn.Sequential | None = None,
                       projector_config: ProbeConfig | None = None) -> list[Evaluator]:
    """The evaluators of the common choices: kNN, a linear probe, an MLP probe, per-layer projector probes (with
    ``projector_config``, else ``linear``'s settings, else the defaults)."""
    evaluators: list[Evaluator] = []
    if knn is not None:
        evaluators.append(KNNEvaluator(knn))
    if linear is not None:
        evaluators.append(LinearProbe(linear))
    if mlp is not None:
        evaluators.append(MLPProbe(mlp))
    if projector is not None:
        evaluators.append(ProjectorLayerProbes(projector, projector_config or linear or ProbeConfig()))
    return evaluators


def describe_evaluators(evaluators: list[Any]) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """``(protocol, evaluation)`` entries of ``run.json`` for ``evaluators`` (anything with ``name``,
    ``describe()`` and ``settings()``, online probes included)."""
    return ({e.name: e.describe() for e in evaluators}, {e.name: e.settings() for e in evaluators})
