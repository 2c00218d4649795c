"""Label-aware helpers: class-balanced subsets and partially revealed labels."""

from __future__ import annotations

import numpy as np


def balanced_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced subset holding ``fraction`` of the labelled samples.

    Each class contributes ``round(fraction · N / C)`` samples (at least 1), drawn without replacement by a
    generator seeded with ``seed``: the same seed always gives the same subset. Unlabelled samples (-1) are
    never chosen.
    """
    labels = np.asarray(labels)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    classes = np.unique(labels[labels >= 0])
    if len(classes) == 0:
        raise ValueError("no labelled samples to draw a subset from")
    per_class = max(1, round(fraction * int((labels >= 0).sum()) / len(classes)))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} samples, fewer than the {per_class} asked for")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def reveal_labels(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """A copy of ``labels`` in which only a class-balanced ``fraction`` stays visible; the rest become -1."""
    labels = np.asarray(labels, dtype=np.int64)
    if fraction >= 1.0:
        return labels.copy()
    visible = np.full_like(labels, -1)
    if fraction > 0.0:
        keep = balanced_subset(labels, fraction, seed)
        visible[keep] = labels[keep]
    return visible
