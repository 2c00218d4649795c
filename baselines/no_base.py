"""The null base method: no joint-embedding loss, for training with auxiliary tasks alone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from baselines.base import JointEmbeddingMethod
from baselines.protocol import Batch, as_batch


class NoBaseLoss(JointEmbeddingMethod):
    """A backbone and a zero loss: wrapped in `auxssl.AuxWrapper`, the run trains on its pretext tasks alone.

    This is the control of Addepalli et al. 2022 (table 4, rotation prediction alone): it separates "the
    auxiliary task alone learns fast" from "the auxiliary task makes the base method better". Views are not
    encoded (no backbone call), so the run costs only its tasks.
    """

    num_views = None

    def forward(self, batch: Batch | Sequence[Tensor]) -> dict[str, Tensor]:
        batch = as_batch(batch)
        return {"loss": torch.zeros((), device=batch.views[0].device)}
