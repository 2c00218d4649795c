"""Probes on frozen features: linear (standard protocol), non-linear (MLP), augmented-crop, and online.

Standard offline protocol (auxssl's, documented in every report): features extracted once with the evaluation
transform; standardised with the training split's per-dimension mean/std (an affine-free BatchNorm, as in MAE's
and solo-learn's linear evaluation); a linear layer trained with SGD (momentum 0.9, nesterov), batch 256,
lr 0.1 with cosine decay to 0, no weight decay, 100 epochs; top-1/top-5 at the last epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auxssl.data.datasets import ImageDataset, ImageSubset
from auxssl.data.loaders import build_loader
from auxssl.data.recipes import get_recipe
from auxssl.eval.features import extract_features
from auxssl.eval.knn import topk_accuracy
from baselines.distributed import gather_uneven_no_grad


@dataclass(frozen=True)
class ProbeConfig:
    """Hyper-parameters of a probe trained on frozen features; ``hidden_dim`` makes it an MLP."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    hidden_dim: int | None = None
    seed: int = 0

    def describe(self) -> str:
        kind = "linear" if self.hidden_dim is None else f"MLP (hidden {self.hidden_dim}, BN, ReLU)"
        return (
            f"{kind} probe on frozen, standardised features; SGD nesterov momentum {self.momentum}, batch "
            f"{self.batch_size}, lr {self.lr} cosine, wd {self.weight_decay}, {self.epochs} epochs; last epoch"
        )


def cosine_lr(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step cosine decay of every group's learning rate from its initial value to 0 over ``total_steps``."""
    total_steps = max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))


def probe_head(in_dim: int, num_classes: int, hidden_dim: int | None) -> nn.Module:
    if hidden_dim is None:
        return nn.Linear(in_dim, num_classes)
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
        nn.Linear(hidden_dim, num_classes),
    )


