"""The fast default: the whole dataset as a uint8 tensor on the training device, augmented in batches by kornia."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import kornia.augmentation as K
import numpy as np
import torch
from torch import Tensor, nn

from auxssl.data.datasets import ImageDataset
from auxssl.data.loaders.base import (
    GoodCrops,
    LoaderOptions,
    derive_seed,
    fill_skipped,
    num_batches,
    visible_labels,
)
from auxssl.data.params import identity_params, stack_views
from auxssl.data.recipes import Recipe, ViewSpec
from auxssl.noise.crops import crop_to_box, redraw_some_good
from baselines.protocol import Batch


class _Clamp01(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(0.0, 1.0)


def kornia_augmentation(spec: ViewSpec, mean: Sequence[float], std: Sequence[float],
                        batched_crop: bool = False) -> nn.Sequential:
    """The batched pipeline of one view for float images in [0, 1]; parameters are drawn per sample.

    One deliberate difference from the torchvision backend: kornia's ``ColorJitter`` draws the *order* of its
    four adjustments (brightness, contrast, saturation, hue) once per batch, torchvision once per sample. The
    strengths and the application probability are still drawn per sample.

    ``batched_crop``: crop and resize the whole batch in one warp (kornia's ``cropping_mode="resample"``) rather
    than one crop and resize per image (``"slice"``, the default). Both give the same pixels from the same crop
    boxes to within 1e-4 (tested); the batched warp is one kernel on a GPU, but up to 3× slower on a CPU at 224 px.
    """
    steps: list[nn.Module] = []
    if spec.scale is not None:
        steps.append(K.RandomResizedCrop((spec.size, spec.size), scale=spec.scale, ratio=spec.ratio,
                                         cropping_mode="resample" if batched_crop else "slice"))
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


def _corners_to_crop(corners: Tensor) -> Tensor:
    """Kornia's crop corners ``(B, 4, 2)`` (inclusive pixel coordinates) as ``(left, top, width, height)``."""
    left, top = corners[:, 0, 0], corners[:, 0, 1]
    return torch.stack([left, top, corners[:, 1, 0] - left + 1, corners[:, 2, 1] - top + 1], dim=1).round().long()


def _crop_to_corners(crop: Tensor) -> Tensor:
    left, top, right, bottom = crop[:, 0], crop[:, 1], crop[:, 0] + crop[:, 2] - 1, crop[:, 1] + crop[:, 3] - 1
    return torch.stack([torch.stack([left, top], 1), torch.stack([right, top], 1), torch.stack([right, bottom], 1),
                        torch.stack([left, bottom], 1)], dim=1).float()


def _recorded(step: nn.Module, params: dict[str, Tensor], record: dict[str, Tensor]) -> None:
    """Write what ``step`` drew (its kornia ``params``) into the view's parameter ``record`` (`auxssl.data.params`);
    samples it was not applied to keep their identity values."""
    applied = params["batch_prob"].to(record["flip"].device) > 0.5
    if isinstance(step, K.RandomHorizontalFlip):
        record["flip"] = applied
    elif isinstance(step, K.ColorJitter):
        names = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
        factors = torch.stack([params[n].to(record["jitter"]) for n in names], dim=1)
        record["jitter"] = torch.where(applied[:, None], factors, record["jitter"])
    elif isinstance(step, K.RandomGrayscale):
        record["grayscale"] = applied
    elif isinstance(step, K.RandomGaussianBlur):
        sigma = params["sigma"].to(record["blur_sigma"])
        record["blur_sigma"] = torch.where(applied, sigma.reshape(len(applied), -1)[:, 0], 0.0)
    elif isinstance(step, K.RandomSolarize):
        record["solarize"] = applied


class KorniaViews:
    """The views of uint8 image batches, augmented on their device by the recipe's kornia pipelines.

    Every random step's parameters are drawn explicitly (`forward_parameters`, the same draws the step would
    make), so every batch comes with its crop boxes and augmentation parameters (`auxssl.data.params`) and
    ``good_crops`` can redraw the second view's crop (noise control).
    """

    def __init__(self, recipe: Recipe, mean: Sequence[float], std: Sequence[float], device: torch.device,
                 good_crops: GoodCrops | None = None) -> None:
        self.recipe, self.device, self.good_crops = recipe, device, good_crops
        batched = device.type == "cuda"  # one warp per view and batch on a GPU; per-image crops on a CPU (faster)
        self.augmentations = nn.ModuleList(kornia_augmentation(s, mean, std, batched)
                                           for s in recipe.all_views).to(device)

    @torch.no_grad()
    def __call__(self, images: Tensor, seed: int
                 ) -> tuple[list[Tensor], Tensor | None, dict[str, Tensor], list[Tensor]]:
        """The views of a uint8 batch, with the augmentation RNG seeded by ``seed`` (global RNG untouched), their
        crop boxes ``(V, B, 4)`` (None unless every view is cropped), augmentation parameters, and the task
        views (`Recipe.task_views`, drawn last; no boxes or parameters)."""
        devices = [self.device] if self.device.type == "cuda" else []
        views: list[Tensor] = []
        crops: list[Tensor | None] = []
        records: list[dict[str, Tensor]] = []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            source = images.float().div_(255.0)
            for v, augment in enumerate(self.augmentations):
                record = identity_params(len(images), self.device)
                x, crops_here = source, None
                for step in augment:
                    if not isinstance(step, K.AugmentationBase2D) or isinstance(step, K.Normalize):
                        x = step(x)
                        continue
                    params = step.forward_parameters(x.shape)  # the draws step(x) would make, made visible
                    if isinstance(step, K.RandomResizedCrop):
                        if v == 1 and self.good_crops is not None and crops[0] is not None:
                            params["src"] = self._force_good(params["src"], crops[0], x.shape[-2:], seed)
                        crops_here = _corners_to_crop(params["src"]).cpu()
                    x = step(x, params=params)
                    _recorded(step, params, record)
                views.append(x)
                crops.append(crops_here)
                records.append(record)
        n = len(self.recipe.views)
        views, task_views, crops = views[:n], views[n:], crops[:n]
        params = stack_views(records[:n])
        if any(c is None for c in crops):
            return views, None, params, task_views
        size = torch.tensor([images.shape[-1], images.shape[-2]], dtype=torch.float64)
        return views, torch.stack([crop_to_box(c, size) for c in crops]).to(self.device), params, task_views

    def _force_good(self, corners: Tensor, reference: Tensor, image_size: torch.Size, seed: int) -> Tensor:
        """Redraw the second view's crop of the samples forced to be good pairs."""
        spec, good = self.recipe.views[1], self.good_crops
        assert good is not None and spec.scale is not None
        n = corners.shape[0]
        crops = redraw_some_good(_corners_to_crop(corners).cpu(), reference, torch.full((n,), image_size[0]),
                                 torch.full((n,), image_size[1]), spec.scale, spec.ratio, good.fraction, good.min_iou,
                                 torch.Generator().manual_seed(derive_seed(seed, 6)))
        return _crop_to_corners(crops).to(corners)


class TensorLoader:
    """Multi-view batches from an in-memory uint8 tensor, augmented on ``device`` with kornia.

    The images are decoded once (`ImageDataset.to_uint8`; a file that does not decode is counted in ``skipped`` and
    its place taken by the next image that does, so an epoch keeps one sample per dataset row; images of
    different sizes resized to the recipe's view size, aspect ratio not kept) and moved to ``device``. Each batch's
    augmentation is seeded by ``(seed, epoch, batch)``, so runs are reproducible and a resumed epoch sees the same
    batches. Batches carry their crop boxes (`KorniaViews`).
    """

    backend = "tensor"  # the data.backend it implements, recorded in run.json

    def __init__(
        self,
        dataset: ImageDataset,
        recipe: Recipe,
        batch_size: int,
        options: LoaderOptions = LoaderOptions(),
        *,
        images: Tensor | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        """``images``/``rows``: an already decoded ``to_uint8`` result (else the dataset is decoded here)."""
        self.device = torch.device(options.device)
        if images is None:  # mixed-size images are stored at the recipe's largest view size
            images, rows = dataset.to_uint8(dataset.storage_size(max(spec.size for spec in recipe.all_views)))
        decoded_rows = np.arange(len(images)) if rows is None else np.asarray(rows)
        self.images = images.to(self.device)
        self.skipped = len(dataset) - len(decoded_rows)
        # one slot per dataset row; an image that did not decode is replaced by the next one that did
        self.slots = torch.from_numpy(fill_skipped(decoded_rows, len(dataset)) if self.skipped else
                                      np.arange(len(decoded_rows)))
        self.rows = decoded_rows[self.slots.numpy()]  # the dataset row each slot shows
        self.source_index = dataset.source_indices()[self.rows]
        self.recipe, self.batch_size, self.labels = recipe, batch_size, options.labels
        self.seed, self.drop_last, self.epoch, self.start_batch = options.seed, options.drop_last, 0, 0
        self.order = options.epoch_order(self.rows)
        self.augment = KorniaViews(recipe, dataset.mean, dataset.std, self.device, options.good_crops)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return num_batches(len(self.rows), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        order = self.order(self.epoch)
        for b in range(self.start_batch, len(self)):
            positions = order[b * self.batch_size : (b + 1) * self.batch_size]
            rows = self.rows[positions.numpy()]
            images = self.images[self.slots[positions].to(self.device)]
            views, boxes, params, task_views = self.augment(images, derive_seed(self.seed, self.epoch, b, 2))
            yield Batch(
                views=views,
                index=torch.from_numpy(self.source_index[positions.numpy()]).to(self.device),
                label=None if self.labels is None else visible_labels(self.labels, rows).to(self.device),
                num_global=self.recipe.num_global,
                crop_boxes=boxes,
                aug_params=params,
                task_views=task_views,
            )
