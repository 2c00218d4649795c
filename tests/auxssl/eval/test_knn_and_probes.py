"""kNN against independent computations; probes on synthetic features; semi-supervised subsets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auxssl.data import balanced_subset, digits
from auxssl.eval import (
    KNNProtocol,
    OnlineLinearProbe,
    ProbeConfig,
    SemiSupervisedConfig,
    extract_features,
    finetune_semisupervised,
    knn_evaluate,
    knn_scores,
    linear_probe,
    mlp_probe,
)
from auxssl.eval.features import normalise_images
from auxssl.eval.knn import BankIndex, Int8Scan, exact_topk, scan_dtype
from baselines import build_backbone


def clustered(n_per_class: int, classes: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


def knn_reference(bank: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int, t: float, c: int) -> np.ndarray:
    """Brute force in float64: full similarity matrix, full sort, explicit vote loop."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    votes = np.zeros((len(queries), c))
    for i, q in enumerate(queries):
        sims = bank @ q
        for j in np.argsort(-sims)[:k]:
            votes[i, labels[j]] += math.exp(sims[j] / t)
    return votes


def test_knn_matches_brute_force_on_clustered_features() -> None:
    bank, bank_labels = clustered(60, 5, 16, 1.2, seed=0)
    queries, _ = clustered(20, 5, 16, 1.2, seed=1)
    got = knn_scores(bank, bank_labels, queries, k=25, temperature=0.1, num_classes=5)
    ref = knn_reference(bank.double().numpy(), bank_labels.numpy(), queries.double().numpy(), 25, 0.1, 5)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4)
    assert np.array_equal(got.argmax(1).numpy(), ref.argmax(1))


def test_knn_hand_computed_case() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[1.0, 0.2]])
    # cosine similarities: 0.9806, 0.1961, -0.9806, 0.8321 → top-3 = bank 0 (class 0), 3 (class 0), 1 (class 1)
    s = [1 / math.sqrt(1.04), 0.2 / math.sqrt(1.04), 1.2 / (math.sqrt(1.04) * math.sqrt(2))]
    votes = knn_scores(bank, labels, query, k=3, temperature=0.5, num_classes=2)
    expected = [math.exp(s[0] / 0.5) + math.exp(s[2] / 0.5), math.exp(s[1] / 0.5)]
    np.testing.assert_allclose(votes[0].numpy(), expected, rtol=1e-5)


def test_chunk_sizes_do_not_change_results() -> None:
    bank, bank_labels = clustered(50, 4, 8, 2.0, seed=2)
    queries, _ = clustered(10, 4, 8, 2.0, seed=3)
    whole = knn_scores(bank, bank_labels, queries, k=30, temperature=0.1)
    chunked = knn_scores(bank, bank_labels, queries, k=30, temperature=0.1, query_chunk=7, bank_chunk=13)
    torch.testing.assert_close(whole, chunked)


@pytest.mark.parametrize("scan", [torch.float32, torch.int8])
def test_exact_topk_selects_the_full_topk_including_the_fallback_rows(scan: torch.dtype) -> None:
    """The candidate selection gives `topk`'s values and columns; rows whose sampled threshold is too high (here
    every strongly similar bank row sits on a sampled position) fall back to the full computation."""
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(4000, 32, generator=g), dim=1)
    queries = F.normalize(torch.randn(50, 32, generator=g), dim=1)
    near = F.normalize(queries[0] + 0.05 * torch.randn(250, 32, generator=g), dim=1)
    bank[::16] = near  # query 0: its 250 most similar rows are all sampled → too few candidates
    for k in (1, 10, 200):
        values, columns = exact_topk(queries, bank, k, block=512, scan=Int8Scan(bank) if scan == torch.int8 else None)
        full_values, full_columns = (queries @ bank.T).topk(k, dim=1)
        torch.testing.assert_close(values, full_values)
        torch.testing.assert_close(torch.gather(queries @ bank.T, 1, columns), full_values)  # same values, ties aside
    sample_threshold = (queries[:1] @ bank[::16].T).topk(25, dim=1).values[:, -1]
    assert int(((queries[:1] @ bank.T) >= sample_threshold).sum()) < 200  # the fallback really ran for k = 200


