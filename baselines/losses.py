"""Loss functions of the base joint-embedding methods, as plain functions.

Conventions: inputs are ``(N, D)`` embeddings of the N samples of one view each; every loss is computed in
at least float32 whatever autocast is active (`full_precision` turns autocast off inside the loss and upcasts
half-precision inputs; float64 inputs stay float64); targets that the method treats as constants are detached here
too, so the functions are safe to call on outputs that still carry gradients. Losses whose denominators contain
negatives accept ``negative_weight`` (0 removes a pair, values in between down-weight it); losses over
positive pairs accept ``weight`` per pair. Both are hooks for noise control of false negatives/positives.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.distributed import all_reduce_, world_size

F_ = TypeVar("F_", bound=Callable[..., Any])


def at_least_float32(x: Tensor) -> Tensor:
    """At least float32: half-precision inputs are upcast, float64 stays float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _first_tensor(values: Sequence[Any]) -> Tensor | None:
    for value in values:
        if isinstance(value, Tensor):
            return value
        if isinstance(value, (list, tuple)):
            found = _first_tensor(value)
            if found is not None:
                return found
    return None


def full_precision(fn: F_) -> F_:
    """Run ``fn`` with autocast disabled on its inputs' device, so every matmul and reduction inside is float32
    (or float64), whatever autocast region the caller is in; the function itself upcasts half inputs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tensor = _first_tensor([*args, *kwargs.values()])
        device_type = tensor.device.type if tensor is not None else "cpu"
        if not torch.is_autocast_enabled(device_type):
            return fn(*args, **kwargs)
        with torch.autocast(device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _weighted_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    if weight is None:
        return values.mean()
    weight = weight.to(values.dtype)
    if weight.shape != values.shape:
        raise ValueError(f"weight has shape {tuple(weight.shape)}, expected {tuple(values.shape)}")
    return (values * weight).sum() / weight.sum().clamp_min(torch.finfo(values.dtype).tiny)


@full_precision
def nt_xent_loss(
    z1: Tensor, z2: Tensor, temperature: float = 0.5, negative_weight: Tensor | None = None
) -> Tensor:
    """NT-Xent of SimCLR (Chen et al., ICML 2020, eq. 1).

    The 2N embeddings are L2-normalised; for each anchor the positive is the other view of the same sample
    and the 2N-2 views of the other samples are negatives (self-similarity excluded). The loss is the mean
    over all 2N anchors of ``-log(exp(s_pos/T) / Σ_{k≠anchor} w_k exp(s_k/T))``.

    Args:
        negative_weight: optional ``(N, N)`` weight of sample ``j`` (both of its views) as a negative of
            anchor sample ``i``. Entries on the diagonal are ignored: the positive always counts fully.
    """
    n = z1.shape[0]
    z = F.normalize(at_least_float32(torch.cat([z1, z2])), dim=1)
    logits = z @ z.T / temperature
    self_pair = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pair, float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    if negative_weight is not None:
        if negative_weight.shape != (n, n):
            raise ValueError(f"negative_weight must be ({n}, {n}), got {tuple(negative_weight.shape)}")
        weight = negative_weight.to(device=z.device, dtype=logits.dtype).repeat(2, 2)
        weight[torch.arange(2 * n, device=z.device), targets] = 1.0
        weight = weight.masked_fill(self_pair, 1.0)
        logits = logits + torch.log(weight)
    return F.cross_entropy(logits, targets)


@full_precision
def byol_loss(p: Tensor, z: Tensor, weight: Tensor | None = None) -> Tensor:
    """BYOL regression loss (Grill et al., NeurIPS 2020, eq. 2): mean of ``2 - 2·cos(p, z)``.

    ``z`` (the target projection) is treated as a constant. ``weight`` is an optional per-pair weight
    (weighted mean).
    """
    cos = F.cosine_similarity(at_least_float32(p), at_least_float32(z.detach()), dim=-1)
    return _weighted_mean(2.0 - 2.0 * cos, weight)


@full_precision
def simsiam_loss(p: Tensor, z: Tensor, weight: Tensor | None = None) -> Tensor:
    """SimSiam loss (Chen & He, CVPR 2021, eq. 1): mean of ``-cos(p, stopgrad(z))``."""
    cos = F.cosine_similarity(at_least_float32(p), at_least_float32(z.detach()), dim=-1)
    return _weighted_mean(-cos, weight)


def _standardise(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-dimension standardisation with biased batch statistics (an affine-free BatchNorm1d)."""
    mean = z.mean(dim=0)
    var = z.var(dim=0, unbiased=False)
    return (z - mean) / torch.sqrt(var + eps)


