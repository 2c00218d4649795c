"""Noise control in the training loop: applies the configured knobs to each batch and measures the noise present.

The true labels are used to *inject* noise (false positives from another class, batches grouped by class) and to
*measure* it, never by the loss; the loss sees only the labels revealed for false-negative elimination.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from auxssl.config import NoiseConfig
from auxssl.data.datasets import ImageDataset
from auxssl.data.labels import reveal_labels
from auxssl.data.loaders import GoodCrops, OrderFactory, derive_seed
from auxssl.errors import InputError
from auxssl.noise.negatives import false_negative_rates, lookup, random_pair_weight, same_class_weight
from auxssl.noise.positives import crop_overlap_rates, false_positive_rate, inject_false_positives
from auxssl.noise.sampling import ClassGroupedOrder
from baselines.protocol import Batch, ContrastSets


def contrast_sets(model: nn.Module, batch: Batch) -> ContrastSets | None:
    """The model's negatives for this batch (None for a method without negatives)."""
    method = getattr(model, "contrast_sets", None)
    return None if method is None else method(batch)


class NoiseControl:
    """Applies ``config`` (a `NoiseConfig`) to training batches and measures the realised noise.

    Args:
        config: the knobs.
        train: the training images (their true labels, and their source indices, which `Batch.index` holds).
        seed: the run's seed; which labels are revealed and which pairs are injected depend only on it (and the
            step), so resumed runs are exact.
        rank: the process rank (each draws its own injections).
    """

    def __init__(self, config: NoiseConfig, train: ImageDataset, seed: int, rank: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.config, self.seed, self.rank = config, seed, rank
        labels = np.asarray(train.labels, dtype=np.int64)
        if (config.fn_elimination or config.fn_injection.classes_per_batch) and not (labels >= 0).all():
            raise InputError("noise.fn_elimination and noise.fn_injection need a label for every training image")
        source = train.source_indices()
        table = np.full(len(train.source), -1, dtype=np.int64)
        table[source] = labels
        self.true_labels = torch.from_numpy(table).to(device)
        self.revealed: Tensor | None = None
        if config.fn_elimination > 0 and config.fn_elimination_mode == "images":
            revealed = np.full(len(train.source), -1, dtype=np.int64)
            revealed[source] = reveal_labels(labels, config.fn_elimination, seed)
            self.revealed = torch.from_numpy(revealed).to(device)
        self.labelled = bool((labels >= 0).any())

    # ------------------------------------------------------------------------------------------ loader side
    def order(self, labels: np.ndarray, batch_size: int) -> OrderFactory | None:
        """The epoch order for false-negative injection (None: the loader's seeded shuffling). ``labels`` are the
        true labels of the loader's dataset rows; ``batch_size`` is the per-process batch."""
        classes = self.config.fn_injection.classes_per_batch
        if classes is None:
            return None
        return lambda rows: ClassGroupedOrder(labels[rows], classes, batch_size, derive_seed(self.seed, self.rank))

    def good_crops(self) -> GoodCrops | None:
        if self.config.good_crop_fraction <= 0:
            return None
        return GoodCrops(self.config.good_crop_fraction, self.config.good_crop_iou)

    # ------------------------------------------------------------------------------------------ batch side
    def prepare(self, batch: Batch, model: nn.Module, step: int) -> dict[str, Tensor]:
        """Inject false positives and set ``batch.negative_weight`` as configured (in place); return the measured
        rates (``noise/fn_rate_raw``, ``noise/fn_rate``, ``noise/fp_rate``) that can be computed for this batch."""
        metrics: dict[str, Tensor] = {}
        true = None if batch.index is None else lookup(self.true_labels, batch.index)
        injected = None
        if self.config.fp_injection > 0:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, step, self.rank, 7))
            known = true if self.labelled else None
            injected = inject_false_positives(batch, self.config.fp_injection, known, generator)
        eliminating = self.config.fn_elimination > 0
        sets = contrast_sets(model, batch) if (eliminating or self.config.measure) else None
        if eliminating:
            if sets is None:
                raise InputError("noise.fn_elimination: the method reports no negatives (contrast_sets) for this batch")
            if self.revealed is not None:  # "images": the labels of a fraction of the images are revealed
                batch.negative_weight = same_class_weight(lookup(self.revealed, sets.anchors),
                                                          lookup(self.revealed, sets.candidates))
            else:  # "pairs": a fraction of the false-negative pairs is removed (the experimenter's intervention)
                generator = torch.Generator().manual_seed(derive_seed(self.seed, step, self.rank, 8))
                batch.negative_weight = random_pair_weight(lookup(self.true_labels, sets.anchors),
                                                           lookup(self.true_labels, sets.candidates),
                                                           self.config.fn_elimination, generator)
        if not self.config.measure:
            return metrics
        if sets is not None and self.labelled:
            metrics.update(false_negative_rates(sets.anchors, sets.candidates, self.true_labels, batch.negative_weight))
        fp_rate = false_positive_rate(injected, batch.crop_boxes, self.config.good_crop_iou)
        if fp_rate is not None:
            metrics["noise/fp_rate"] = fp_rate
        if batch.crop_boxes is not None:
            metrics.update(crop_overlap_rates(batch.crop_boxes))
        return metrics