def test_int8_scan_is_exact_where_int8_scrambles_the_ranking() -> None:
    """Per query, 150 bank rows are clearly closest, the next 100 have similarities packed into a band of width
    0.002 (finer than int8 resolves) holding the 200th value, and 300 follow well below. The int8 scan ranks the
    band wrongly; the fp32 rescoring of the kept rows must still give the exact top-200 values and votes (with
    the int8 scores kept instead, this fails)."""
    g = torch.Generator().manual_seed(1)
    dim, k = 64, 200
    queries = F.normalize(torch.randn(8, dim, generator=g), dim=1)
    rows = []
    for q in queries:
        sims = torch.cat([0.7 + 0.05 * torch.rand(150, generator=g), 0.6 + 0.002 * torch.rand(100, generator=g),
                          0.45 + 0.05 * torch.rand(300, generator=g), 0.2 * torch.rand(950, generator=g)])
        other = torch.randn(len(sims), dim, generator=g)
        other = F.normalize(other - (other @ q)[:, None] * q, dim=1)  # orthogonal to q
        rows.append(sims[:, None] * q + (1 - sims[:, None] ** 2).sqrt() * other)
    bank = torch.cat(rows)[torch.randperm(12000, generator=g)]
    exact = queries @ bank.T
    scan = Int8Scan(bank)
    ints, _, _ = scan.queries(queries)
    scores = torch._int_mm(ints, scan.rows.T).float()
    assert not torch.equal(scores.topk(k, dim=1).indices.sort(1).values, exact.topk(k, dim=1).indices.sort(1).values)
    values, columns = exact_topk(queries, bank, k, block=1000, scan=scan)
    torch.testing.assert_close(values, exact.topk(k, dim=1).values)
    torch.testing.assert_close(torch.gather(exact, 1, columns), values)
    labels = torch.arange(len(bank)) % 7
    votes = {scan: knn_scores(bank, labels, queries, k=k, temperature=0.1, num_classes=7, bank_chunk=1000, scan=scan)
             for scan in (torch.float32, torch.int8)}
    torch.testing.assert_close(votes[torch.int8], votes[torch.float32])


@pytest.mark.parametrize(
    "features", ["isotropic", "concentrated", "one_large_dimension", "exact_bank", "adversarial", "collapsed"]
)
def test_int8_scan_error_bound_holds_and_is_tight(features: str) -> None:
    """The int8 centred score, in its units, equals ``q·b − q·c`` to within the stated bound for every pair
    (checked against a float64 computation written from the definition), and the bound is not vacuous on typical
    features: under 3 % of the similarities' own scale, and under 25 % of their spread on concentrated features
    (what lets the scan prune). "one_large_dimension": one feature 20× the others sets the bank's single
    quantisation scale, so every other entry is quantised coarsely. "exact_bank": ± sign vectors (mean 0, every
    entry on the int8 grid), so the whole error is the queries' rounding. "adversarial": each query points along one
    bank row's rounding residual, the worst case of the Cauchy–Schwarz step."""
    g = torch.Generator().manual_seed(4)
    dim = 96
    if features == "isotropic":
        bank, queries = torch.randn(3000, dim, generator=g), torch.randn(40, dim, generator=g)
    elif features == "concentrated":  # a random network's features: cosines ≈ 0.99
        base = torch.randn(dim, generator=g)
        bank, queries = (base + 0.12 * torch.randn(n, dim, generator=g) for n in (3000, 40))
    elif features == "one_large_dimension":
        stretch = torch.ones(dim)
        stretch[0] = 20.0
        bank, queries = torch.randn(3000, dim, generator=g) * stretch, torch.randn(40, dim, generator=g) * stretch
    elif features == "adversarial":
        bank, queries = torch.randn(3000, dim, generator=g), torch.randn(40, dim, generator=g)  # queries replaced
    elif features == "exact_bank":
        signs = torch.randint(0, 2, (1500, dim), generator=g) * 2 - 1.0
        bank, queries = torch.cat([signs, -signs]), torch.randn(40, dim, generator=g)
    else:
        bank, queries = torch.ones(3000, dim), torch.randn(40, dim, generator=g)
    bank, queries = F.normalize(bank, dim=1), F.normalize(queries, dim=1)
    scan = Int8Scan(bank)
    if features == "adversarial":  # q = c + t·ε_j/‖ε_j‖ with t such that ‖q‖ = 1
        c = scan.centre
        residual = F.normalize((bank[:40] - c) - scan.scale * scan.rows[:40, :dim].float(), dim=1)
        along = residual @ c
        t = -along + (along**2 - c @ c + 1).sqrt()
        queries = c + t[:, None] * residual
    ints, unit, error = scan.queries(queries)
    approx = torch._int_mm(ints, scan.rows.T).double() * unit.double()
    exact = (queries.double() @ bank.double().T) - (queries.double() @ bank.double().mean(0))[:, None]
    assert bool(((approx - exact).abs() <= error.double() + 1e-6).all())
    if features in ("isotropic", "concentrated"):
        assert float(error.max()) < 0.03
    if features == "concentrated":
        assert bool((error[:, 0] < 0.25 * exact.std(dim=1)).all())


