"""Semi-supervised evaluation: fine-tune backbone + linear head on a class-balanced 1% / 10% label subset.

Protocol (SimCLR appendix B.5, scaled to CIFAR): the subset is drawn per class with a seeded generator (its
indices are returned and saved with the results); backbone and a new linear head are fine-tuned with random
resized crops (0.08–1) and flips, SGD nesterov momentum 0.9, batch 256 (or the subset size), lr 0.05 for the
backbone and 0.5 for the head with cosine decay, no weight decay; evaluated on the test split with the
evaluation transform at the last epoch.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auxssl.data.datasets import ImageDataset
from auxssl.data.labels import balanced_subset
from auxssl.data.loaders.tensor_loader import TensorLoader
from auxssl.data.recipes import get_recipe
from auxssl.eval.features import extract_features
from auxssl.eval.knn import topk_accuracy
from auxssl.eval.linear import cosine_lr
from baselines.backbones import feature_dim


@dataclass(frozen=True)
class SemiSupervisedConfig:
    fraction: float = 0.01
    epochs: int = 30
    batch_size: int = 256
    backbone_lr: float = 0.05
    head_lr: float = 0.5
    momentum: float = 0.9
    seed: int = 0


def finetune_semisupervised(
    backbone: nn.Module,
    train: ImageDataset,
    test: ImageDataset,
    config: SemiSupervisedConfig = SemiSupervisedConfig(),
    device: str | torch.device = "cpu",
    image_size: int = 32,
    save_to: str | Path | None = None,
) -> dict:
    """Fine-tune a *copy* of ``backbone`` on the labelled subset; returns accuracies (%) and subset indices.

    With ``save_to`` the result (config, accuracies, subset indices) is written there as JSON.
    """
    images, rows = train.to_uint8()
    row_labels = np.asarray(train.labels)[rows]
    picked = balanced_subset(row_labels, config.fraction, config.seed)  # positions into rows
    subset_indices = rows[picked]
    loader = TensorLoader(
        train, get_recipe("linear_eval", image_size), min(config.batch_size, len(picked)), labels=train.labels,
        device=device, seed=config.seed, drop_last=False, images=images[torch.from_numpy(picked)], rows=subset_indices,
    )
    torch.manual_seed(config.seed)
    model = copy.deepcopy(backbone).to(device).train()
    head = nn.Linear(feature_dim(model, image_size), int(row_labels.max()) + 1).to(device)
    optimizer = torch.optim.SGD(
        [{"params": model.parameters(), "lr": config.backbone_lr}, {"params": head.parameters(), "lr": config.head_lr}],
        momentum=config.momentum, nesterov=True,
    )
    schedule = cosine_lr(optimizer, config.epochs * len(loader))
    for epoch in range(config.epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            if batch.size < 2:
                continue  # batch norm needs two samples
            loss = F.cross_entropy(head(model(batch.views[0])), batch.label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    test_x, test_y = extract_features(model, test, device=device, image_size=image_size)
    model.eval()
    with torch.no_grad():
        acc = topk_accuracy(head(test_x.to(device)), test_y)
    pct = f"{100 * config.fraction:g}pct"
    result = {
        "protocol": __doc__.split("\n\n")[1].replace("\n", " "),
        "config": asdict(config),
        f"semisup_{pct}/top1": 100 * acc[1],
        f"semisup_{pct}/top5": 100 * acc[5],
        "subset_indices": subset_indices.tolist(),
    }
    if save_to is not None:
        path = Path(save_to)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
    return result

