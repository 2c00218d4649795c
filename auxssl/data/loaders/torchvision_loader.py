"""The reference backend: a torch `DataLoader` with per-sample torchvision transforms in worker processes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from auxssl.data.datasets import CorruptImageError, ImageDataset
from auxssl.data.loaders.base import (
    EpochOrder,
    GoodCrops,
    LoaderOptions,
    derive_seed,
    num_batches,
    visible_labels,
)
from auxssl.data.params import IDENTITY, identity_params, stack_views
from auxssl.data.recipes import Recipe, ViewSpec
from auxssl.errors import InputError
from auxssl.noise.crops import crop_to_box, redraw_some_good
from baselines.protocol import Batch


def torchvision_transform(spec: ViewSpec, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """The per-sample pipeline of one view (PIL image → normalised float tensor)."""
    steps: list[torch.nn.Module] = []
    if spec.scale is not None:
        steps.append(v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio, antialias=True))
    else:
        steps.append(v2.Resize((spec.size, spec.size), antialias=True))
    if spec.flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(spec.flip_p))
    if spec.jitter_p > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(*spec.jitter)], p=spec.jitter_p))
    if spec.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(spec.grayscale_p))
    if spec.blur_p > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(spec.blur_kernel, spec.blur_sigma)], p=spec.blur_p))
    if spec.solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=spec.solarize_p))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if spec.noise_std > 0:
        steps.append(v2.GaussianNoise(sigma=spec.noise_std, clip=True))
    steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


#: The recorded flag of each random step that is applied or not as a whole.
_RECORDED_FLAG = {v2.RandomHorizontalFlip: "flip", v2.RandomGrayscale: "grayscale", v2.RandomSolarize: "solarize"}


def _run_recorded(steps: Sequence[torch.nn.Module], image: Any, record: dict[str, Tensor]) -> Any:
    """Apply ``steps`` to one image, drawing each random step's parameters explicitly — the same draws, in the
    same order, as the steps' own ``forward`` — and write them into the view's ``record`` (`auxssl.data.params`,
    one sample)."""
    for step in steps:
        if isinstance(step, v2.RandomApply):  # colour jitter or blur, applied with probability p
            if torch.rand(1) >= step.p:
                continue
            inner = step.transforms[0]
            params = inner.make_params([image])
            image = inner.transform(image, params)
            if isinstance(inner, v2.ColorJitter):
                names = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
                drawn = [params[n] if params[n] is not None else i for n, i in zip(names, IDENTITY["jitter"])]
                record["jitter"][0] = torch.tensor(drawn)
            elif isinstance(inner, v2.GaussianBlur):
                record["blur_sigma"][0] = params["sigma"][0]
        elif type(step) in _RECORDED_FLAG:
            if torch.rand(1) >= step.p:
                continue
            image = step.transform(image, step.make_params([image]))
            record[_RECORDED_FLAG[type(step)]][0] = True
        else:
            image = step(image)
    return image


class _SeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(dataset position, per-sample seed)`` for one epoch; `set_epoch` selects the epoch."""

    def __init__(self, n: int, seed: int, order: EpochOrder) -> None:
        self.n, self.seed, self.order, self.epoch, self.start = n, seed, order, 0, 0

    def __len__(self) -> int:
        return self.n - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order(self.epoch).tolist()
        for position in range(self.start, self.n):
            yield order[position], derive_seed(self.seed, self.epoch, position, 1)


_Sample = tuple[list[Tensor], int, Tensor | None, dict[str, Tensor]]


