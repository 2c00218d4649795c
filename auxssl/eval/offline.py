"""Offline evaluation of a saved backbone: load weights, extract features once, run the chosen evaluators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from auxssl.data.datasets import ImageDataset
from auxssl.eval.features import extract_features
from auxssl.eval.knn import KNNProtocol, knn_evaluate
from auxssl.eval.linear import ProbeConfig, linear_probe, mlp_probe
from baselines.backbones import build_backbone


def load_backbone(path: str | Path, arch: str, cifar_stem: bool = False) -> nn.Module:
    """A backbone from a plain state_dict (``auxssl export``) or a training checkpoint holding ``"backbone"``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "backbone" in state and isinstance(state["backbone"], dict):
        state = state["backbone"]
    backbone = build_backbone(arch, cifar_stem=cifar_stem)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    problem = f"{path} does not hold {arch} (cifar_stem={cifar_stem}) weights"
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{problem}: {str(err).splitlines()[1].strip()}") from err
    if missing or unexpected:
        raise ValueError(f"{problem}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return backbone


def evaluate_backbone(
    backbone: nn.Module,
    train: ImageDataset,
    test: ImageDataset,
    *,
    knn: KNNProtocol | None = KNNProtocol(),
    linear: ProbeConfig | None = None,
    mlp: ProbeConfig | None = None,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    decoded: tuple[tuple[torch.Tensor, np.ndarray], tuple[torch.Tensor, np.ndarray]] | None = None,
    precision: str = "auto",
) -> dict[str, float]:
    """Features of both splits extracted once (evaluation transform), then kNN and/or probes; accuracies in %.

    ``image_size``: the side the images are resized to before the backbone (None: as stored). Evaluate at the
    size the backbone was trained at: the same weights score very differently at another resolution.
    ``decoded``: the two splits' ``to_uint8()`` results, for callers that evaluate repeatedly (the trainer).
    ``precision``: of the feature extraction (`extract_features`).
    """
    (train_images, train_rows), (test_images, test_rows) = decoded or (train.to_uint8(), test.to_uint8())
    train_x, train_y = extract_features(backbone, train, device=device, images=train_images, rows=train_rows,
                                        image_size=image_size, precision=precision)
    test_x, test_y = extract_features(backbone, test, device=device, images=test_images, rows=test_rows,
                                      image_size=image_size, precision=precision)
    results: dict[str, float] = {}
    if knn is not None:
        results.update(knn_evaluate(train_x, train_y, test_x, test_y, knn))
    if linear is not None:
        results.update(linear_probe(train_x, train_y, test_x, test_y, linear))
    if mlp is not None:
        results.update(mlp_probe(train_x, train_y, test_x, test_y, mlp))
    return results
