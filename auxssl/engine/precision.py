"""Device and mixed-precision choices, made explicit."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

from auxssl.errors import InputError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available")
    return device


def native_bf16(device: torch.device) -> bool:
    """bf16 that is fast here: a CUDA device with native bf16 (Ampere or newer), or a CPU with native bf16
    (AVX512-BF16/AMX via oneDNN).

    Emulated bf16 never counts: on AVX2-only CPUs bf16 autocast is ~20× slower than fp32, and older GPUs
    (e.g. V100, T4) only emulate it, which `torch.cuda.is_bf16_supported()` accepts by default.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(frozen=True)
class Precision:
    """The autocast dtype (None: fp32) and whether a GradScaler is needed (fp16 on CUDA)."""

    dtype: torch.dtype | None
    device_type: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def label(self) -> str:
        """What runs, for records: ``name``, and where CUDA computes "fp32" in TF32 (cuDNN convolutions by
        default, matmuls when enabled), say so."""
        if self.dtype is not None or self.device_type != "cuda":
            return self.name
        tf32 = [what for what, on in (("convolutions", torch.backends.cudnn.allow_tf32),
                                      ("matmuls", torch.backends.cuda.matmul.allow_tf32)) if on]
        return f"fp32 (TF32 {' and '.join(tf32)})" if tf32 else "fp32"

    @property
    def needs_scaler(self) -> bool:
        return self.dtype is torch.float16 and self.device_type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


#: The training precisions (``train.precision``) and those of feature extraction (``eval.precision``).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FEATURE_PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto``: bf16 where native (see `native_bf16`), else fp32; ``fp16`` only on CUDA (with a GradScaler)."""
    if name == "auto":
        return Precision(torch.bfloat16 if native_bf16(device) else None, device.type)
    if name == "fp32":
        return Precision(None, device.type)
    if name == "bf16":
        return Precision(torch.bfloat16, device.type)
    if name == "fp16":
        if device.type != "cuda":
            raise InputError("fp16 mixed precision needs CUDA; use bf16 or fp32 on CPU")
        return Precision(torch.float16, device.type)
    raise InputError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")


logger = logging.getLogger("auxssl")

#: Convolutions narrower than this are kept in the default layout on CPU (see `channels_last_is_safe`).
MIN_CHANNELS_LAST_WIDTH = 16


def channels_last_is_safe(model: nn.Module, device: torch.device) -> bool:
    """False on CPU when a convolution has fewer than 16 output channels (e.g. ``model.width: 8``): with torch 2.15,
    oneDNN's channels-last convolution backward with 8 channels corrupts the heap as soon as the batch size changes
    (a batch shortened by a skipped image, a last batch), reproduced with a bare ResNet; the default layout is
    unaffected."""
    narrow = any(isinstance(m, nn.Conv2d) and m.out_channels < MIN_CHANNELS_LAST_WIDTH for m in model.modules())
    if device.type == "cpu" and narrow:
        logger.info("channels_last off: convolutions narrower than %d channels (oneDNN issue on CPU)",
                    MIN_CHANNELS_LAST_WIDTH)
        return False
    return True
