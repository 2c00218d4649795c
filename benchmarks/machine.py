"""What every benchmark records next to its figures: the processor, whether bf16 is native, torch and threads."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from auxssl.engine.precision import native_bf16


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {"device": str(device), "cpu": cpu_model(), "native_bf16": native_bf16(device),
                               "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
