"""Shared fixtures: a tiny CNN backbone and a fixed two-view batch, small enough for fast CPU tests.

The default suite is the CPU suite on every machine: GPUs are hidden from it (and from the processes it starts),
so that ``device: auto`` lands on the CPU as in CI. The CUDA tests (``@pytest.mark.cuda``) run on their own:
``AUXSSL_TEST_CUDA=1 python -m pytest -m cuda`` (what ``benchmarks/gpu_check.sh`` does).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

if os.environ.get("AUXSSL_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch first looks for a GPU

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def load_script(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """Load a script of the repository that is not a package module (``examples/…``, ``experiments/…``) by its
    path relative to the repository root, e.g. ``load_script("experiments/schedules_report.py")``. Its folder is
    on ``sys.path`` meanwhile, as when Python runs the script, so it imports its sibling scripts by name."""

    def load(path: str) -> ModuleType:
        monkeypatch.syspath_prepend(str((ROOT / path).parent))
        spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = os.environ.get("AUXSSL_TEST_CUDA") == "1" and torch.cuda.is_available()
    skip = pytest.mark.skip(reason="CUDA tests: AUXSSL_TEST_CUDA=1 python -m pytest -m cuda on a GPU machine")
    for item in items:
        if "cuda" in item.keywords and not cuda:
            item.add_marker(skip)


class TinyBackbone(nn.Module):
    """Conv → BN → ReLU → strided conv → BN → ReLU → global average pool: images to (B, 32) features."""

    feature_dim = 32

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture
def tiny_backbone() -> TinyBackbone:
    torch.manual_seed(0)
    return TinyBackbone()


@pytest.fixture
def two_views() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 16, 16, generator=g)
    return [x, (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)]
