"""Base joint-embedding SSL methods: BYOL, SimCLR, SimSiam, MoCo v2, SwAV, Barlow Twins, VICReg.

Every method follows the `SSLMethod` protocol (`baselines.protocol`) and its loss is a plain function in
`baselines.losses`. This package depends only on torch and torchvision.
"""

from baselines.backbones import BACKBONES, build_backbone, feature_dim
from baselines.barlow_twins import BarlowTwins
from baselines.base import JointEmbeddingMethod, split_weight_decay
from baselines.byol import BYOL
from baselines.ema import cosine_tau, ema_update_
from baselines.moco import MoCoV2
from baselines.no_base import NoBaseLoss
from baselines.protocol import Batch, ContrastSets, SSLMethod, as_batch
from baselines.simclr import SimCLR
from baselines.simsiam import SimSiam
from baselines.swav import SwAV
from baselines.vicreg import VICReg

METHODS: dict[str, type[JointEmbeddingMethod]] = {
    "byol": BYOL,
    "simclr": SimCLR,
    "simsiam": SimSiam,
    "moco_v2": MoCoV2,
    "swav": SwAV,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
    "none": NoBaseLoss,  # no base loss: with tasks, the pretext tasks alone (a control)
}

__all__ = [
    "BACKBONES",
    "METHODS",
    "BYOL",
    "BarlowTwins",
    "Batch",
    "ContrastSets",
    "JointEmbeddingMethod",
    "MoCoV2",
    "NoBaseLoss",
    "SSLMethod",
    "SimCLR",
    "SimSiam",
    "SwAV",
    "VICReg",
    "as_batch",
    "build_backbone",
    "cosine_tau",
    "ema_update_",
    "feature_dim",
    "split_weight_decay",
]
