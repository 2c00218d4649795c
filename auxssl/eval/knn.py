"""Weighted cosine k-nearest-neighbour classification (Wu et al., CVPR 2018 "InstDisc"; as in the paper).

Each query's k nearest training features (cosine similarity of L2-normalised features) vote for their class
with weight ``exp(sim / T)``. Defaults k = 200, T = 0.1. The similarity matrix is never materialised and never
fully sorted (a full ``topk`` over every bank entry costs about as much as the similarity GEMM itself):
`exact_topk` scans the bank in cache-sized blocks and keeps only the entries above a per-query threshold estimated
on a strided sample of the bank, a provable superset of the top-k whenever it holds at least k entries. On a CPU
the scan is an int8 GEMM (`Int8Scan`: exact int32 sums, ~4× the fp32 GEMM's speed with VNNI, ~2× with AVX2) on
the centred bank, with its quantisation error bounded exactly, and only the kept entries are scored again in
fp32, so the result stays exact. Memory stays ``O(query_chunk · (bank_chunk + k))`` whatever the bank size and
the features (ties included).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: The threshold of each query is estimated on every ``SAMPLE_STRIDE``-th bank entry.
SAMPLE_STRIDE = 16
#: Similarities closer than this (4 fp32 ulps at 1) count as tied when `exact_topk` checks a query is complete.
FP32_TIE = 2.0**-22


class _Candidates:
    """Candidate ``(column, similarity)`` pairs of each query, kept in a padded ``(queries, width)`` layout filled
    block by block: a block's pairs arrive row-major, so each lands in its row's next free slots (no sort).

    Memory is bounded whatever the features: when a row would outgrow ``cap`` slots (features that tie, as a
    collapsed representation's do, keep every bank entry above the threshold), every row is first cut down to
    its ``k`` best pairs — which keeps the result exact, since later pairs only compete with those.

    One object serves every query chunk of a search (`reset`, `_Scratch`): its buffers grow once."""

    def __init__(self, rows: int, width: int, dtype: torch.dtype, device: torch.device, k: int, cap: int) -> None:
        self._values = torch.empty((rows, width), dtype=dtype, device=device)
        self._cols = torch.empty((rows, width), dtype=torch.long, device=device)
        self.k, self.cap = k, max(cap, width)
        self.reset(rows)

    def reset(self, rows: int) -> _Candidates:
        """Empty, for ``rows`` queries, keeping the buffers (and the width they grew to)."""
        if rows > len(self._values):
            self._values = torch.empty((rows, self._values.shape[1]), dtype=self._values.dtype,
                                       device=self._values.device)
            self._cols = torch.empty((rows, self._cols.shape[1]), dtype=torch.long, device=self._cols.device)
        self.values, self.cols = self._values[:rows], self._cols[:rows]
        self.values.fill_(float("-inf"))
        self.counts = torch.zeros(rows, dtype=torch.long, device=self._values.device)
        return self

    def _compact(self) -> None:
        top, pos = self.values.topk(self.k, dim=1)
        self.values[:, : self.k], self.cols[:, : self.k] = top, self.cols.gather(1, pos)
        self.values[:, self.k :] = float("-inf")
        self.counts = self.counts.clamp(max=self.k)

    def _grow(self, needed: int) -> None:
        """Widen the buffers to hold ``needed`` pairs per row (at most ``cap`` + one block's pairs)."""
        width = self._values.shape[1]
        grown = max(needed, min(2 * width, self.cap))
        rows = len(self.values)
        self._values = F.pad(self._values, (0, grown - width), value=float("-inf"))
        self._cols = F.pad(self._cols, (0, grown - width))
        self.values, self.cols = self._values[:rows], self._cols[:rows]

    def add(self, crow: Tensor, row_ids: Tensor, cols: Tensor, values: Tensor) -> None:
        """Append one block's pairs; ``crow``: CSR row pointers of ``row_ids`` (sorted)."""
        added = crow[1:] - crow[:-1]
        if int((self.counts + added).max()) > self.cap:
            self._compact()
        fill = self.counts + added
        if int(fill.max()) > self.values.shape[1]:
            self._grow(int(fill.max()))
        width = self.values.shape[1]
        slots = self.counts[row_ids] + torch.arange(len(row_ids), device=row_ids.device) - crow[:-1][row_ids]
        flat = row_ids * width + slots
        self.values.view(-1).index_copy_(0, flat, values)
        self.cols.view(-1).index_copy_(0, flat, cols)
        self.counts = fill

    def topk(self, k: int) -> tuple[Tensor, Tensor]:
        top, pos = self.values.topk(k, dim=1)
        return top, self.cols.gather(1, pos)


class _Scratch:
    """The buffers of one search, reused by every query chunk: the scan's score and mask blocks, the sample's
    scores, the rescoring pattern's placeholder values and the candidates (`_Candidates`). Fresh tensors of these
    sizes (tens of MB) cost more in page faults than the work done on them."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}
        self.candidates: _Candidates | None = None

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised contiguous tensor of ``shape`` (a view of the buffer ``name``, grown when too small)."""
        numel = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype or buffer.device != device:
            buffer = self._buffers[name] = torch.empty(numel, dtype=dtype, device=device)
        return buffer[:numel].view(shape)

    def zeros(self, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``n`` zeros (kept zero: only read)."""
        buffer = self._buffers.get("zeros")
        if buffer is None or buffer.numel() < n or buffer.dtype != dtype or buffer.device != device:
            buffer = self._buffers["zeros"] = torch.zeros(max(n, 2 * (0 if buffer is None else buffer.numel())),
                                                          dtype=dtype, device=device)
        return buffer[:n]

    def empty_candidates(self, rows: int, k: int, dtype: torch.dtype, device: torch.device) -> _Candidates:
        stale = self.candidates is None or self.candidates.k != k
        if stale or self.candidates.values.dtype != dtype or self.candidates.values.device != device:
            self.candidates = _Candidates(rows, 4 * k, dtype, device, k, cap=16 * k)
            return self.candidates
        return self.candidates.reset(rows)


def _row_pointers(row_ids: Tensor, rows: int) -> Tensor:
    """CSR row pointers of sorted ``row_ids`` (far faster than ``bincount`` + ``cumsum`` on a CPU)."""
    return torch.searchsorted(row_ids, torch.arange(rows + 1, device=row_ids.device))


class Int8Scan:
    """The bank prepared for a scan in int8 (`torch._int_mm`, exact int32 sums: ~4× the fp32 GEMM's speed on a
    CPU with VNNI, ~2× with AVX2 only), centred, with the scan's error bounded exactly.

    With ``c`` the bank's mean and ``β_j = c·(b_j − c)``, the scan score of query ``q`` and bank row ``b_j`` is
    ``s_j = (q − c)·(b_j − c) + β_j = q·b_j − q·c``: per query the same ranking as ``q·b_j``. It is one dot
    product of ``y = [q − c, ρ, …, ρ]`` and ``x_j = [b_j − c, β_j/(mρ), …]`` (``m`` bias columns spread the bias
    over the padding, so that no column dominates the quantisation scale), both small when the features are
    concentrated (a random network's: cosines 0.986 ± 0.005, centred norms ≈ 0.11). The bank is quantised with
    one scale ``σ_b`` (so a query's threshold is one integer), each query with its own ``σ_q``:
    ``x̂_j = σ_b X_j``, ``ŷ = σ_q Y``; with ``ε_j = x_j − x̂_j`` and ``δ = y − ŷ``,
    ``|y·x_j − ŷ·x̂_j| = |y·ε_j + δ·x̂_j| ≤ ‖y‖ max‖ε‖ + ‖δ‖ max‖x̂‖`` (Cauchy–Schwarz), which is `queries`' error.
    """

    def __init__(self, bank: Tensor, stride: int = SAMPLE_STRIDE, slice_rows: int = 4096) -> None:
        self.centre = bank.mean(dim=0)
        self.dim = bank.shape[1]
        # centred slice by slice: no fp32 copy of the bank, and temporaries small enough for the allocator to
        # reuse (one 50,000-row slice spent most of its 0.55 s in page faults; 4,096-row slices take 0.2 s)
        slices = range(0, len(bank), slice_rows)
        max_entry, max_bias, row_peaks = 0.0, 0.0, []
        for start in slices:
            centred = bank[start : start + slice_rows] - self.centre
            row_peaks.append(centred.abs().amax(dim=1))
            max_entry = max(max_entry, float(row_peaks[-1].max()))
            max_bias = max(max_bias, float((centred @ self.centre).abs().max()))
        # the queries' bias entry: a typical row's largest entry, so that it rarely sets a query's scale
        self.rho = float(torch.cat(row_peaks).median()) or max_entry or 1.0
        self.bias_columns = min(64, max(1, math.ceil(max_bias / (self.rho * max_entry)))) if max_entry else 1
        self.width = -(-(self.dim + self.bias_columns) // 16) * 16
        self.scale = max(max_entry, max_bias / (self.bias_columns * self.rho)) / 127 or 1.0
        self.rows = torch.empty(len(bank), self.width, dtype=torch.int8, device=bank.device)
        self.max_residual, self.max_rounded = 0.0, 0.0
        for start in slices:
            extended = self._extend(bank[start : start + slice_rows] - self.centre, bias=True)
            quantised = (extended / self.scale).round_().clamp_(-127, 127)
            self.rows[start : start + len(extended)] = quantised.to(torch.int8)
            rounded = quantised.mul_(self.scale)
            self.max_rounded = max(self.max_rounded, float(rounded.norm(dim=1).max()))
            self.max_residual = max(self.max_residual, float((extended - rounded).norm(dim=1).max()))
        self.sample = self.rows[::stride].contiguous()

    def _extend(self, centred: Tensor, bias: bool) -> Tensor:
        """``x = [b − c, β/(mρ) ×m, 0…]`` for bank rows, ``y = [q − c, ρ ×m, 0…]`` for queries."""
        out = torch.zeros(len(centred), self.width, device=centred.device)
        out[:, : self.dim] = centred
        columns = slice(self.dim, self.dim + self.bias_columns)
        out[:, columns] = (centred @ self.centre)[:, None] / (self.bias_columns * self.rho) if bias else self.rho
        return out

    def queries(self, queries: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Each query's int8 row ``Y``, its ``(Q, 1)`` score unit ``σ_q σ_b`` and error bound (see the class)."""
        extended = self._extend(queries - self.centre, bias=False)
        scale = extended.abs().amax(dim=1, keepdim=True) / 127
        scale[scale == 0] = 1.0
        quantised = (extended / scale).round_().clamp_(-127, 127)
        residual = (extended - quantised * scale).norm(dim=1, keepdim=True)
        error = extended.norm(dim=1, keepdim=True) * self.max_residual + residual * self.max_rounded
        return quantised.to(torch.int8), scale * self.scale, error

    def offset(self, queries: Tensor) -> Tensor:
        """``(Q, 1)``: ``q·c``, what the exact similarity adds to the exact scan score."""
        return (queries @ self.centre)[:, None]


def _scan_product(queries: Tensor, part: Tensor, out: Tensor) -> Tensor:
    """``queries @ part.T`` into ``out``: int8 rows give exact int32 sums."""
    if part.dtype == torch.int8:
        return torch._int_mm(queries, part.T, out=out)
    return torch.mm(queries, part.T, out=out)


def exact_topk(queries: Tensor, bank: Tensor, k: int, block: int = 4096, stride: int = SAMPLE_STRIDE,
               sample: Tensor | None = None, scan: Int8Scan | None = None,
               scratch: _Scratch | None = None) -> tuple[Tensor, Tensor]:
    """The ``k`` most similar bank rows of every query (dot products of unit vectors): the same values as
    ``(queries @ bank.T).topk(k)`` (up to fp32 rounding), columns equal up to ties, without materialising or
    fully sorting the matrix.

    Per query, a threshold ``T`` is the ``⌈2k / stride⌉``-th largest scan score against a strided sample of the
    bank (expected ~2k bank rows at or above it). The bank is then scanned in blocks of ``block`` rows, small enough
    for the CPU cache, keeping the entries ``≥ T``. Without ``scan`` the scan is the fp32 similarity itself
    (``sample``: ``bank[::stride]`` made contiguous, when the caller reuses it). With an `Int8Scan` it is the int8
    centred score, in units ``u`` per query and with error at most ``e``: the threshold is lowered to
    ``T' = T − ⌊e/u⌋`` units and the kept entries are scored again in fp32 against ``bank`` while their block is in
    cache. Every entry left out has ``q·b < (T' − 1)·u + e + q·c``, so when a query's k-th best kept score reaches
    that bound, the top-k of its kept entries is its exact top-k; the other queries (rare) are recomputed in full.
    ``scratch``: the buffers of earlier calls, reused (`BankIndex.topk` passes one for all its query chunks).
    """
    n = len(bank)
    sample_rank = math.ceil(2 * k / stride)
    if n < 8 * k or n // stride < 2 * sample_rank:
        return (queries @ bank.T).topk(k, dim=1)
    if scan is None:
        scan_bank, scan_queries = bank, queries
        sample = bank[::stride].contiguous() if sample is None else sample
    else:
        scan_bank, sample = scan.rows, scan.sample
        scan_queries, unit, error = scan.queries(queries)
    scratch = _Scratch() if scratch is None else scratch
    out_dtype = torch.int32 if scan_bank.dtype == torch.int8 else scan_bank.dtype
    sample_sims = _scan_product(scan_queries, sample,
                                scratch.get("sample", (len(queries), len(sample)), out_dtype, queries.device))
    threshold = sample_sims.topk(sample_rank, dim=1).values[:, -1:]
    if scan is not None:
        threshold = threshold - (error / unit).floor().to(threshold.dtype)
        if float((sample_sims >= threshold).float().mean()) > 8 * sample_rank / len(sample):
            # scores closer together than the int8 scan's error: it would keep nearly every pair, so these queries
            # are scanned exactly in fp32 instead
            return exact_topk(queries, bank, k, block, stride)
    rows, block = len(queries), min(block, n)
    candidates = scratch.empty_candidates(rows, k, queries.dtype, queries.device)
    for start in range(0, n, block):
        part = scan_bank[start : start + block]
        shape = (rows, len(part))
        sim = _scan_product(scan_queries, part, scratch.get("scores", shape, out_dtype, queries.device))
        row_ids, cols = torch.ge(sim, threshold, out=scratch.get("mask", shape, torch.bool, queries.device)).nonzero(
            as_tuple=True)
        crow = _row_pointers(row_ids, rows)
        if scan is not None:  # fp32 dot products at the kept pairs only, while the block's rows are still in cache
            zeros = scratch.zeros(len(cols), queries.dtype, queries.device)
            with warnings.catch_warnings():  # "sparse CSR support is in beta": sampled_addmm is all we use of it
                warnings.simplefilter("ignore", UserWarning)
                pattern = torch.sparse_csr_tensor(crow, cols, zeros, size=shape, check_invariants=False)
            values = torch.sparse.sampled_addmm(pattern, queries, bank[start : start + block].T, beta=0.0).values()
        else:
            values = sim[row_ids, cols]
        candidates.add(crow, row_ids, cols + start, values)
    top, top_cols = candidates.topk(k)
    if scan is None:
        bound = threshold
    else:
        bound = (threshold - 1).float() * unit + error + scan.offset(queries)
    # a left-out entry may beat the k-th kept one by fp32 rounding alone (ties of a collapsed representation):
    # accepted, as the docstring's "up to fp32 rounding" says, rather than recomputing such rows in full
    complete = (candidates.counts >= k) & (top[:, -1] >= bound[:, 0] - FP32_TIE)
    if not bool(complete.all()):
        top[~complete], top_cols[~complete] = (queries[~complete] @ bank.T).topk(k, dim=1)
    return top, top_cols


def scan_dtype(device: torch.device) -> torch.dtype:
    """The dtype `knn_scores` scans the bank in by default: int8 on a CPU (then rescored in fp32; faster than the
    fp32 GEMM with or without native bf16), fp32 elsewhere (CUDA's int8 GEMM has shape constraints this scan
    does not meet in general, and its fp32 GEMM is rarely what bounds an evaluation)."""
    return torch.int8 if device.type == "cpu" and hasattr(torch, "_int_mm") else torch.float32


class BankIndex:
    """A kNN bank prepared once for many `topk` searches: L2-normalised rows, for the int8 scan its `Int8Scan`
    (else the rows' strided sample), and the searches' reused buffers."""

    def __init__(self, bank: Tensor, *, bank_chunk: int = 4096, scan: torch.dtype | None = None) -> None:
        self.bank = F.normalize(bank.float(), dim=1)
        self.bank_chunk = bank_chunk
        scan = scan_dtype(self.bank.device) if scan is None else scan
        if scan not in (torch.int8, torch.float32):
            raise ValueError(f"the kNN scans in int8 or float32, not {scan}")
        self.scan = Int8Scan(self.bank) if scan == torch.int8 and len(self.bank) else None
        self.sample = self.bank[::SAMPLE_STRIDE].contiguous() if self.scan is None else None
        self.scratch = _Scratch()  # one set of buffers for every search and query chunk on this index

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
                            sample=self.sample, scan=self.scan, scratch=self.scratch)
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