class Standardise(nn.Module):
    """Fixed per-dimension standardisation ``(x - mean) / std`` (an affine-free BatchNorm in eval mode)."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) / self.std


def fit_probe(
    train_x: Tensor, train_y: Tensor, config: ProbeConfig = ProbeConfig(), num_classes: int | None = None
) -> tuple[nn.Sequential, float]:
    """Train a probe on precomputed features (labels -1 ignored); returns ``Standardise → head`` in eval mode
    (it maps raw features to logits) and the final training loss."""
    labelled = train_y >= 0
    train_x, train_y = train_x[labelled].float(), train_y[labelled].long()
    num_classes = num_classes or int(train_y.max()) + 1
    standardise = Standardise(train_x.mean(dim=0), train_x.std(dim=0).clamp_min(1e-6))
    train_x = standardise(train_x)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):  # the head's initialisation is seeded; the caller's stream untouched
        torch.manual_seed(config.seed)
        head = probe_head(train_x.shape[1], num_classes, config.hidden_dim)
    optimizer = torch.optim.SGD(
        head.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
    )
    schedule = cosine_lr(optimizer, config.epochs * math.ceil(len(train_x) / config.batch_size))
    head.train()
    loss = torch.zeros(())
    for _ in range(config.epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(train_x), config.batch_size):
            idx = order[start : start + config.batch_size]
            if config.hidden_dim is not None and len(idx) < 2:
                continue  # batch norm needs two samples
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return nn.Sequential(standardise, head).eval(), loss.item()


def train_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, config: ProbeConfig = ProbeConfig(),
    num_classes: int | None = None,
) -> dict[str, float]:
    """Train a probe on precomputed features; returns top-1/top-5 test accuracy (%) and final train loss."""
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    probe, loss = fit_probe(train_x, train_y, config, num_classes)
    with torch.no_grad():
        acc = topk_accuracy(probe(test_x), test_y)
    return {"top1": 100 * acc[1], "top5": 100 * acc[5], "train_loss": loss}


def linear_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, config: ProbeConfig = ProbeConfig()
) -> dict[str, float]:
    """The standard offline linear probe: ``{"linear/top1", "linear/top5"}`` in %."""
    out = train_probe(train_x, train_y, test_x, test_y, config)
    return {"linear/top1": out["top1"], "linear/top5": out["top5"]}


def mlp_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, config: ProbeConfig = ProbeConfig(hidden_dim=1024)
) -> dict[str, float]:
    """The non-linear probe (FFCV-SSL): ``{"mlp/top1", "mlp/top5"}`` in %."""
    if config.hidden_dim is None:
        raise ValueError("an MLP probe needs hidden_dim")
    out = train_probe(train_x, train_y, test_x, test_y, config)
    return {"mlp/top1": out["top1"], "mlp/top5": out["top5"]}


def linear_probe_augmented(
    backbone: nn.Module,
    train: ImageDataset,
    test: ImageDataset,
    config: ProbeConfig = ProbeConfig(),
    device: str | torch.device = "cpu",
    image_size: int = 32,
) -> dict[str, float]:
    """The paper-exact protocol: a linear layer on the frozen backbone, trained on fresh random-resized crops
    (scale 0.08–1) and flips every epoch (the backbone stays in eval mode); tested on evaluation-transform
    features. Features are standardised with the training split's evaluation-transform statistics, as in the
    standard probe. Costs a backbone forward per training image per epoch. Images held in memory are augmented in
    batches (tensor backend); others are streamed (torchvision backend), so memory stays bounded by a batch."""
    labelled = ImageSubset(train, np.flatnonzero(np.asarray(train.labels) >= 0))
    backend = "tensor" if train.in_memory else "torchvision"
    loader = build_loader(backend, labelled, get_recipe("linear_eval", image_size), config.batch_size,
                          labels=labelled.labels, device=device, seed=config.seed, drop_last=False)
    test_x, test_y = extract_features(backbone, test, device=device, image_size=image_size)
    # standardised with the training split's statistics under the evaluation transform, as the standard probe is
    train_x, _ = extract_features(backbone, labelled, device=device, image_size=image_size)
    standardise = Standardise(train_x.mean(dim=0), train_x.std(dim=0).clamp_min(1e-6))
    num_classes = int(max(train.labels.max(), test_y.max())) + 1
    with torch.random.fork_rng(devices=[]):  # the head's initialisation is seeded; the caller's stream untouched
        torch.manual_seed(config.seed)
        head = nn.Sequential(standardise, nn.Linear(test_x.shape[1], num_classes)).to(device)
    optimizer = torch.optim.SGD(head[1].parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                                weight_decay=config.weight_decay)
    schedule = cosine_lr(optimizer, config.epochs * len(loader))
    was_training = backbone.training
    backbone.eval()
    try:
        for epoch in range(config.epochs):
            loader.set_epoch(epoch)
            for batch in loader:
                with torch.no_grad():
                    features = backbone(batch.views[0]).float()
                loss = F.cross_entropy(head(features), batch.label)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    finally:
        backbone.train(was_training)
    with torch.no_grad():
        acc = topk_accuracy(head(test_x.to(device)), test_y)
    return {"linear_aug/top1": 100 * acc[1], "linear_aug/top5": 100 * acc[5]}


class OnlineLinearProbe(nn.Module):
    """A linear classifier trained during SSL on *detached* backbone features, with its own optimiser.

    It never influences the backbone. `update` takes a batch of features and (revealed) labels — entries with
    label -1 are ignored — takes one SGD step and returns its loss and accuracy (%) on the labelled samples.

    The features are standardised by an affine-free batch norm (as in the offline probe), and the learning rate
    follows the linear scaling rule per labelled sample: the step minimises the cross-entropy *summed* over the
    labelled samples divided by 256, i.e. ``lr`` is the rate of a 256-sample batch, whatever the batch and
    revealed fraction. A fixed rate on a batch mean (the previous design) made the probe diverge on small
    batches (batch 64, half the labels revealed: loss 2.7 → 8.6).
    """

    name = "online_linear"  # its key in run.json's protocol and evaluation
    prefix = "online_linear/"
    reference_batch = 256

    def __init__(self, feature_dim: int, num_classes: int, lr: float = 0.1, momentum: float = 0.9) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.BatchNorm1d(feature_dim, affine=False), nn.Linear(feature_dim, num_classes))
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=lr, momentum=momentum)

    def checkpoint_state(self) -> dict[str, Any]:
        """The head and its optimiser (what a resumed run needs to continue the probe where it was)."""
        return {"head": self.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])

    def settings(self) -> dict[str, float | str]:
        group = self.optimizer.param_groups[0]
        return {"lr": group["lr"], "momentum": group["momentum"], "reference_batch": self.reference_batch,
                "input": "detached pooled features, affine-free batch norm"}

    def describe(self) -> str:
        s = self.settings()
        return (f"online linear probe on detached, batch-standardised features of the training views; SGD lr "
                f"{s['lr']} per {self.reference_batch} labelled samples, momentum {s['momentum']}, one step per "
                "training step; loss and top-1 averaged over labelled samples")

    def update(self, features: Tensor, labels: Tensor) -> dict[str, Tensor | int]:
        """One step on the labelled samples; under torch.distributed on those of every process (gathered), so the
        probe sees the whole labelled stream and stays identical on every rank."""
        keep = labels >= 0
        features, labels = features.detach()[keep].float(), labels[keep]
        features, labels = gather_uneven_no_grad(features), gather_uneven_no_grad(labels)
        n = len(labels)
        if n < 2:  # batch norm needs two samples
            return {}
        with torch.autocast(features.device.type, enabled=False):
            logits = self.head(features)
            loss_sum = F.cross_entropy(logits, labels, reduction="sum")
        self.optimizer.zero_grad(set_to_none=True)
        (loss_sum / self.reference_batch).backward()
        self.optimizer.step()
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        # tensors, read back only when the trainer logs; the count is known on the host (the labels' length)
        return {"online_linear/loss": loss_sum.detach() / n, "online_linear/top1": 100 * accuracy,
                "online_linear/labelled": n}
