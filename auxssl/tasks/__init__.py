"""Auxiliary pretext tasks that `AuxWrapper` / `AuxiliaryLoss` add to a base method's loss.

A new task is a `PretextTask` module in its own file here, registered in `TASKS` (its config name); a task kept
outside auxssl is named in configs by import path, ``module:Class`` (`auxssl.plugins`).
"""

from torch import nn

from auxssl.tasks.augself import AugSelf
from auxssl.tasks.base import ClassificationPretextTask, PretextTask
from auxssl.tasks.essl import ESSLRotation
from auxssl.tasks.jigsaw import JigsawPrediction, permute_tiles
from auxssl.tasks.rotation import RotationPrediction, rotate

#: The tasks a config names (``tasks: [{name: rotation}]``); the one list of them.
TASKS: dict[str, type[nn.Module]] = {"rotation": RotationPrediction, "jigsaw": JigsawPrediction, "augself": AugSelf,
                                   "essl": ESSLRotation}

__all__ = [
    "AugSelf",
    "ClassificationPretextTask",
    "ESSLRotation",
    "JigsawPrediction",
    "PretextTask",
    "RotationPrediction",
    "TASKS",
    "permute_tiles",
    "rotate",
]
