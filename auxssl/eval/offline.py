"""Offline evaluation of a saved backbone: load weights, extract features once, run the chosen evaluators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from auxssl.data.datasets import ImageDataset
from auxssl.engine.checkpoint import load_checkpoint
from auxssl.errors import InputError
from auxssl.eval.features import extract_features
from auxssl.eval.knn import KNNProtocol, knn_evaluate
from auxssl.eval.linear import ProbeConfig, linear_probe, mlp_probe
from baselines.backbones import build_backbone


def backbone_settings(state: dict) -> dict:
    """The backbone a training checkpoint was trained with (``{}`` for a plain state_dict)."""
    model = state.get("config", {}).get("model", {}) if isinstance(state.get("config"), dict) else {}
    keys = {"backbone": "arch", "cifar_stem": "cifar_stem", "width": "width", "backbone_args": "options"}
    return {new: model[old] for old, new in keys.items() if old in model}


def load_backbone(path: str | Path, arch: str | None = None, cifar_stem: bool | None = None, width: int | None = None,
                  options: dict | None = None) -> nn.Module:
    """A backbone from a plain state_dict (``auxssl export``) or a training checkpoint holding ``"backbone"``.

    A training checkpoint also tells its architecture (backbone, CIFAR stem, width, timm options): arguments left
    as None are taken from it, else default to a ResNet-18 with the CIFAR stem.
    """
    state = load_checkpoint(path)
    trained = backbone_settings(state)
    if isinstance(state.get("backbone"), dict):
        state = state["backbone"]
    arch = arch or trained.get("arch", "resnet18")
    cifar_stem = trained.get("cifar_stem", True) if cifar_stem is None else cifar_stem
    width = width or trained.get("width", 64)
    options = options if options is not None else trained.get("options") or None
    backbone = build_backbone(arch, cifar_stem=cifar_stem, width=width, options=options)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    problem = f"{path} does not hold {arch} (cifar_stem={cifar_stem}, width={width}) weights"
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise InputError(f"{problem}: {str(err).splitlines()[1].strip()}") from err
    if missing or unexpected:
        raise InputError(f"{problem}: missing {missing[:5]}, unexpected {unexpected[:5]}")
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
    shard: tuple[int, int] = (0, 1),
) -> dict[str, float]:
    """Features of both splits extracted once (evaluation transform), then kNN and/or probes; accuracies in %.

    ``image_size``: the side the images are resized to before the backbone (None: as stored). Evaluate at the
    size the backbone was trained at: the same weights score very differently at another resolution.
    ``decoded``: the two splits' ``to_uint8()`` results, for callers that evaluate repeatedly (the trainer).
    Without ``decoded``, images not already in memory are streamed (memory bounded by a batch and the features).
    ``precision``: of the feature extraction (`extract_features`). ``shard=(rank, world_size)``: under
    torch.distributed every process extracts its share; the evaluators run on rank 0 (the others return ``{}``).
    """
    (train_images, train_rows), (test_images, test_rows) = decoded or ((None, None), (None, None))
    common = dict(device=device, image_size=image_size, precision=precision, shard=shard)
    train_x, train_y = extract_features(backbone, train, images=train_images, rows=train_rows, **common)
    test_x, test_y = extract_features(backbone, test, images=test_images, rows=test_rows, **common)
    if shard[0] != 0:
        return {}
    if not (bool((train_y >= 0).any()) and bool((test_y >= 0).any())):
        raise InputError(f"evaluation needs labels: {train.name if not (train_y >= 0).any() else test.name} has none")
    results: dict[str, float] = {}
    if knn is not None:
        results.update(knn_evaluate(train_x, train_y, test_x, test_y, knn))
    if linear is not None:
        results.update(linear_probe(train_x, train_y, test_x, test_y, linear))
    if mlp is not None:
        results.update(mlp_probe(train_x, train_y, test_x, test_y, mlp))
    return results
