"""Weighted cosine k-nearest-neighbour classification (Wu et al., CVPR 2018 "InstDisc"; as in the paper).

Each query's k nearest training features (cosine similarity of L2-normalised features) vote for their class
with weight ``exp(sim / T)``. Defaults k = 200, T = 0.1. The similarity matrix is never materialised and never
fully sorted (a full ``topk`` over every bank entry costs about as much as the similarity GEMM itself):
`exact_topk` scans the bank in cache-sized blocks and keeps only the entries above a per-query threshold estimated
on a strided sample of the bank, a provable superset of the top-k whenever it holds at least k entries. Where the
CPU has native bf16, the scan runs in bf16 (about 4× the fp32 GEMM's speed here) on the bank rows minus their mean
(same ranking per query, smaller rounding error) and only the kept entries are scored again in fp32, with the
scan's rounding error bounded so that the result stays exact. Memory stays ``O(query_chunk · (bank_chunk + k))``
whatever the bank size and the features (ties included).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from auxssl.engine.precision import native_bf16

#: The threshold of each query is estimated on every ``SAMPLE_STRIDE``-th bank entry.
SAMPLE_STRIDE = 16
#: Similarities closer than this (4 fp32 ulps at 1) count as tied when `exact_topk` checks a query is complete.
FP32_TIE = 2.0**-22


def bf16_similarity_error(dim: int) -> float:
    """A bound on ``|a − s|``, where ``s`` is the exact dot product of two unit vectors of ``dim`` entries and ``a``
    the fp32 accumulation of their bf16 roundings (before the GEMM rounds ``a`` to its bf16 output).

    Rounding both inputs to bf16 (unit roundoff u = 2⁻⁸) changes each product by at most ``(2u + u²)·|q_i b_i|``,
    and ``Σ|q_i b_i| ≤ ‖q‖‖b‖ = 1``; the products of bf16 values are exact in fp32 and accumulated in fp32 (at most
    ``dim · 2⁻²⁴`` relative to ``Σ|q_i b_i|``, doubled here for margin). The final rounding of ``a`` to bf16 needs
    no allowance against a bf16 threshold ``t``: rounding is monotone, so ``bf16(a) < t`` implies ``a < t``.
    """
    u = 2.0**-8
    return 2 * u + u * u + dim * 2.0**-23


class _Candidates:
    """Candidate ``(column, similarity)`` pairs of each query, kept in a padded ``(queries, width)`` layout filled
    block by block: a block's pairs arrive row-major, so each lands in its row's next free slots (no sort).

    Memory is bounded whatever the features: when a row would outgrow ``cap`` slots (features that tie, as a
    collapsed representation's do, keep every bank entry above the threshold), every row is first cut down to
    its ``k`` best pairs — which keeps the result exact, since later pairs only compete with those."""

    def __init__(self, rows: int, width: int, dtype: torch.dtype, device: torch.device, k: int, cap: int) -> None:
        self.values = torch.full((rows, width), float("-inf"), dtype=dtype, device=device)
        self.cols = torch.zeros((rows, width), dtype=torch.long, device=device)
        self.counts = torch.zeros(rows, dtype=torch.long, device=device)
        self.k, self.cap = k, max(cap, width)

    def _compact(self) -> None:
        top, pos = self.values.topk(self.k, dim=1)
        self.values[:, : self.k], self.cols[:, : self.k] = top, self.cols.gather(1, pos)
        self.values[:, self.k :] = float("-inf")
        self.counts = self.counts.clamp(max=self.k)

    def add(self, crow: Tensor, row_ids: Tensor, cols: Tensor, values: Tensor) -> None:
        """Append one block's pairs; ``crow``: CSR row pointers of ``row_ids`` (sorted)."""
        added = crow[1:] - crow[:-1]
        if int((self.counts + added).max()) > self.cap:
            self._compact()
        fill = self.counts + added
        width = self.values.shape[1]
        if int(fill.max()) > width:
            grown = max(int(fill.max()), min(2 * width, self.cap))  # at most cap + one block's pairs
            self.values = F.pad(self.values, (0, grown - width), value=float("-inf"))
            self.cols = F.pad(self.cols, (0, grown - width))
            width = grown
        slots = self.counts[row_ids] + torch.arange(len(row_ids), device=row_ids.device) - crow[:-1][row_ids]
        flat = row_ids * width + slots
        self.values.view(-1).index_copy_(0, flat, values)
        self.cols.view(-1).index_copy_(0, flat, cols)
        self.counts = fill

    def topk(self, k: int) -> tuple[Tensor, Tensor]:
        top, pos = self.values.topk(k, dim=1)
        return top, self.cols.gather(1, pos)


def _row_pointers(row_ids: Tensor, rows: int) -> Tensor:
    """CSR row pointers of sorted ``row_ids`` (far faster than ``bincount`` + ``cumsum`` on a CPU)."""
    return torch.searchsorted(row_ids, torch.arange(rows + 1, device=row_ids.device))


def _at_least(sim: Tensor, threshold: Tensor, out: Tensor) -> Tensor:
    """``sim >= threshold`` into ``out``. For bf16 and positive thresholds the comparison runs on the int16 bit
    patterns (same order for non-negative values, and every negative value is below; ~3× faster on a CPU)."""
    if sim.dtype == torch.bfloat16 and bool((threshold > 0).all()):
        return torch.ge(sim.view(torch.int16), threshold.view(torch.int16), out=out)
    return torch.ge(sim, threshold, out=out)


def exact_topk(queries: Tensor, bank: Tensor, k: int, block: int = 4096, stride: int = SAMPLE_STRIDE,
               sample: Tensor | None = None, scan_bank: Tensor | None = None, centre: Tensor | None = None,
               scan_norm: float = 1.0) -> tuple[Tensor, Tensor]:
    """The ``k`` most similar bank rows of every query (dot products of unit vectors): the same values as
    ``(queries @ bank.T).topk(k)`` (up to fp32 rounding), columns equal up to ties, without materialising or
    fully sorting the matrix.

    Per query, a threshold ``t`` is the ``⌈2k / stride⌉``-th largest similarity to a strided sample of the bank
    (expected ~2k bank rows at or above it). The bank is then scanned in blocks of ``block`` rows, small enough for
    the CPU cache, keeping the entries ``≥ t``. The scan runs on ``scan_bank`` (default: ``bank`` itself, fp32).
    A bf16 ``scan_bank`` may hold the bank rows minus a common vector ``centre`` (rows of norm ≤ ``scan_norm``):
    ``q·(b − c) = q·b − q·c`` ranks the bank exactly as ``q·b`` does for each query, and bf16's absolute error,
    ``e = bf16_similarity_error · scan_norm``, shrinks with the rows — on concentrated features (a random network's:
    cosines 0.986 ± 0.005) a bound for unit rows (~2⁻⁷) would exceed their whole spread and keep nearly every
    pair. The threshold is lowered to ``t' = t − e`` (in bf16) and the kept entries are scored again in fp32
    against ``bank``. Every entry left out has ``q·b < t' + e + q·c``, so when a query's k-th best kept score
    reaches that bound, the top-k of its kept entries is its exact top-k; the other queries (rare) are recomputed
    in full.
    ``sample``: ``scan_bank[::stride]`` made contiguous, when the caller reuses it across query chunks.
    """
    n = len(bank)
    sample_rank = math.ceil(2 * k / stride)
    if n < 8 * k or n // stride < 2 * sample_rank:
        return (queries @ bank.T).topk(k, dim=1)
    scan_bank = bank if scan_bank is None else scan_bank
    approximate = scan_bank.dtype != bank.dtype
    # (the fp32 rounding of the centred rows and of q·c is of the order of fp32 rounding, which the result is
    # exact up to anyway)
    error = bf16_similarity_error(bank.shape[1]) * scan_norm if approximate else 0.0
    scan_queries = queries.to(scan_bank.dtype)
    sample = scan_bank[::stride].contiguous() if sample is None else sample
    sample_sims = scan_queries @ sample.T
    threshold = sample_sims.topk(sample_rank, dim=1).values[:, -1:]
    if approximate:
        threshold = (threshold.float() - error).to(scan_bank.dtype)
        if float((sample_sims >= threshold).float().mean()) > 8 * sample_rank / len(sample):
            # similarities closer together than bf16's error: a bf16 scan would keep nearly every pair, so these
            # queries are scanned exactly in fp32 instead
            return exact_topk(queries, bank, k, block, stride)
    offset = (queries @ centre)[:, None] if centre is not None else None
    rows, block = len(queries), min(block, n)
    buffer = torch.empty(rows * block, dtype=scan_bank.dtype, device=queries.device)  # reused by every block
    mask = torch.empty(rows * block, dtype=torch.bool, device=queries.device)
    zeros = torch.zeros(0, dtype=queries.dtype, device=queries.device)
    candidates = _Candidates(rows, 4 * k, queries.dtype, queries.device, k, cap=16 * k)
    for start in range(0, n, block):
        part = scan_bank[start : start + block]
        shape = (rows, len(part))
        sim = torch.mm(scan_queries, part.T, out=buffer[: shape[0] * shape[1]].view(shape))
        row_ids, cols = _at_least(sim, threshold, mask[: shape[0] * shape[1]].view(shape)).nonzero(as_tuple=True)
        crow = _row_pointers(row_ids, rows)
        if approximate:  # fp32 dot products at the kept pairs only, while the block's rows are still in cache
            if len(zeros) < len(cols):
                zeros = torch.zeros(2 * len(cols), dtype=queries.dtype, device=queries.device)
            with warnings.catch_warnings():  # "sparse CSR support is in beta": sampled_addmm is all we use of it
                warnings.simplefilter("ignore", UserWarning)
                pattern = torch.sparse_csr_tensor(crow, cols, zeros[: len(cols)], size=shape, check_invariants=False)
            values = torch.sparse.sampled_addmm(pattern, queries, bank[start : start + block].T, beta=0.0).values()
        else:
            values = sim[row_ids, cols]
        candidates.add(crow, row_ids, cols + start, values)
    top, top_cols = candidates.topk(k)
    bound = threshold.float() + error + (offset if offset is not None else 0.0)
    # a left-out entry may beat the k-th kept one by fp32 rounding alone (ties of a collapsed representation):
    # accepted, as the docstring's "up to fp32 rounding" says, rather than recomputing such rows in full
    complete = (candidates.counts >= k) & (top[:, -1] >= bound[:, 0] - FP32_TIE)
    if not bool(complete.all()):
        top[~complete], top_cols[~complete] = (queries[~complete] @ bank.T).topk(k, dim=1)
    return top, top_cols


def scan_dtype(device: torch.device) -> torch.dtype:
    """The dtype `knn_scores` scans the bank in by default: bf16 on a CPU with native bf16 (then rescored in fp32),
    else fp32 (CUDA included: cuBLAS may reduce bf16 products in reduced precision, which the error bound of
    `bf16_similarity_error` does not cover)."""
    return torch.bfloat16 if device.type == "cpu" and native_bf16(device) else torch.float32


class BankIndex:
    """A kNN bank prepared once for many `topk` searches: L2-normalised rows, and for a reduced-precision scan the
    rows minus their mean in that dtype (see `exact_topk`) with their strided sample."""

    def __init__(self, bank: Tensor, *, bank_chunk: int = 4096, scan: torch.dtype | None = None) -> None:
        self.bank = F.normalize(bank.float(), dim=1)
        self.bank_chunk = bank_chunk
        scan = scan_dtype(self.bank.device) if scan is None else scan
        self.centre, self.scan_norm = None, 1.0
        if scan != self.bank.dtype:  # a reduced-precision scan runs on the rows minus their mean
            self.centre = self.bank.mean(dim=0)
            centred = self.bank - self.centre
            self.scan_norm = float(centred.norm(dim=1).max())
            self.scan_bank = centred.to(scan)
            del centred
        else:
            self.scan_bank = self.bank
        self.sample = self.scan_bank[::SAMPLE_STRIDE].contiguous()

    def __len__(self) -> int:
        return len(self.bank)

    @torch.no_grad()
    def topk(self, queries: Tensor, k: int, query_chunk: int = 1024) -> tuple[Tensor, Tensor]:
        """Cosine similarities ``(Q, k')`` and bank rows of every query's ``k' = min(k, len(bank))`` nearest
        bank rows (`exact_topk`, ``query_chunk`` queries at a time)."""
        k = min(k, len(self.bank))
        queries = F.normalize(queries.float(), dim=1)
        if len(queries) == 0 or k == 0:
            empty = torch.empty(len(queries), k, device=self.bank.device)
            return empty, empty.long()
        parts = [exact_topk(queries[start : start + query_chunk], self.bank, k, block=self.bank_chunk,
                            sample=self.sample, scan_bank=self.scan_bank, centre=self.centre,
                            scan_norm=self.scan_norm)
                 for start in range(0, len(queries), query_chunk)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def class_votes(similarities: Tensor, labels: Tensor, num_classes: int, temperature: float) -> Tensor:
    """``(Q, C)`` votes: Σ ``exp(sim / T)`` of each query's neighbours per class (``-inf`` similarities add 0)."""
    votes = torch.zeros(len(similarities), num_classes, device=similarities.device)
    return votes.scatter_add_(1, labels, torch.exp(similarities / temperature))


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
    scan: torch.dtype | None = None,
) -> Tensor:
    """Class votes ``(Q, C)``: Σ over the k most similar bank entries of ``exp(sim/T)`` per class (`exact_topk`,
    ``query_chunk`` queries at a time against blocks of ``bank_chunk`` bank rows; ``scan``: the dtype the bank
    is scanned in, default `scan_dtype`; the votes are exact either way)."""
    if len(bank) != len(bank_labels):
        raise ValueError(f"{len(bank)} bank features but {len(bank_labels)} labels")
    num_classes = int(bank_labels.max()) + 1 if num_classes is None else num_classes
    index = BankIndex(bank, bank_chunk=bank_chunk, scan=scan)
    similarities, rows = index.topk(queries.to(index.bank.device), k, query_chunk)
    return class_votes(similarities, bank_labels.to(index.bank.device).long()[rows], num_classes, temperature)


def topk_correct(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """How many rows have their label among the ``k`` highest scores, for every k (capped at the class count)."""
    labels = labels.to(scores.device)
    ranked = scores.argsort(dim=1, descending=True)
    return {k: int((ranked[:, : min(k, scores.shape[1])] == labels[:, None]).any(dim=1).sum()) for k in ks}


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the ``k`` highest scores, for every k (capped at the class count)."""
    return {k: correct / len(labels) for k, correct in topk_correct(scores, labels, ks).items()}


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
    labelled = (train_labels >= 0).to(train_features.device)
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_scores(
        train_features[labelled], train_labels[labelled], test_features,
        k=protocol.k, temperature=protocol.temperature, num_classes=num_classes,
    )
    acc = topk_accuracy(scores, test_labels)
    return {"knn/top1": 100 * acc[1], "knn/top5": 100 * acc[5]}
