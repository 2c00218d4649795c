"""Optimisers over a method's parameter groups: SGD, LARS (SimCLR/SwAV/SEER) and AdamW."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) exactly as solo-learn's ``solo/utils/lars.py``, the
    optimiser of the solo-learn CIFAR recipes our configs copy (``eta=0.02, clip_lr=True``).

    For a parameter ``p`` of a group without ``lars_exclude``, when ``‖p‖ > 0`` and ``‖g‖ > 0``::

        r = eta · ‖p‖ / (‖g‖ + wd · ‖p‖ + eps);   with clip_lr: r = min(r / lr, 1)
        d = r · (g + wd · p)

    otherwise ``d = g``. Groups flagged ``lars_exclude`` (biases, norm layers: solo-learn's
    ``exclude_bias_n_norm``) take ``d = g``, no weight decay and no adaptation. Then heavy-ball momentum
    ``v ← m·v + d`` (``v = d`` at the first step) and ``p ← p − lr · v``. With ``clip_lr`` the effective
    per-layer rate is ``min(eta·‖p‖/(‖g‖+wd‖p‖), lr)``: the adaptation can only lower the scheduled rate.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.02, clip_lr: bool = True, eps: float = 1e-8) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip_lr=clip_lr,
                                      eps=eps, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not group["lars_exclude"]:
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                    ratio = group["eta"] * p_norm / (g_norm + wd * p_norm + group["eps"])
                    if group["clip_lr"]:
                        ratio = torch.clamp(ratio / max(lr, torch.finfo(torch.float64).tiny), max=1.0)
                    adapted = (p_norm > 0) & (g_norm > 0)
                    d = torch.where(adapted, ratio, 1.0) * torch.where(adapted, d.add(p, alpha=wd), d)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-lr)
        return loss


#: The optimisers ``optim.name`` chooses from.
OPTIMIZERS = ("sgd", "lars", "adamw")


def build_optimizer(param_groups: list[dict[str, Any]], name: str, lr: float, weight_decay: float, momentum: float,
                    lars_eta: float = 0.02, betas: tuple[float, float] = (0.9, 0.999),
                    lars_clip_lr: bool = True) -> torch.optim.Optimizer:
    """An optimiser over ``param_groups``; groups keep their own ``weight_decay`` (0 for bias/norm groups)."""
    groups = []
    for group in param_groups:
        g = {k: v for k, v in group.items()}
        g.setdefault("weight_decay", weight_decay)
        if name != "lars":
            g.pop("lars_exclude", None)
        groups.append(g)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta, clip_lr=lars_clip_lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=betas)
    raise ValueError(f"unknown optimiser {name!r}; choose one of {', '.join(OPTIMIZERS)}")
