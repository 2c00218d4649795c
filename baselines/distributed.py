"""Collective helpers that reduce to the identity in a single process.

Losses that need the whole batch (contrastive denominators, Sinkhorn marginals, cross-correlation and
covariance statistics) gather embeddings from every rank *with gradients*; each rank then computes the same
global loss. The backward of the gather sums the per-rank gradients (``world_size`` identical copies), and
DDP's gradient averaging divides by ``world_size`` again, so parameters receive exactly the gradient of the
global loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward gives each rank the sum over ranks of the gradient of its own rows
    (every rank computes a loss from the gathered tensor). ``torch.distributed.nn.functional.all_gather`` did
    this and is deprecated (its replacement is private)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = slice(dist.get_rank() * len(x), (dist.get_rank() + 1) * len(x))
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rows]


class _AllReduceWithGrad(torch.autograd.Function):
    """Sum over ranks whose backward sums the ranks' gradients (each rank uses the sum in its own loss)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (equal shapes on every rank), keeping gradients to the local
    part."""
    return _GatherWithGrad.apply(x) if is_distributed() else x


def all_reduce_with_grad(x: Tensor) -> Tensor:
    """The sum of ``x`` over ranks, differentiable (gradients summed over ranks); the identity in one process."""
    return _AllReduceWithGrad.apply(x) if is_distributed() else x


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0 without gradients (e.g. keys for a queue)."""
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


@torch.no_grad()
def gather_uneven_no_grad(x: Tensor) -> Tensor:
    """`gather_no_grad` for tensors whose first dimension differs between ranks (padded, gathered, trimmed)."""
    if not is_distributed():
        return x
    sizes = gather_no_grad(torch.tensor([x.shape[0]], device=x.device))
    longest = int(sizes.max())
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = gather_no_grad(padded).split(longest)
    return torch.cat([part[: int(n)] for part, n in zip(parts, sizes)], dim=0)


def all_reduce_(x: Tensor, op: str = "sum") -> Tensor:
    """In-place all-reduce (``"sum"`` or ``"max"``); the identity in a single process."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return x