@full_precision
def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 5e-3) -> Tensor:
    """Barlow Twins (Zbontar et al., ICML 2021, eq. 1).

    ``C = z̃1ᵀ z̃2 / N`` with each dimension standardised over the batch; the loss is
    ``Σ_i (1 - C_ii)² + lambd · Σ_{i≠j} C_ij²``.
    """
    n = z1.shape[0]
    c = _standardise(at_least_float32(z1)).T @ _standardise(at_least_float32(z2)) / n
    diag = torch.diagonal(c)
    on_diag = (1.0 - diag).pow(2).sum()
    off_diag = c.pow(2).sum() - diag.pow(2).sum()
    return on_diag + lambd * off_diag


@full_precision
def vicreg_terms(z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The three unweighted VICReg terms (invariance, variance, covariance); see `vicreg_loss`."""
    z1, z2 = at_least_float32(z1), at_least_float32(z2)
    invariance = F.mse_loss(z1, z2)

    def variance(z: Tensor) -> Tensor:
        return F.relu(1.0 - torch.sqrt(z.var(dim=0) + 1e-4)).mean()

    def covariance(z: Tensor) -> Tensor:
        n, d = z.shape
        centred = z - z.mean(dim=0)
        cov = centred.T @ centred / (n - 1)
        return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d

    return invariance, (variance(z1) + variance(z2)) / 2, covariance(z1) + covariance(z2)


@full_precision
def vicreg_loss(
    z1: Tensor, z2: Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0
) -> Tensor:
    """VICReg (Bardes et al., ICLR 2022, eq. 6).

    Invariance: MSE between the branches. Variance: ``mean(relu(1 - sqrt(var + 1e-4)))`` per branch with the
    unbiased variance, averaged over the two branches. Covariance: the sum of squared off-diagonal entries of
    each branch's unbiased covariance divided by the dimension, summed over the branches.
    """
    inv, var, cov = vicreg_terms(z1, z2)
    return sim_coeff * inv + std_coeff * var + cov_coeff * cov


@torch.no_grad()
@full_precision
def sinkhorn_knopp(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """SwAV's equipartitioned soft assignment (Caron et al., NeurIPS 2020, sec. 3.1).

    ``Q ∝ exp(scores / epsilon)`` is alternately normalised so that every prototype receives the same mass
    and every sample a unit mass. Returns ``Q`` of shape (batch × prototypes) whose rows sum to 1 and whose
    columns each sum to about ``batch / prototypes`` (exactly so as ``iterations`` grows). Computed without
    gradient; under torch.distributed the marginals span the global batch.
    """
    logits = at_least_float32(scores.detach()) / epsilon
    logits = logits - all_reduce_(logits.max().clone(), op="max")  # stability; cancelled by normalising
    q = torch.exp(logits).T  # prototypes × samples
    num_prototypes = q.shape[0]
    num_samples = q.shape[1] * world_size()
    q /= all_reduce_(q.sum())
    for _ in range(iterations):
        q /= all_reduce_(q.sum(dim=1, keepdim=True))
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= num_samples
    return (q * num_samples).T


@full_precision
def swav_loss(scores_per_view: Sequence[Tensor], q_per_view: Sequence[Tensor], temperature: float = 0.1) -> Tensor:
    """SwAV swapped prediction (Caron et al., NeurIPS 2020, eq. 1).

    ``q_per_view[a]`` are the codes of view ``a`` (the first ``len(q_per_view)`` views are the ones codes are
    computed for); each is predicted from every *other* view ``v`` through ``softmax(scores_v / T)`` by
    cross-entropy. The loss is the average over all such (a, v) pairs.
    """
    if not 1 <= len(q_per_view) <= len(scores_per_view):
        raise ValueError("need codes for at least one and at most all views")
    if len(scores_per_view) < 2:
        raise ValueError("swapped prediction needs at least two views")
    log_probs = [F.log_softmax(at_least_float32(s) / temperature, dim=1) for s in scores_per_view]
    terms = [
        -(q.detach() * log_probs[v]).sum(dim=1).mean()
        for a, q in enumerate(q_per_view)
        for v in range(len(scores_per_view))
        if v != a
    ]
    return torch.stack(terms).mean()


@full_precision
def moco_loss(
    q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2, negative_weight: Tensor | None = None
) -> Tensor:
    """MoCo InfoNCE (He et al., CVPR 2020, eq. 1; MoCo v2: Chen et al. 2020).

    For each query the logits are ``[q·k, q·queue_1, …, q·queue_K] / T`` (cosine similarities), the positive
    at index 0; keys and queue are constants.

    Args:
        negative_weight: optional ``(N, K)`` weight of each queue entry as a negative of each query.
    """
    q = F.normalize(at_least_float32(q), dim=1)
    k = F.normalize(at_least_float32(k.detach()), dim=1)
    queue = F.normalize(at_least_float32(queue.detach()), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True) / temperature
    negatives = q @ queue.T / temperature
    if negative_weight is not None:
        if negative_weight.shape != negatives.shape:
            raise ValueError(f"negative_weight must be {tuple(negatives.shape)}, got {tuple(negative_weight.shape)}")
        negatives = negatives + torch.log(negative_weight.to(negatives))
    logits = torch.cat([positive, negatives], dim=1)
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
