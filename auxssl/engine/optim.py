"""Optimisers over a method's parameter groups: SGD, LARS (SimCLR/SwAV/SEER) and AdamW."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017), in the form SwAV and SEER use.

    For every parameter ``p`` of a group without ``lars_exclude``: ``g ← g + wd·p``, then
    ``g ← g · eta·‖p‖ / ‖g‖`` (when both norms are positive), then heavy-ball momentum ``v ← m·v + g``,
    ``p ← p - lr·v``. Groups flagged ``lars_exclude`` (biases, norm layers) skip both weight decay and the
    adaptation, as in SimCLR/SwAV.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.02) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        grad = grad.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = torch.where((p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm, torch.ones_like(p_norm))
                    grad = grad.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(param_groups: list[dict[str, Any]], name: str, lr: float, weight_decay: float, momentum: float,
                    lars_eta: float = 0.02, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """An optimiser over ``param_groups``; groups keep their own ``weight_decay`` (0 for bias/norm groups).

    Every group remembers its initial weight decay as ``base_weight_decay`` so schedules can rescale it.
    """
    groups = []
    for group in param_groups:
        g = {k: v for k, v in group.items()}
        g.setdefault("weight_decay", weight_decay)
        g["base_weight_decay"] = g["weight_decay"]
        if name != "lars":
            g.pop("lars_exclude", None)
        groups.append(g)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=betas)
    raise ValueError(f"unknown optimiser {name!r}; choose sgd, lars or adamw")
