"""Per-step schedules, precomputed for the whole run (as in DINO): learning rate and EMA coefficient."""

from __future__ import annotations

import math

import numpy as np

from baselines.ema import cosine_tau


def warmup_cosine(base: float, total_steps: int, warmup_steps: int, final: float = 0.0) -> np.ndarray:
    """Linear warm-up from 0 to ``base`` over ``warmup_steps`` (value ``base·(k+1)/warmup`` at step k), then
    cosine decay from ``base`` to ``final`` over the remaining steps."""
    warmup_steps = min(warmup_steps, total_steps)
    warm = base * (np.arange(warmup_steps) + 1) / max(warmup_steps, 1)
    k = np.arange(total_steps - warmup_steps)
    span = max(total_steps - warmup_steps, 1)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(math.pi * k / span))
    return np.concatenate([warm, cosine])


def ema_schedule(base_tau: float, total_steps: int, final_tau: float = 1.0) -> np.ndarray:
    """BYOL's cosine increase of the EMA coefficient, one value per step."""
    return np.array([cosine_tau(k, total_steps, base_tau, final_tau) for k in range(total_steps)])
