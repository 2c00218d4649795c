"""Semi-supervised evaluation: fine-tune backbone + linear head on a class-balanced 1% / 10% label subset.

Protocol (SimCLR, Chen et al. 2020, appendix B.5): the subset is drawn per class with a seeded generator (its
indices are returned and saved with the results); the whole backbone and a new linear head are fine-tuned with
random resized crops (0.08–1) and flips only, SGD with Nesterov momentum 0.9, one learning rate
0.05 × batch/256 for every parameter, no warm-up, cosine decay, no weight decay; 60 epochs for 1% labels and 30
for 10% (other fractions: 30); batch norm in training mode; batch 256 (or the subset size); evaluated on the
test split with the evaluation transform at the last epoch.

One documented difference: SimCLR fine-tunes from the first layer of its projection head; we fine-tune the
backbone's pooled features (the exported representation) with a newly initialised linear head. The result also
reports the standard linear probe trained on the same labelled subset (``linear_subset_<pct>/top1``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auxssl.data.datasets import ImageDataset, ImageSubset
from auxssl.data.labels import balanced_subset
from auxssl.data.loaders.base import LoaderOptions
from auxssl.data.loaders.tensor_loader import TensorLoader
from auxssl.data.recipes import get_recipe
from auxssl.eval.features import extract_features
from auxssl.eval.knn import topk_accuracy
from auxssl.eval.linear import ProbeConfig, cosine_lr, fit_probe


def simclr_finetune_epochs(fraction: float) -> int:
    """SimCLR B.5: 60 epochs for 1% of the labels, 30 for 10% (and, by extension, for any other fraction)."""
    return 60 if fraction <= 0.01 else 30


@dataclass(frozen=True)
class SemiSupervisedConfig:
    """``epochs=None`` takes SimCLR's choice for the fraction (`simclr_finetune_epochs`); ``lr`` is per 256
    images and scaled linearly with the batch actually used."""

    fraction: float = 0.01
    epochs: int | None = None
    batch_size: int = 256
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0

    def resolved(self) -> SemiSupervisedConfig:
        return replace(self, epochs=simclr_finetune_epochs(self.fraction) if self.epochs is None else self.epochs)


def labelled_subset_loader(train: ImageDataset, config: SemiSupervisedConfig, device: str | torch.device,
                           image_size: int) -> tuple[ImageSubset, torch.Tensor, np.ndarray, TensorLoader]:
    """The class-balanced labelled subset of ``train`` (``config.fraction``, ``config.seed``), its decoded images
    and the rows that decoded, and the fine-tuning loader over it: every labelled image once per epoch (an image
    that does not decode is replaced by the next one), in batches of ``min(config.batch_size, subset size)``."""
    labelled = ImageSubset(train, balanced_subset(np.asarray(train.labels), config.fraction, config.seed))
    images, kept = labelled.to_uint8(image_size)  # only the labelled subset is decoded
    options = LoaderOptions(labels=labelled.labels, device=device, seed=config.seed, drop_last=False)
    loader = TensorLoader(labelled, get_recipe("linear_eval", image_size), min(config.batch_size, len(labelled)),
                          options, images=images, rows=kept)
    return labelled, images, kept, loader


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
    config = config.resolved()
    labelled, images, kept, loader = labelled_subset_loader(train, config, device, image_size)
    subset_indices = labelled.indices[kept]
    batch_size = loader.batch_size
    num_classes = int(labelled.labels[kept].max()) + 1
    model = copy.deepcopy(backbone).to(device)
    test_x, test_y = extract_features(model, test, device=device, image_size=image_size)
    subset_x, subset_y = extract_features(model, labelled, device=device, image_size=image_size, images=images,
                                          rows=kept)
    probe, _ = fit_probe(subset_x, subset_y, ProbeConfig(seed=config.seed), num_classes)
    with torch.no_grad():
        linear_acc = topk_accuracy(probe(test_x), test_y)
    model.train()
    torch.manual_seed(config.seed)
    head = nn.Linear(subset_x.shape[1], num_classes).to(device)
    lr = config.lr * batch_size / 256
    optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=lr, momentum=config.momentum,
                                nesterov=True, weight_decay=0.0)
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
    head.eval()
    with torch.no_grad():
        acc = topk_accuracy(head(test_x.to(device)).cpu(), test_y)
    pct = f"{100 * config.fraction:g}pct"
    result = {
        "protocol": __doc__.split("\n\n")[1].replace("\n", " "),
        "config": {**asdict(config), "lr_used": lr, "batch_size_used": batch_size, "image_size": image_size},
        f"semisup_{pct}/top1": 100 * acc[1],
        f"semisup_{pct}/top5": 100 * acc[5],
        f"linear_subset_{pct}/top1": 100 * linear_acc[1],
        "subset_indices": subset_indices.tolist(),
    }
    if save_to is not None:
        path = Path(save_to)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
    return result
