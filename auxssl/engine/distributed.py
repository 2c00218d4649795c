"""Multi-process training with torchrun: process group, synchronised batch norm, DDP.

``nn.SyncBatchNorm`` only runs on CUDA; `AllReduceBatchNorm` gives the same statistics on any device (gloo on
CPU included) by all-reducing per-channel sums with autograd, so CPU runs and tests match the single-process
computation on the global batch.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from baselines.distributed import all_reduce_with_grad


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); single process otherwise.

    Several SLURM tasks without torchrun (``srun python -m auxssl train``) would be independent runs writing one run
    directory: refused, saying how to launch."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if "WORLD_SIZE" not in os.environ and tasks > 1:
        from auxssl.errors import UserError

        raise UserError(f"{tasks} SLURM tasks but no torchrun: each would train alone into the same run directory; "
                        "start one task per node running torchrun (see the README's distributed section)")
    if world <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank)


def shutdown_distributed(completed: bool) -> None:
    """Leave the process group (every group auxssl created with it) before the interpreter exits: a gloo group
    still alive at exit can abort its process ("terminate called without an active exception", seen under load).
    ``completed``: every rank finished normally, so they first wait for each other (a rank that stopped early is
    not waited for)."""
    if not dist.is_initialized():
        return
    if completed:
        dist.barrier()
    dist.destroy_process_group()


def gather_to_main(obj: object, context: DistributedContext) -> list | None:
    """Every process's ``obj`` (small, picklable), in rank order, on rank 0; None on the other ranks (and
    ``[obj]`` in a single process). Only rank 0 receives them, so memory elsewhere does not grow with the world."""
    if not context.enabled:
        return [obj]
    received: list | None = [None] * context.world_size if context.is_main else None
    dist.gather_object(obj, received, dst=0)
    return received


class AllReduceBatchNorm(_BatchNorm):
    """Batch norm whose training statistics span every process (biased variance for normalising, unbiased
    for the running estimate, as `nn.BatchNorm`); identical to `nn.BatchNorm*d` in one process or in eval mode."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        channels = x.shape[1]
        shape = [1, channels] + [1] * (x.dim() - 2)
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        count = torch.tensor([x.numel() / channels], device=x.device, dtype=xf.dtype)
        # two passes, like native BN: no E[x²]-mean² cancellation
        sums = all_reduce_with_grad(torch.cat([xf.sum(dims), count]))
        total = sums[-1]
        mean = sums[:channels] / total
        centred = xf - mean.view(shape)
        var = all_reduce_with_grad(centred.square().sum(dims)) / total
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = 0.1 if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * total / (total - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
                self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """DDP without buffer broadcasting.

    DDP's default (``broadcast_buffers=True``) copies rank 0's buffers to every rank at each forward, which
    would overwrite per-rank state: SwAV keeps one queue of *local* embeddings per process (as in the SwAV and
    EffSSL code). Nothing else needs the broadcast: batch norms are synchronised (`convert_batchnorm`), so
    their running statistics agree on every rank, and MoCo enqueues the keys gathered from all ranks.
    """
    with warnings.catch_warnings():
        # torch 2.14 deprecates broadcast_buffers for forward_sync_buffers, which would still copy rank 0's buffers
        # at construction; its own warning says to keep broadcast_buffers=False for rank-local buffers
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )


class AllReduceBatchNormAct(AllReduceBatchNorm):
    """`AllReduceBatchNorm` followed by the dropout and activation of a timm ``BatchNormAct2d`` (its ``drop`` and
    ``act`` children, kept under the same names so checkpoints load either way)."""

    def __init__(self, *args, drop: nn.Module, act: nn.Module, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drop, self.act = drop, act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(x)))


#: Batch norms converted as they are; a norm followed by an activation (timm's ``BatchNormAct2d``) keeps it.
PLAIN_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _is_norm_act(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm) and isinstance(getattr(module, "act", None), nn.Module) and \
        isinstance(getattr(module, "drop", None), nn.Module)


def convert_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Synchronise every batch norm across processes, keeping what each computes: `nn.SyncBatchNorm` on CUDA
    (timm's converter where timm is installed, so that its ``BatchNormAct2d`` keeps its activation),
    `AllReduceBatchNorm` / `AllReduceBatchNormAct` elsewhere. A batch-norm subclass of another kind is refused
    rather than replaced by a plain norm that would compute something else."""
    if device_type == "cuda":
        try:
            from timm.layers import convert_sync_batchnorm
        except ImportError:
            return nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, AllReduceBatchNorm):
        args = (module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if _is_norm_act(module):
            new: AllReduceBatchNorm = AllReduceBatchNormAct(*args, drop=module.drop, act=module.act)
        elif type(module) in PLAIN_NORMS:
            new = AllReduceBatchNorm(*args)
        else:
            from auxssl.errors import InputError

            raise InputError(f"cannot synchronise {type(module).__name__} across processes without changing what it "
                             "computes; use a backbone with standard batch norms")
        reference = module.weight if module.affine else module.running_mean
        if reference is not None:  # keep the original's dtype and device
            new.to(device=reference.device, dtype=reference.dtype)
        new.load_state_dict(module.state_dict())
        if module.affine:  # frozen (target) networks stay frozen
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child, device_type))
    return module
