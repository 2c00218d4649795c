"""Frozen-backbone feature extraction with the evaluation transform (no augmentation)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auxssl.data.datasets import ImageDataset
from auxssl.engine.precision import resolve_precision


def normalise_images(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...], size: int | None = None) -> Tensor:
    """uint8 ``(B, 3, H, W)`` → float, optionally resized to ``size``², normalised with the dataset statistics."""
    x = images.float().div_(255.0)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean_t = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset: ImageDataset,
    *,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    images: Tensor | None = None,
    rows: np.ndarray | None = None,
    precision: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Pooled features ``(N, D)`` (float32, CPU) and labels ``(N,)`` of every decodable image of ``dataset``.

    The backbone runs in eval mode (its mode is restored afterwards) on channels-last input, under autocast at
    ``precision`` (``auto``: bf16 where native, as in training, else fp32; ``fp32``; ``bf16``). Pass
    ``images``/``rows`` (from `ImageDataset.to_uint8`) to avoid decoding the dataset again.
    """
    if images is None:
        images, rows = dataset.to_uint8()
    assert rows is not None
    autocast = resolve_precision(precision, torch.device(device)).autocast()
    was_training = backbone.training
    backbone.eval()
    try:
        chunks = []
        for start in range(0, len(images), batch_size):
            x = normalise_images(images[start : start + batch_size].to(device), dataset.mean, dataset.std, image_size)
            with autocast:
                features = backbone(x.contiguous(memory_format=torch.channels_last))
            chunks.append(features.float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(chunks), torch.from_numpy(np.asarray(dataset.labels)[rows])
