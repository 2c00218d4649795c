"""Exponential moving average of momentum (target) networks, with BYOL's cosine τ schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_tau(step: int, total_steps: int, base_tau: float, final_tau: float = 1.0) -> float:
    """BYOL's EMA coefficient (Grill et al. 2020, sec. 3.2): ``τ_k = 1 - (1 - τ_base)(cos(πk/K) + 1)/2``.

    Generalised to end at ``final_tau`` (1 in BYOL); ``step`` beyond ``total_steps`` keeps ``final_tau``.
    """
    if total_steps <= 0:
        return final_tau
    progress = min(max(step, 0) / total_steps, 1.0)
    return final_tau - (final_tau - base_tau) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update_(online: nn.Module, target: nn.Module, tau: float) -> None:
    """``θ_target ← τ·θ_target + (1 - τ)·θ_online`` for every parameter (buffers are left to the target)."""
    online_params = [p.detach() for p in online.parameters()]
    target_params = list(target.parameters())
    if len(online_params) != len(target_params):
        raise ValueError("online and target networks must have the same parameters")
    torch._foreach_lerp_(target_params, online_params, 1.0 - tau)  # one fused call instead of one per tensor


def ema_update_pairs_(pairs: list[tuple[nn.Module, nn.Module]], tau: float) -> None:
    """`ema_update_` for every ``(online, target)`` pair (a method's `momentum_pairs`)."""
    for online, target in pairs:
        ema_update_(online, target, tau)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters take no gradient: the initial target network."""
    import copy

    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target
