"""Counting host synchronisations: every ``.item()``, ``float()`` or ``bool()`` of a tensor dispatches
``aten._local_scalar_dense``, which on a GPU waits for the device. Used by the tests (at most one per training
step between log steps) and by ``benchmarks/gpu_run.py`` on CPUs."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class ScalarReads(TorchDispatchMode):
    """Inside ``with ScalarReads() as reads:``, ``reads.count`` counts the tensor-to-Python reads."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))
