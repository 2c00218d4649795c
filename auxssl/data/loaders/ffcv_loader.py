"""FFCV backend (optional extra ``auxssl[ffcv]``): write a ``.beton`` once, then load multi-view batches from it.

FFCV's JIT-compiled decoders crop and flip every view while decoding (CPU workers); the remaining colour
augmentations run batched on the training device with the same kornia pipeline as `TensorLoader`.

Install: ``apt-get install -y libopencv-dev libturbojpeg0-dev pkg-config`` then ``pip install -e ".[ffcv]"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from auxssl.data.datasets import ImageDataset
from auxssl.data.loaders.base import (
    EpochOrder,
    LoaderOptions,
    derive_seed,
    num_batches,
)
from auxssl.data.loaders.tensor_loader import KorniaViews
from auxssl.data.recipes import Recipe
from baselines.protocol import Batch

FFCV_INSTALL_HINT = (
    "the FFCV backend needs the optional extra: apt-get install -y libopencv-dev libturbojpeg0-dev pkg-config "
    '&& pip install -e ".[ffcv]"'
)


class _KeepTorchThreads:
    """FFCV sets the process-wide torch thread count to its worker count (at import, when a loader is built and
    from its epoch thread), which would silently slow CPU training; this restores the caller's setting."""

    def __init__(self) -> None:
        self.threads = torch.get_num_threads()

    def restore(self) -> None:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)


def ffcv_available() -> bool:
    keep = _KeepTorchThreads()
    try:
        import ffcv  # noqa: F401  (importable is what is checked)
    except ImportError:
        return False
    finally:
        keep.restore()
    return True


def _require_ffcv() -> None:
    if not ffcv_available():
        raise ImportError(FFCV_INSTALL_HINT)


class _BetonSource:
    """Rows of a decoded uint8 tensor as ``(HWC image, label, dataset index)`` for `DatasetWriter`."""

    def __init__(self, images: torch.Tensor, rows: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.rows, self.labels = images.permute(0, 2, 3, 1).numpy(), rows, labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        row = int(self.rows[i])
        return self.images[i], int(self.labels[row]), row


def write_beton(dataset: ImageDataset, path: str | Path, jpeg: bool | None = None, num_workers: int = 2,
                size: int | None = None) -> Path:
    """Write ``dataset`` (label and dataset index per image) to an FFCV file; corrupt images are skipped.

    Images are stored raw (fastest to decode) unless ``jpeg`` or, by default, when larger than 64 px; ``size``
    resizes them (needed when they differ in size).
    Written to a temporary name and renamed, so a partial file is never left behind.
    """
    _require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images, rows = dataset.to_uint8(size)
    jpeg = images.shape[-1] > 64 if jpeg is None else jpeg
    fields = {
        "image": RGBImageField(write_mode="jpg" if jpeg else "raw"),
        "label": IntField(),
        "index": IntField(),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        DatasetWriter(str(tmp), fields, num_workers=num_workers).from_indexed_dataset(
            _BetonSource(images, rows, dataset.labels)
        )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _traversal(order: EpochOrder) -> object:
    """An FFCV `TraversalOrder` that follows ``order`` (the project's seeded epoch order, shared by every backend).

    FFCV's `Loader` accepts a custom order as an *instance* that it calls with the loader, hence `__call__`."""
    from ffcv.traversal_order.base import TraversalOrder

    class _Order(TraversalOrder):
        def __init__(self) -> None:  # FFCV calls the instance with the loader (below), not the class
            pass

        def __call__(self, loader: object) -> _Order:
            super().__init__(loader)
            return self

        def sample_order(self, epoch: int) -> np.ndarray:
            return order(epoch).numpy()

    return _Order()


class FFCVLoader:
    """Multi-view batches from a ``.beton``: FFCV decodes, `KorniaViews` augments on ``device`` (deterministic in
    ``(seed, epoch, batch)``, with crop boxes, ``good_crops`` honoured).

    ``labels`` (visible labels indexed by dataset row, -1 hidden) go into ``batch.label``; without them the
    batch carries no labels even though the file stores them. The epoch order is the project's (`order`, else
    seeded shuffling as in every backend).
    """

    backend = "ffcv"  # the data.backend it implements, recorded in run.json

    def __init__(
        self,
        path: str | Path,
        dataset: ImageDataset,
        recipe: Recipe,
        batch_size: int,
        options: LoaderOptions = LoaderOptions(),
    ) -> None:
        _require_ffcv()
        self._threads = _KeepTorchThreads()
        from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
        from ffcv.loader import Loader
        from ffcv.pipeline import PipelineSpec
        from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

        self.device = torch.device(options.device)
        seed, drop_last = options.seed, options.drop_last
        self.recipe, self.batch_size, self.seed, self.epoch, self.start_batch = recipe, batch_size, seed, 0, 0
        self.labels = (None if options.labels is None
                       else torch.as_tensor(np.asarray(options.labels, dtype=np.int64), device=self.device))
        self.source_index = torch.as_tensor(dataset.source_indices(), device=self.device)
        epoch_order = options.epoch_order(np.arange(len(dataset)))
        self.augment = KorniaViews(recipe, dataset.mean, dataset.std, self.device, options.good_crops)
        to_device = [ToTensor(), ToDevice(self.device, non_blocking=True), ToTorchImage()]
        pipelines: dict[str, object] = {
            "image": PipelineSpec("image", decoder=SimpleRGBImageDecoder(), transforms=to_device),
            "label": None,
            "index": [IntDecoder(), ToTensor(), Squeeze(), ToDevice(self.device, non_blocking=True)],
        }
        self.loader = Loader(
            str(path),
            batch_size=batch_size,
            num_workers=options.num_workers,
            order=_traversal(epoch_order),
            seed=seed,
            drop_last=drop_last,
            pipelines=pipelines,
        )
        self.drop_last = drop_last
        self._threads.restore()

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """FFCV cannot start mid-epoch: the first ``start_batch`` batches are decoded and dropped."""
        self.epoch, self.start_batch = epoch, start_batch
        self.loader.next_epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.loader)
        return num_batches(self.loader.reader.num_samples, self.batch_size, False)

    def __iter__(self) -> Iterator[Batch]:
        epoch = iter(self.loader)
        try:
            for b, (images, index) in enumerate(epoch):  # the file's fields in order: image, index
                self._threads.restore()
                if b < self.start_batch:
                    continue
                views, boxes, params, task_views = self.augment(images, derive_seed(self.seed, self.epoch, b, 3))
                rows = index.long()
                yield Batch(
                    views=views,
                    index=self.source_index[rows],
                    label=None if self.labels is None else self.labels[rows],
                    num_global=self.recipe.num_global,
                    crop_boxes=boxes,
                    aug_params=params,
                    task_views=task_views,
                )
        finally:  # an epoch left early (or a loader dropped) must not leave FFCV's reader thread running
            epoch.close()
