"""Weighted cosine k-nearest-neighbour classification (Wu et al., CVPR 2018 "InstDisc"; as in the paper).

Each query's k nearest training features (cosine similarity of L2-normalised features) vote for their class
with weight ``exp(sim / T)``. Defaults k = 200, T = 0.1. The similarity matrix is never materialised: queries are
processed in chunks and, within a chunk, the bank in chunks whose top-k are merged, so memory stays
``O(query_chunk · (bank_chunk + k))`` whatever the bank size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


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
    bank_chunk: int = 65536,
) -> Tensor:
    """Class votes ``(Q, C)``: Σ over the k most similar bank entries of ``exp(sim/T)`` per class."""
    if len(bank) != len(bank_labels):
        raise ValueError(f"{len(bank)} bank features but {len(bank_labels)} labels")
    num_classes = int(bank_labels.max()) + 1 if num_classes is None else num_classes
    k = min(k, len(bank))
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    bank_labels = bank_labels.to(bank.device).long()
    scores = []
    for q_start in range(0, len(queries), query_chunk):
        q = queries[q_start : q_start + query_chunk]
        top_sim: Tensor | None = None
        top_idx: Tensor | None = None
        for b_start in range(0, len(bank), bank_chunk):
            sim = q @ bank[b_start : b_start + bank_chunk].T
            chunk_sim, chunk_idx = sim.topk(min(k, sim.shape[1]), dim=1)
            chunk_idx += b_start
            if top_sim is None:
                top_sim, top_idx = chunk_sim, chunk_idx
            else:  # merge the running top-k with this chunk's top-k
                merged = torch.cat([top_sim, chunk_sim], dim=1)
                top_sim, pos = merged.topk(min(k, merged.shape[1]), dim=1)
                top_idx = torch.cat([top_idx, chunk_idx], dim=1).gather(1, pos)
        votes = torch.zeros(len(q), num_classes, device=q.device)
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