def test_knn_scans_in_int8_on_the_cpu() -> None:
    assert scan_dtype(torch.device("cpu")) == torch.int8
    assert scan_dtype(torch.device("cuda")) == torch.float32
    with pytest.raises(ValueError, match="int8 or float32"):
        knn_scores(torch.randn(10, 4), torch.zeros(10, dtype=torch.long), torch.randn(2, 4), k=3, scan=torch.bfloat16)


def test_knn_evaluate_reports_percentages_and_ignores_unlabelled_bank() -> None:
    bank, bank_labels = clustered(40, 3, 8, 0.05, seed=4)
    test_x, test_y = clustered(10, 3, 8, 0.05, seed=4)
    noisy_labels = bank_labels.clone()
    noisy_labels[::2] = -1
    out = knn_evaluate(bank, noisy_labels, test_x, test_y, KNNProtocol(k=10, temperature=0.1))
    assert out["knn/top1"] == pytest.approx(100.0) and out["knn/top5"] == pytest.approx(100.0)


def test_linear_probe_separates_linearly_separable_features() -> None:
    train_x, train_y = clustered(100, 4, 20, 0.3, seed=5)
    test_x, test_y = clustered(50, 4, 20, 0.3, seed=5)
    out = linear_probe(train_x, train_y, test_x, test_y, ProbeConfig(epochs=20))
    assert out["linear/top1"] >= 99.0


def test_mlp_probe_solves_what_a_linear_probe_cannot() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.rand(2000, 2, generator=g) * 2 - 1
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()  # XOR: not linearly separable
    linear = linear_probe(x[:1500], y[:1500], x[1500:], y[1500:], ProbeConfig(epochs=30))
    mlp = mlp_probe(x[:1500], y[:1500], x[1500:], y[1500:], ProbeConfig(epochs=30, hidden_dim=64))
    assert linear["linear/top1"] < 75.0 and mlp["mlp/top1"] > 95.0


def test_online_probe_learns_and_skips_hidden_labels() -> None:
    x, y = clustered(64, 3, 10, 0.2, seed=7)
    probe = OnlineLinearProbe(10, 3, lr=0.5)
    assert probe.update(x, torch.full_like(y, -1)) == {}
    first = probe.update(x, y)
    for _ in range(30):
        last = probe.update(x, y)
    assert last["online_linear/loss"] < first["online_linear/loss"] and last["online_linear/top1"] > 95.0


