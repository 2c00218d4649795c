"""Evaluation under torch.distributed: every process works on its own share, none waits unboundedly.

Each process extracts the features of its shard of the kNN bank and of the test images (`EvalGroup.shard`:
every ``world_size``-th image) and keeps them; nothing is gathered for the kNN. The kNN is split over the ranks
(`sharded_knn_votes`): the query blocks travel a ring, each rank searching every block against its own bank shard
and merging the block's running top-k, so every rank does ``1/W`` of the similarity work on its device and holds
its bank shard, one query block and its top-k. Accuracies are summed over ranks, so every rank gets them.

The probes train on all features at once: those are gathered on rank 0 only, which trains them with every CPU
thread it may use (torchrun sets ``OMP_NUM_THREADS=1``). Meanwhile the other ranks wait on a separate gloo group
whose timeout is ``eval.wait_timeout_s``: a broadcast on it, not a collective of the training group that NCCL's
watchdog would abort after 10 minutes, and a wait that ends with a message saying which setting to raise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from auxssl.data.datasets import ImageDataset, ImageSubset
from auxssl.eval.knn import BankIndex, class_votes, topk_correct


@dataclass(frozen=True)
class EvalGroup:
    """The processes evaluating together: this process's ``rank`` among ``world_size``, and ``waits``, a gloo group
    for CPU objects and for waits that may be long (timeout ``timeout_s``)."""

    rank: int
    world_size: int
    waits: Any
    timeout_s: float

    @classmethod
    def create(cls, timeout_s: float) -> EvalGroup:
        """The group of every process of the default process group (a collective call: every rank calls it)."""
        waits = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        return cls(dist.get_rank(), dist.get_world_size(), waits, timeout_s)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, dataset: ImageDataset) -> ImageSubset:
        """This process's images of ``dataset``: every ``world_size``-th from ``rank`` (shards differ by at most
        one image; evaluation needs every image once, not equal shards)."""
        rows = np.arange(self.rank, len(dataset), self.world_size)
        return ImageSubset(dataset, rows, name=f"{dataset.name}-eval{self.rank}of{self.world_size}")

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum of every rank's ``values`` (float64 on ``device``; the training group's collective)."""
        total = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return total.tolist()

    def highest(self, values: list[int], device: torch.device) -> list[int]:
        """Element-wise maximum of every rank's ``values`` (the training group's collective)."""
        top = torch.tensor(values, dtype=torch.long, device=device)
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        return top.tolist()

    def run_on_main(self, work: Callable[[], Any], what: str) -> Any:
        """``work()`` on rank 0, its result on every rank; the other ranks wait at most ``timeout_s``. An error on
        rank 0 is raised there and reported by the others (rather than leaving them waiting)."""
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", work())
            except BaseException as err:
                box[0] = ("error", f"{type(err).__name__}: {err}")
                with suppress(RuntimeError):  # the others may have stopped waiting already
                    dist.broadcast_object_list(box, src=0, group=self.waits)
                raise
        try:
            dist.broadcast_object_list(box, src=0, group=self.waits)
        except RuntimeError as err:
            reason = str(err).splitlines()[0]
            if self.is_main:
                raise RuntimeError(f"the other ranks stopped waiting for rank 0's {what} ({reason}): it took longer "
                                   f"than eval.wait_timeout_s={self.timeout_s:g} s") from None
            raise TimeoutError(f"rank {self.rank} waited more than eval.wait_timeout_s={self.timeout_s:g} s for "
                               f"rank 0's {what} ({reason}); raise eval.wait_timeout_s") from None
        status, value = box[0]
        if status == "error":
            raise RuntimeError(f"rank 0 failed during the {what}: {value}")
        return value

    def gather_on_main(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` (CPU, picklable) in rank order on rank 0, None elsewhere (over the gloo group)."""
        received: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, received, dst=0, group=self.waits)
        return received


@contextmanager
def every_cpu_thread() -> Iterator[int]:
    """Intra-op threads raised to the CPUs this process may run on (restored afterwards): rank 0 alone trains
    the probes while the other processes of its node wait."""
    before = torch.get_num_threads()
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(before, available))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _pass_along_ring(tensors: list[Tensor], group: EvalGroup) -> list[Tensor]:
    """Send ``tensors`` to the next rank and receive the previous rank's (same shapes)."""
    following, preceding = (group.rank + 1) % group.world_size, (group.rank - 1) % group.world_size
    received = [torch.empty_like(t) for t in tensors]
    ops = [dist.P2POp(dist.isend, t.contiguous(), following) for t in tensors]
    ops += [dist.P2POp(dist.irecv, r, preceding) for r in received]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


@torch.no_grad()
def sharded_knn_votes(
    bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, group: EvalGroup, *,
    k: int, temperature: float, num_classes: int,
) -> tuple[Tensor, Tensor, int]:
    """Weighted kNN votes with the bank and the queries split over the ranks of ``group`` (a collective call).

    This rank holds ``bank`` (its labelled bank rows) and ``queries``. Every rank's query block, padded to the
    largest, travels the ring ``rank → rank + 1``; at each hop the holder merges the block's running top-k with
    the block's top-k against its own bank shard (`BankIndex`), so after ``W`` searches each block's top-k is its
    top-k against the whole bank (the same neighbours as one process, up to ties). Returns the votes ``(Q', C)``
    and labels of the block this rank holds at the end and the rank it came from, ``(rank + 1) % W``.
    """
    device = bank.device
    sizes = torch.zeros(2 * group.world_size, dtype=torch.long, device=device)
    sizes[group.rank], sizes[group.world_size + group.rank] = len(queries), len(bank)
    dist.all_reduce(sizes)
    query_sizes, bank_total = sizes[: group.world_size].tolist(), int(sizes[group.world_size :].sum())
    width, longest = min(k, bank_total), max(query_sizes)
    index = BankIndex(bank)
    labels = bank_labels.to(device).long()
    block = [
        torch.cat([queries.float(), queries.new_zeros(longest - len(queries), queries.shape[1]).float()]),
        torch.cat([query_labels.to(device).long(), torch.full((longest - len(queries),), -1, device=device)]),
        torch.full((longest, width), float("-inf"), device=device),
        torch.zeros((longest, width), dtype=torch.long, device=device),
    ]
    for hop in range(group.world_size):
        found, rows = index.topk(block[0], width)
        similarities = torch.cat([block[2], found], dim=1)
        top, position = similarities.topk(width, dim=1)
        block[2], block[3] = top, torch.cat([block[3], labels[rows]], dim=1).gather(1, position)
        if hop < group.world_size - 1:
            block = _pass_along_ring(block, group)
    origin = (group.rank + 1) % group.world_size
    held = query_sizes[origin]
    votes = class_votes(block[2][:held], block[3][:held], num_classes, temperature)
    return votes, block[1][:held], origin


def sharded_knn_evaluate(
    bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor, group: EvalGroup, *,
    k: int, temperature: float, num_classes: int,
) -> dict[str, float]:
    """``{"knn/top1", "knn/top5"}`` (%) over every rank's queries against every rank's bank, on every rank."""
    labelled = (bank_labels >= 0).to(bank.device)
    votes, labels, _ = sharded_knn_votes(bank[labelled], bank_labels[labelled], queries, query_labels, group,
                                         k=k, temperature=temperature, num_classes=num_classes)
    correct = topk_correct(votes, labels) if len(labels) else {1: 0, 5: 0}
    top1, top5, count = group.sum([correct[1], correct[5], len(labels)], bank.device)
    return {"knn/top1": 100 * top1 / count, "knn/top5": 100 * top5 / count}