class _MultiViewDataset(Dataset):
    """Decodes one image and draws its views; every random parameter is drawn explicitly (`make_params`, the same
    draws the transforms would make) so that the crop boxes and augmentation parameters are known and the second
    crop can be forced to be good."""

    def __init__(self, dataset: ImageDataset, transforms: list[v2.Compose], recipe: Recipe,
                 good_crops: GoodCrops | None) -> None:
        self.dataset, self.recipe, self.good_crops = dataset, recipe, good_crops
        self.crops = [t.transforms[0] if isinstance(t.transforms[0], v2.RandomResizedCrop) else None
                      for t in transforms]
        self.rests = [t.transforms[1:] if c is not None else t.transforms for t, c in zip(transforms, self.crops)]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> tuple[_Sample, list[int]]:
        """The sample's views, row and crop boxes, and the rows that failed to decode on the way: an image that
        cannot be decoded is replaced by the next one that can (same augmentation seed), so batches keep their
        size and, under torch.distributed, every rank its number of steps."""
        row, seed = item
        failed: list[int] = []
        while True:
            try:
                image = self.dataset.load(row)
                break
            except CorruptImageError:
                failed.append(row)
                if len(failed) == len(self.dataset):
                    raise InputError(f"no image of {self.dataset.name} can be decoded") from None
                row = (row + 1) % len(self.dataset)
        # per-sample augmentation independent of worker count and resumption, drawn from a seeded CPU generator
        # whose state is restored afterwards: with num_workers=0 this runs in the training process, whose own
        # random streams (rotation labels, CUDA's included) must not be reseeded by the loader
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            height, width = v2.functional.get_size(image)
            views, crops, records = [], [], []
            for v, (crop, rest) in enumerate(zip(self.crops, self.rests)):
                records.append(identity_params(1))
                if crop is None:
                    views.append(_run_recorded(rest, image, records[-1]))
                    crops.append(None)
                    continue
                params = crop.make_params([image])
                box = torch.tensor([[params["left"], params["top"], params["width"], params["height"]]])
                if v == 1 and self.good_crops is not None and crops[0] is not None:
                    box = self._force_good(box, crops[0], height, width, seed)
                    params = dict(left=int(box[0, 0]), top=int(box[0, 1]), width=int(box[0, 2]), height=int(box[0, 3]))
                crops.append(box)
                views.append(_run_recorded(rest, crop.transform(image, params), records[-1]))
            n = len(self.recipe.views)  # the task views (drawn last) have no boxes or parameters in the batch
            crops, records = crops[:n], records[:n]
            boxes = None
            if all(c is not None for c in crops):
                size = torch.tensor([width, height], dtype=torch.float64)
                boxes = torch.cat([crop_to_box(c, size) for c in crops])
            return (views, row, boxes, {k: v[:, 0] for k, v in stack_views(records).items()}), failed

    def _force_good(self, box: Tensor, reference: Tensor, height: int, width: int, seed: int) -> Tensor:
        spec, good = self.recipe.views[1], self.good_crops
        assert good is not None and spec.scale is not None
        return redraw_some_good(box, reference, torch.tensor([height]), torch.tensor([width]), spec.scale, spec.ratio,
                                good.fraction, good.min_iou, torch.Generator().manual_seed(derive_seed(seed, 6)))


def _collate(samples: list[tuple[_Sample, list[int]]]
             ) -> tuple[list[Tensor], Tensor, Tensor | None, dict[str, Tensor], list[int]]:
    kept = [s for s, _ in samples]
    failed = [row for _, rows in samples for row in rows]
    views = [torch.stack([s[0][v] for s in kept]) for v in range(len(kept[0][0]))]
    boxes = None if kept[0][2] is None else torch.stack([s[2] for s in kept], dim=1)
    params = {name: torch.stack([s[3][name] for s in kept], dim=1) for name in kept[0][3]}
    return views, torch.tensor([s[1] for s in kept]), boxes, params, failed


class TorchvisionLoader:
    """Multi-view batches from per-sample torchvision transforms in ``num_workers`` processes.

    An image that cannot be decoded is replaced by the next one that can (batches keep their size) and noted in
    the dataset (`ImageDataset.note_skipped`); ``skipped`` counts such failures and each batch reports its own
    count in ``batch.extra["skipped"]``.
    """

    backend = "torchvision"  # the data.backend it implements, recorded in run.json

    def __init__(
        self,
        dataset: ImageDataset,
        recipe: Recipe,
        batch_size: int,
        options: LoaderOptions = LoaderOptions(),
    ) -> None:
        seed, num_workers, drop_last = options.seed, options.num_workers, options.drop_last
        self.dataset, self.recipe, self.batch_size = dataset, recipe, batch_size
        self.labels, self.device, self.drop_last = options.labels, torch.device(options.device), drop_last
        self.source_index = torch.from_numpy(dataset.source_indices())
        self.sampler = _SeededSampler(len(dataset), seed, options.epoch_order(np.arange(len(dataset))))
        transforms = [torchvision_transform(spec, dataset.mean, dataset.std) for spec in recipe.all_views]
        self.loader = DataLoader(
            _MultiViewDataset(dataset, transforms, recipe, options.good_crops),
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=_collate,
            drop_last=drop_last,
            persistent_workers=num_workers > 0,
            pin_memory=self.device.type == "cuda",
            # its own generator for the workers' base seed: without one, every iter() draws it from the global
            # RNG, which would shift the global stream (rotation labels…) after a resume restored it
            generator=torch.Generator().manual_seed(seed),
        )
        self.skipped = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.epoch, self.sampler.start = epoch, start_batch * self.batch_size

    def __len__(self) -> int:
        return num_batches(len(self.dataset), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.recipe.views)
        for views, rows, boxes, params, failed in self.loader:
            if failed:
                self.dataset.note_skipped(failed)
            skipped = len(failed)
            self.skipped += skipped
            batch = Batch(
                views=views[:n],
                task_views=views[n:],
                index=self.source_index[rows],
                label=visible_labels(self.labels, rows.numpy()),
                num_global=self.recipe.num_global,
                crop_boxes=boxes,
                aug_params=params,
                extra={"skipped": skipped},
            )
            yield batch.to(self.device, non_blocking=True)
