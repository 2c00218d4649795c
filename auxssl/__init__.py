"""auxssl: auxiliary pretext tasks that make joint-embedding self-supervised learning converge faster.

Addepalli et al., "Towards Efficient and Effective Self-Supervised Learning of Visual Representations",
ECCV 2022: ``L = L_base + λ · CE(h(f(rot_k(x))), k)``.

The names below are imported on first use, so that ``auxssl --version`` and config errors answer without
loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from auxssl.version import __version__

_EXPORTS = {
    "AuxiliaryLoss": "auxssl.auxiliary",
    "AuxWrapper": "auxssl.wrapper",
    "ClassificationPretextTask": "auxssl.tasks",
    "JigsawPrediction": "auxssl.tasks",
    "PretextTask": "auxssl.tasks",
    "RotationPrediction": "auxssl.tasks",
}

if TYPE_CHECKING:
    from auxssl.auxiliary import AuxiliaryLoss
    from auxssl.tasks import ClassificationPretextTask, JigsawPrediction, PretextTask, RotationPrediction
    from auxssl.wrapper import AuxWrapper


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'auxssl' has no attribute {name!r}")


__all__ = [
    "AuxWrapper",
    "AuxiliaryLoss",
    "ClassificationPretextTask",
    "JigsawPrediction",
    "PretextTask",
    "RotationPrediction",
    "__version__",
]
