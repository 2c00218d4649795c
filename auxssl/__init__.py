"""auxssl: auxiliary pretext tasks that make joint-embedding self-supervised learning converge faster.

Addepalli et al., "Towards Efficient and Effective Self-Supervised Learning of Visual Representations",
ECCV 2022: ``L = L_base + λ · CE(h(f(rot_k(x))), k)``.
"""

from auxssl.tasks import ClassificationPretextTask, JigsawPrediction, PretextTask, RotationPrediction
from auxssl.wrapper import AuxWrapper

__version__ = "0.1.0"

__all__ = [
    "AuxWrapper",
    "ClassificationPretextTask",
    "JigsawPrediction",
    "PretextTask",
    "RotationPrediction",
    "__version__",
]
