"""Backbones: any `nn.Module` mapping images to pooled features, with a discoverable feature dimension.

`build_backbone` returns a torchvision model whose classifier is replaced by `nn.Identity`, so its weights
stay loadable into the matching torchvision model (only the ``fc`` keys are absent). The feature dimension is
stored as ``backbone.feature_dim``; `feature_dim` discovers it for any other module too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision import models


def _resnet10(**kwargs) -> models.ResNet:
    """ResNet-10: one BasicBlock per stage (torchvision's ResNet class), for quick CPU experiments."""
    return models.ResNet(models.resnet.BasicBlock, [1, 1, 1, 1], **kwargs)


_RESNETS: dict[str, Callable[..., models.ResNet]] = {
    "resnet10": _resnet10,
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
    "resnet101": models.resnet101,
}
_REGNETS: dict[str, Callable[..., models.RegNet]] = {
    "regnet_y_400mf": models.regnet_y_400mf,
    "regnet_y_800mf": models.regnet_y_800mf,
    "regnet_y_1_6gf": models.regnet_y_1_6gf,
    "regnet_y_3_2gf": models.regnet_y_3_2gf,
    "regnet_y_8gf": models.regnet_y_8gf,
    "regnet_y_16gf": models.regnet_y_16gf,
    "regnet_y_32gf": models.regnet_y_32gf,
    "regnet_y_128gf": models.regnet_y_128gf,
}
BACKBONES: tuple[str, ...] = tuple(_RESNETS) + tuple(_REGNETS)


def _set_resnet_width(net: models.ResNet, width: int, zero_init_residual: bool) -> None:
    """Rebuild a torchvision ResNet with stage widths ``width·(1, 2, 4, 8)`` instead of 64·(1, 2, 4, 8): same
    module and parameter names, narrower (or wider) tensors, torchvision's initialisation."""
    block = type(net.layer1[0])
    depths = [len(getattr(net, f"layer{i}")) for i in range(1, 5)]
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    for i, depth in enumerate(depths):
        setattr(net, f"layer{i + 1}", net._make_layer(block, width * 2**i, depth, stride=1 if i == 0 else 2))
    net.fc = nn.Linear(width * 8 * block.expansion, net.fc.out_features)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in net.modules():
            if isinstance(m, models.resnet.Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, models.resnet.BasicBlock):
                nn.init.zeros_(m.bn2.weight)


def build_backbone(name: str, cifar_stem: bool = False, zero_init_residual: bool = False, width: int = 64,
                   options: dict[str, Any] | None = None) -> nn.Module:
    """Build a randomly initialised backbone by name.

    Args:
        name: one of `BACKBONES` (ResNet-10/18/34/50/101, RegNetY 400MF … 128GF as in SEER), or ``timm:<model>``
            for any `timm` model (optional extra ``auxssl[timm]``), e.g. ``timm:vit_tiny_patch16_224`` with
            ``options={"img_size": 32, "patch_size": 4}``.
        cifar_stem: replace the ResNet stem by a 3×3 stride-1 convolution without max-pool, the usual
            CIFAR variant (He et al. 2016; SimCLR appendix B.9). Only defined for ResNets.
        zero_init_residual: zero-initialise the last BN of each residual block (Goyal et al. 2017).
        width: ResNets only: channels of the first stage (64 in the standard ResNets; each stage doubles it).
            Narrower ResNets (32, 16) make CPU studies and quick runs cheap (FLOPs scale with width²).
        options: keyword arguments of ``timm.create_model`` (timm backbones only).
    """
    if name.startswith(TIMM_PREFIX):
        if cifar_stem or width != 64 or zero_init_residual:
            raise ValueError("cifar_stem, width and zero_init_residual apply to the built-in ResNets, not to timm "
                             f"models ({name}); set model.cifar_stem=false and pass timm's own options")
        return _timm_backbone(name[len(TIMM_PREFIX):], options or {})
    if options:
        raise ValueError(f"options are for timm backbones; {name!r} takes none")
    if name in _RESNETS:
        kwargs = {} if name == "resnet10" else {"weights": None}
        net: nn.Module = _RESNETS[name](zero_init_residual=zero_init_residual, **kwargs)
        if width != 64:
            if width < 1:
                raise ValueError(f"width must be positive, got {width}")
            _set_resnet_width(net, width, zero_init_residual)
        if cifar_stem:
            net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.maxpool = nn.Identity()
    elif name in _REGNETS:
        if width != 64:
            raise ValueError(f"width is only defined for ResNets, not {name!r}")
        if cifar_stem:
            raise ValueError(f"cifar_stem is only defined for ResNets, not {name!r}")
        net = _REGNETS[name](weights=None)
        if zero_init_residual:
            for m in net.modules():
                if isinstance(m, models.regnet.ResBottleneckBlock):
                    nn.init.zeros_(m.f.c[1].weight)
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    dim = net.fc.in_features
    net.fc = nn.Identity()
    net.feature_dim = dim
    return net


TIMM_PREFIX = "timm:"


def _timm_backbone(model_name: str, options: dict[str, Any]) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``: pooled features), randomly initialised."""
    try:
        import timm
    except ImportError as err:
        raise ImportError(f'backbone timm:{model_name} needs timm: pip install -e ".[timm]"') from err
    net = timm.create_model(model_name, pretrained=False, num_classes=0, **options)
    net.feature_dim = int(net.num_features)
    return net


@torch.no_grad()
def feature_dim(backbone: nn.Module, image_size: int = 32, channels: int = 3) -> int:
    """The dimension of the pooled features ``backbone`` produces.

    Uses ``backbone.feature_dim`` when present, otherwise runs one image through the module in eval mode
    (restoring its mode afterwards) and reads the output width.
    """
    dim = getattr(backbone, "feature_dim", None)
    if isinstance(dim, int):
        return dim
    was_training = backbone.training
    param = next(backbone.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        backbone.eval()
        out = backbone(torch.zeros(1, channels, image_size, image_size, device=device))
    finally:
        backbone.train(was_training)
    if out.dim() != 2:
        raise ValueError(f"a backbone must return pooled features (B, D); this one returned shape {tuple(out.shape)}")
    return int(out.shape[1])
