"""Weighted cosine k-nearest-neighbour classification (Wu et al., CVPR 2018 "InstDisc"; as in the paper).

Each query's k nearest training features (cosine similarity of L2-normalised features) vote for their class
with weight ``exp(sim / T)``. Defaults k = 200, T = 0.1. The similarity matrix is never materialised and never
fully sorted (a full ``topk`` over every bank entry costs about as much as the similarity GEMM itself):
`exact_topk` scans the bank in cache-sized blocks and keeps only the entries above a per-query threshold estimated
on a strided sample of the bank, a provable superset of the top-k whenever it holds at least k entries. Memory stays
``O(query_chunk · (bank_chunk + candidates))`` whatever the bank size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: The threshold of each query is estimated on every ``SAMPLE_STRIDE``-th bank entry.
SAMPLE_STRIDE = 16


def _candidate_topk(rows: int, row_ids: Tensor, cols: Tensor, values: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The top-k of each row among its candidates ``(row_ids, cols, values)`` (any order); also returns which
    rows had at least ``k`` candidates (the others' results are meaningless)."""
    order = torch.argsort(row_ids, stable=True)
    row_ids, cols, values = row_ids[order], cols[order], values[order]
    counts = torch.bincount(row_ids, minlength=rows)  # (a row-wise sum of a boolean mask is far slower)
    slot = torch.arange(len(row_ids), device=values.device) - (torch.cumsum(counts, 0) - counts)[row_ids]
    width = max(k, int(counts.max()) if len(counts) else 0)
    padded = torch.full((rows, width), float("-inf"), dtype=values.dtype, device=values.device)
    padded_cols = torch.zeros((rows, width), dtype=torch.long, device=values.device)
    padded[row_ids, slot] = values
    padded_cols[row_ids, slot] = cols
    top, pos = padded.topk(k, dim=1)
    return top, padded_cols.gather(1, pos), counts >= k


def exact_topk(queries: Tensor, bank: Tensor, k: int, block: int = 4096, stride: int = SAMPLE_STRIDE,
               sample: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The ``k`` most similar bank rows of every query (dot products): the same values as
    ``(queries @ bank.T).topk(k)``, columns equal up to ties, without materialising or fully sorting the matrix.

    Per query, a threshold ``t`` is the ``⌈2k / stride⌉``-th largest similarity to a strided sample of the bank
    (expected ~2k bank rows at or above it). The bank is then scanned in blocks of ``block`` rows, small enough for
    the CPU cache, keeping only the entries ``≥ t``. Any set ``{j : sim_j ≥ t}`` with at least ``k`` members holds
    the ``k`` largest similarities, so the top-k of the kept candidates is the exact top-k; queries with fewer
    candidates (rare) are recomputed in full. ``sample``: ``bank[::stride]`` made contiguous, when the caller
    reuses it across query chunks.
    """
    n = len(bank)
    sample_rank = math.ceil(2 * k / stride)
    if n < 8 * k or n // stride < 2 * sample_rank:
        return (queries @ bank.T).topk(k, dim=1)
    sample = bank[::stride].contiguous() if sample is None else sample
    threshold = (queries @ sample.T).topk(sample_rank, dim=1).values[:, -1:]
    size = len(queries) * min(block, n)
    buffer = torch.empty(size, dtype=queries.dtype, device=queries.device)  # reused by every block
    mask = torch.empty(size, dtype=torch.bool, device=queries.device)
    found: list[tuple[Tensor, Tensor, Tensor]] = []
    for start in range(0, n, block):
        part = bank[start : start + block]
        shape = (len(queries), len(part))
        sim = torch.mm(queries, part.T, out=buffer[: shape[0] * shape[1]].view(shape))
        row_ids, cols = torch.ge(sim, threshold, out=mask[: shape[0] * shape[1]].view(shape)).nonzero(as_tuple=True)
        found.append((row_ids, cols + start, sim[row_ids, cols]))
    row_ids, cols, values = (torch.cat(parts) for parts in zip(*found))
    top, top_cols, complete = _candidate_topk(len(queries), row_ids, cols, values, k)
    if not bool(complete.all()):
        top[~complete], top_cols[~complete] = (queries[~complete] @ bank.T).topk(k, dim=1)
    return top, top_cols


@torch.no_grad()
def knn_scores(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    query_chunk: int = 1024,
    bank_chunk: int = 4096,
) -> Tensor:
    """Class votes ``(Q, C)``: Σ over the k most similar bank entries of ``exp(sim/T)`` per class (`exact_topk`,
    ``query_chunk`` queries at a time against blocks of ``bank_chunk`` bank rows)."""
    if len(bank) != len(bank_labels):
        raise ValueError(f"{len(bank)} bank features but {len(bank_labels)} labels")
    num_classes = int(bank_labels.max()) + 1 if num_classes is None else num_classes
    k = min(k, len(bank))
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    bank_labels = bank_labels.to(bank.device).long()
    scores = []
    sample = bank[::SAMPLE_STRIDE].contiguous()
    for q_start in range(0, len(queries), query_chunk):
        top_sim, top_idx = exact_topk(queries[q_start : q_start + query_chunk], bank, k, block=bank_chunk, sample=sample)
        votes = torch.zeros(len(top_sim), num_classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[top_idx], torch.exp(top_sim / temperature))
        scores.append(votes)
    return torch.cat(scores)


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the ``k`` highest scores, for every k (capped at the class count)."""
    labels = labels.to(scores.device)
    ranked = scores.argsort(dim=1, descending=True)
    return {k: (ranked[:, : min(k, scores.shape[1])] == labels[:, None]).any(dim=1).float().mean().item() for k in ks}


@dataclass(frozen=True)
class KNNProtocol:
    """The kNN protocol, stated in every report: weighted cosine kNN on L2-normalised pooled backbone features;
    bank = training split under the evaluation transform; reported at the last evaluated epoch."""

    k: int = 200
    temperature: float = 0.1

    def describe(self) -> str:
        return (
            f"weighted cosine kNN, k={self.k}, T={self.temperature}, votes exp(sim/T); features: L2-normalised "
            "pooled backbone features under the evaluation transform; accuracy at each evaluation"
        )


def knn_evaluate(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    protocol: KNNProtocol = KNNProtocol(),
    num_classes: int | None = None,
) -> dict[str, float]:
    """``{"knn/top1", "knn/top5"}`` accuracies (in %) of test features classified against the train bank."""
    labelled = train_labels >= 0
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_scores(
        train_features[labelled], train_labels[labelled], test_features,
        k=protocol.k, temperature=protocol.temperature, num_classes=num_classes,
    )
    acc = topk_accuracy(scores, test_labels)
    return {"knn/top1": 100 * acc[1], "knn/top5": 100 * acc[5]}
