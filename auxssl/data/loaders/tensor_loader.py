"""The fast default: the whole dataset as a uint8 tensor on the training device, augmented in batches by kornia."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import kornia.augmentation as K
import numpy as np
import torch
from torch import Tensor, nn

from auxssl.data.datasets import ImageDataset
from auxssl.data.loaders.base import derive_seed, epoch_order, num_batches, visible_labels
from auxssl.data.recipes import Recipe, ViewSpec
from baselines.protocol import Batch


class _Clamp01(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(0.0, 1.0)


def kornia_augmentation(
    spec: ViewSpec, mean: Sequence[float], std: Sequence[float], geometric: bool = True
) -> nn.Sequential:
    """The batched pipeline of one view for float images in [0, 1]; parameters are drawn per sample.

    One deliberate difference from the torchvision backend: kornia's ``ColorJitter`` draws the *order* of its
    four adjustments (brightness, contrast, saturation, hue) once per batch, torchvision once per sample. The
    strengths and the application probability are still drawn per sample.

    ``geometric=False`` leaves out crop and flip (for backends that crop while decoding, e.g. FFCV).
    """
    steps: list[nn.Module] = []
    if geometric:
        if spec.scale is not None:
            steps.append(K.RandomResizedCrop((spec.size, spec.size), scale=spec.scale, ratio=spec.ratio))
        else:
            steps.append(K.Resize((spec.size, spec.size), antialias=True))
        if spec.flip_p > 0:
            steps.append(K.RandomHorizontalFlip(p=spec.flip_p))
    if spec.jitter_p > 0:
        steps.append(K.ColorJitter(*spec.jitter, p=spec.jitter_p))
    if spec.grayscale_p > 0:
        steps.append(K.RandomGrayscale(p=spec.grayscale_p))
    if spec.blur_p > 0:
        k = spec.blur_kernel
        steps.append(K.RandomGaussianBlur((k, k), spec.blur_sigma, p=spec.blur_p))
    if spec.solarize_p > 0:
        steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=spec.solarize_p))
    if spec.noise_std > 0:
        steps += [K.RandomGaussianNoise(mean=0.0, std=spec.noise_std, p=1.0), _Clamp01()]
    steps.append(K.Normalize(torch.tensor(mean), torch.tensor(std)))
    return nn.Sequential(*steps)


class TensorLoader:
    """Multi-view batches from an in-memory uint8 tensor, augmented on ``device`` with kornia.

    The images are decoded once (`ImageDataset.to_uint8`; corrupt files skipped and listed in ``skipped``)
    and moved to ``device``. Each batch's augmentation is seeded by ``(seed, epoch, batch)``, so runs are
    reproducible and a resumed epoch sees the same batches.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        recipe: Recipe,
        batch_size: int,
        *,
        labels: np.ndarray | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        images: Tensor | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        self.device = torch.device(device)
        if images is None:
            images, rows = dataset.to_uint8()
        self.rows = np.arange(len(images)) if rows is None else np.asarray(rows)
        self.images = images.to(self.device)
        self.skipped = len(dataset) - len(self.rows)
        self.recipe, self.batch_size, self.labels = recipe, batch_size, labels
        self.seed, self.shuffle, self.drop_last, self.epoch, self.start_batch = seed, shuffle, drop_last, 0, 0
        self.augmentations = nn.ModuleList(kornia_augmentation(s, dataset.mean, dataset.std) for s in recipe.views)
        self.augmentations.to(self.device)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return num_batches(len(self.rows), self.batch_size, self.drop_last)

    @torch.no_grad()
    def augment(self, images: Tensor, seed: int) -> list[Tensor]:
        """All views of a uint8 batch, with the augmentation RNG seeded by ``seed`` (global RNG untouched)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            x = images.float().div_(255.0)
            return [augment(x) for augment in self.augmentations]

    def __iter__(self) -> Iterator[Batch]:
        order = epoch_order(len(self.rows), self.seed, self.epoch, self.shuffle)
        for b in range(self.start_batch, len(self)):
            positions = order[b * self.batch_size : (b + 1) * self.batch_size]
            rows = self.rows[positions.numpy()]
            views = self.augment(self.images[positions.to(self.device)], derive_seed(self.seed, self.epoch, b, 2))
            yield Batch(
                views=views,
                index=torch.from_numpy(rows).to(self.device),
                label=None if self.labels is None else visible_labels(self.labels, rows).to(self.device),
                num_global=self.recipe.num_global,
            )
