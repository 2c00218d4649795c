"""Backbones map images to pooled features of a discoverable width and stay torchvision-compatible."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models

from baselines.backbones import build_backbone, feature_dim


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_cifar_resnets(name: str, dim: int) -> None:
    net = build_backbone(name, cifar_stem=True)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    net.eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, dim)
    assert feature_dim(net) == dim


def test_imagenet_style_backbones_and_torchvision_weights() -> None:
    net = build_backbone("regnet_y_400mf")
    net.eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 64, 64)).shape == (2, 440)
    reference = models.regnet_y_400mf(weights=None)
    missing, unexpected = reference.load_state_dict(net.state_dict(), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    assert build_backbone("resnet18").conv1.kernel_size == (7, 7)


def test_feature_dim_discovered_by_a_forward_pass() -> None:
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.train()
    assert feature_dim(net) == 5
    assert net.training  # mode restored


def test_unknown_backbone_names_choices() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        build_backbone("resnet17")
    with pytest.raises(ValueError, match="only defined for ResNets"):
        build_backbone("regnet_y_400mf", cifar_stem=True)


def test_resnet_width_scales_every_stage_and_keeps_parameter_names() -> None:
    standard = build_backbone("resnet18", cifar_stem=True)
    narrow = build_backbone("resnet18", cifar_stem=True, width=16)
    assert list(dict(standard.named_parameters())) == list(dict(narrow.named_parameters()))
    assert narrow.feature_dim == 128 and narrow(torch.rand(2, 3, 32, 32)).shape == (2, 128)
    widths = [narrow.conv1.out_channels, narrow.layer2[0].conv1.out_channels, narrow.layer4[1].conv2.out_channels]
    assert widths == [16, 32, 128]
    ratio = sum(p.numel() for p in standard.parameters()) / sum(p.numel() for p in narrow.parameters())
    assert 15 < ratio < 17  # parameters scale with width²
    assert build_backbone("resnet50", width=32).feature_dim == 1024
    zero = build_backbone("resnet18", width=16, zero_init_residual=True)
    assert all(block.bn2.weight.abs().sum() == 0 for layer in (zero.layer1, zero.layer4) for block in layer)
    zero_init = build_backbone("resnet50", width=16, zero_init_residual=True)
    assert all(block.bn3.weight.abs().sum() == 0 for block in zero_init.layer2)
    with pytest.raises(ValueError, match="only defined for ResNets"):
        build_backbone("regnet_y_400mf", width=32)