def test_semisupervised_subsets_are_balanced_with_exact_sizes() -> None:
    labels = np.repeat(np.arange(10), 5000)
    for fraction, size in ((0.01, 500), (0.1, 5000)):
        subset = balanced_subset(labels, fraction, seed=0)
        assert len(subset) == size and np.array_equal(np.bincount(labels[subset]), np.full(10, size // 10))
        assert np.array_equal(subset, balanced_subset(labels, fraction, seed=0))


def test_finetune_semisupervised_saves_its_subset(tmp_path, tiny_backbone) -> None:
    train, test = digits("train"), digits("test")
    path = tmp_path / "semisup_10pct.json"
    result = finetune_semisupervised(
        tiny_backbone, train, test, SemiSupervisedConfig(fraction=0.1, epochs=2, batch_size=64), save_to=path
    )
    subset = np.array(result["subset_indices"])
    assert len(subset) == 140 and np.array_equal(np.bincount(train.labels[subset]), np.full(10, 14))
    assert 0.0 <= result["semisup_10pct/top1"] <= 100.0 and path.is_file()
    assert all(p.grad is None for p in tiny_backbone.parameters())  # the caller's backbone is untouched


def test_semisupervised_epochs_follow_simclr_appendix_b5() -> None:
    assert SemiSupervisedConfig(fraction=0.01).resolved().epochs == 60
    assert SemiSupervisedConfig(fraction=0.1).resolved().epochs == 30
    assert SemiSupervisedConfig(fraction=0.1, epochs=3).resolved().epochs == 3


def test_finetuning_sees_every_labelled_image_once_per_epoch() -> None:
    """The fine-tuning loader serves the labelled subset, each image once per epoch with its own label. It served
    every training row before (the 1,297 rows outside a 10 % subset of the digits counted as unreadable and were
    replaced by labelled images): 11 steps per epoch instead of 1, each image about 10 times per "epoch"."""
    from auxssl.eval.semisup import SemiSupervisedConfig, labelled_subset_loader

    train = digits("train")
    config = SemiSupervisedConfig(fraction=0.1, batch_size=64)
    labelled, _, kept, loader = labelled_subset_loader(train, config, "cpu", 16)
    chosen = balanced_subset(train.labels, 0.1, 0)
    assert np.array_equal(labelled.indices, chosen) and len(kept) == len(chosen) == 140
    assert len(loader) == math.ceil(140 / 64)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = list(loader)
        index = torch.cat([b.index for b in batches]).numpy()
        label = torch.cat([b.label for b in batches]).numpy()
        assert sorted(index) == sorted(train.source_indices()[chosen])  # each labelled image once
        assert np.array_equal(label, np.asarray(train.labels)[index])


def test_finetuning_is_not_worse_than_a_linear_probe_on_the_same_subset() -> None:
    """A ResNet-10 pre-trained (supervised, one epoch) on the other half of digits; fine-tuning on 10% of the
    labels with SimCLR's recipe must match the linear probe on the same labels (it diverged before: 16.7 vs 93.6)."""
    train, test = digits("train"), digits("test")
    torch.manual_seed(0)
    backbone = build_backbone("resnet10", cifar_stem=True)
    images, _ = train.to_uint8(16)
    x = (images.float() / 255 - torch.tensor(train.mean).view(1, 3, 1, 1)) / torch.tensor(train.std).view(1, 3, 1, 1)
    y = torch.from_numpy(train.labels)
    head = nn.Linear(512, 10)
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
    for start in range(0, len(x), 128):  # every other image, 64 per step
        xb, yb = x[start : start + 128 : 2], y[start : start + 128 : 2]
        loss = F.cross_entropy(head(backbone(xb)), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    result = finetune_semisupervised(backbone, train, test, SemiSupervisedConfig(fraction=0.1), image_size=16)
    assert result["config"]["epochs"] == 30 and result["config"]["lr_used"] == pytest.approx(0.05 * 140 / 256)
    assert result["semisup_10pct/top1"] >= result["linear_subset_10pct/top1"] - 1.0, result
    assert result["semisup_10pct/top1"] > 80.0


def test_extract_features_restores_mode_and_aligns_labels(tiny_backbone) -> None:
    data = digits("test")
    tiny_backbone.train()
    features, labels = extract_features(tiny_backbone, data, batch_size=100)
    assert features.shape == (360, 32) and tiny_backbone.training
    assert torch.equal(labels, torch.from_numpy(data.labels))
    again, _ = extract_features(tiny_backbone, data, batch_size=7)
    torch.testing.assert_close(features, again)


def test_feature_precision_fp32_is_the_plain_forward_and_bf16_is_close(tiny_backbone) -> None:
    data = digits("test")
    tiny_backbone.eval()
    fp32, _ = extract_features(tiny_backbone, data, precision="fp32")
    with torch.no_grad():
        images, _ = data.to_uint8()
        plain = tiny_backbone(normalise_images(images, data.mean, data.std))
    torch.testing.assert_close(fp32, plain)
    bf16, _ = extract_features(tiny_backbone, data, precision="bf16")
    assert bf16.dtype == torch.float32
    assert F.cosine_similarity(bf16, fp32, dim=1).min() > 0.99


class CandidateCounter:
    """Wraps `_Candidates.add` to record the widest candidate buffer and the pairs kept."""

    def __init__(self, monkeypatch) -> None:
        from auxssl.eval import knn

        self.width, self.kept = 0, 0
        original = knn._Candidates.add

        def add(candidates, crow, row_ids, cols, values):  # noqa: ANN001
            original(candidates, crow, row_ids, cols, values)
            self.width = max(self.width, candidates.values.shape[1])
            self.kept += len(values)

        monkeypatch.setattr(knn._Candidates, "add", add)


def test_tied_features_keep_the_candidate_buffer_bounded(monkeypatch) -> None:
    """A collapsed representation (every feature equal) puts every bank entry at the threshold: the buffer grew
    to the whole bank per query. It stays within cap + one block, and any k tied entries are the top-k."""
    counter = CandidateCounter(monkeypatch)
    bank = F.normalize(torch.ones(4000, 16), dim=1)
    queries = F.normalize(torch.randn(32, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    values, columns = exact_topk(queries, bank, 10, block=256)
    assert counter.width <= 16 * 10 + 256
    torch.testing.assert_close(values, (queries @ bank[:1].T).expand(-1, 10))
    assert all(len(set(row.tolist())) == 10 for row in columns)


@pytest.mark.parametrize("scan", [torch.float32, torch.int8])
def test_query_chunks_share_the_candidate_buffers_and_stay_exact(scan: torch.dtype) -> None:
    """`BankIndex.topk` reuses one candidate buffer for all its query chunks: the first chunk's queries tie with
    a third of the bank (the buffer grows to its cap and is compacted), the next ones keep far fewer candidates
    (the first chunk's pairs must not linger), the last chunk is shorter; every chunk's top-k equals the full
    computation's (values; columns up to ties)."""
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(6000, 24, generator=g), dim=1)
    tied = bank[1].clone()
    bank[1::3] = tied  # 2,000 identical rows
    queries = F.normalize(torch.randn(70, 24, generator=g), dim=1)
    queries -= (queries @ tied + 0.5)[:, None] * tied  # the later chunks' queries: far from the tied rows
    queries = F.normalize(queries, dim=1)
    queries[:30] = tied  # the first chunk: 2,000 tied neighbours each, more than the buffer's cap
    values, columns = BankIndex(bank, bank_chunk=500, scan=scan).topk(queries, 20, query_chunk=30)
    full = queries @ bank.T
    torch.testing.assert_close(values, full.topk(20, dim=1).values)
    torch.testing.assert_close(torch.gather(full, 1, columns), values)
    assert all(len(set(row.tolist())) == 20 for row in columns)


def test_concentrated_features_are_scanned_without_keeping_every_pair(monkeypatch) -> None:
    """Features of a randomly initialised network are concentrated (pairwise cosine ≈ 0.986 ± 0.005): an error
    bound for unit rows exceeds their spread, and a reduced-precision scan kept nearly every pair (9.5× the GEMM on
    real CIFAR-10). The int8 scan of the centred rows and queries (same ranking per query) keeps a small share —
    with the same votes."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, generator=g)
    bank = base + 0.12 * torch.randn(8000, 64, generator=g)
    cosines = F.normalize(bank[:200], dim=1) @ F.normalize(bank[200:400], dim=1).T
    assert 0.97 < float(cosines.mean()) < 0.995
    labels = torch.arange(8000) % 10
    queries = base + 0.12 * torch.randn(64, 64, generator=g)
    reference = knn_scores(bank, labels, queries, k=50, num_classes=10, scan=torch.float32, bank_chunk=1000)
    counter = CandidateCounter(monkeypatch)
    votes = knn_scores(bank, labels, queries, k=50, num_classes=10, scan=torch.int8, bank_chunk=1000)
    torch.testing.assert_close(votes, reference, rtol=1e-5, atol=0)  # exp(sim/T) magnifies fp32 rounding 10×
    assert counter.kept / len(queries) < 0.25 * len(bank), counter.kept / len(queries)
