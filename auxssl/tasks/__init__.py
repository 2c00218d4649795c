"""Auxiliary pretext tasks that `AuxWrapper` adds to a base method's loss."""

from auxssl.tasks.base import ClassificationPretextTask, PretextTask
from auxssl.tasks.jigsaw import JigsawPrediction, permute_tiles
from auxssl.tasks.rotation import RotationPrediction, rotate

__all__ = [
    "ClassificationPretextTask",
    "JigsawPrediction",
    "PretextTask",
    "RotationPrediction",
    "permute_tiles",
    "rotate",
]
