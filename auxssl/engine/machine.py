"""The machine a run or benchmark ran on: processor, native bf16, torch, threads, GPU. Recorded next to every
figure, since CPUs differ between machines by 2× or more for the same code."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from auxssl.engine.precision import native_bf16


def cpu_model() -> str:
    """The processor's name with its family and model numbers (``AMD EPYC (family 25, model 17)``): vendors'
    names alone often do not tell generations apart."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in cpuinfo.read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu family", "model") and key not in fields:
            fields[key] = value.strip()
        if not line.strip() and fields:  # the first processor is enough
            break
    name = fields.get("model name", platform.machine())
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def machine_info(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {"device": str(device), "cpu": cpu_model(), "native_bf16": native_bf16(device),
                               "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
