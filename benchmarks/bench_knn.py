"""auxssl's exact kNN against its floor (the bare similarity GEMM) and against scikit-learn, on a 50,000 × 512 bank
and 10,000 queries, 10 classes, for each feature distribution users meet.

    python benchmarks/bench_knn.py [--bank 50000] [--queries 10000] [--dim 512] [--k 200] [--repeats 3]
                                   [--features clustered random_init collapsed] [--checkpoint RUN_OR_WEIGHTS]

Feature distributions (``--features``): ``clustered`` (synthetic classes, like a mid-training embedding);
``random_init`` (a randomly initialised CIFAR ResNet-18 on the real CIFAR-10 JPEGs: train images as the bank,
test images as queries — what an epoch-0 evaluation sees, pairwise cosine ≈ 0.99; needs the shared archive);
``collapsed`` (every feature equal up to 1e-6 noise, a dead representation); ``trained`` (the backbone of
``--checkpoint`` on CIFAR-10). Each distribution's ratios are printed, then ``worst_knn_vs_gemm``.

The floor is the bare fp32 similarity GEMM, queries @ bank.T written into a preallocated (queries × bank) output:
the cost of scoring every pair exactly. auxssl's kNN (normalisation, the scan in cache-sized blocks, exact top-k
from a sampled-threshold candidate set, votes) is reported as a ratio to it, ``knn_vs_gemm``, with its default
scan (int8 with exact fp32 rescoring on a CPU, fp32 elsewhere), and ``knn_fp32_scan_vs_gemm``
with the fp32 scan forced; all best of ``--repeats``, measured side by side (interleaved). The two scans' votes
are compared: ``max_vote_diff`` (the largest change of a class vote, as a fraction of that query's total vote:
fp32 rounding, plus one neighbour's weight where two neighbours tie at the k-th place to within rounding) and
identical top-1 predictions. scikit-learn (brute force, metric="cosine", weights=exp((1 - distance) / T))
uses the same neighbours and weighting; the agreement of the top-1 predictions is reported. The last line is one
JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from machine import machine_info  # benchmarks/ is on sys.path when a benchmark script runs
from sklearn.neighbors import KNeighborsClassifier

from auxssl.eval.knn import knn_scores, scan_dtype


def clustered_features(
    centres: np.ndarray, n: int, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Samples around class centres with isotropic Gaussian noise (overlapping classes, like a mid-training
    embedding: kNN accuracy well below 100%, so the agreement between implementations is informative)."""
    labels = rng.integers(0, len(centres), n)
    return centres[labels] + noise * rng.standard_normal((n, centres.shape[1]), dtype=np.float32), labels


def real_features(backbone: torch.nn.Module, bank: int, queries: int) -> tuple[np.ndarray, ...]:
    """Features of CIFAR-10 train (bank) and test (queries) images, at 32 px, under bf16 where native."""
    from auxssl.data.datasets import cifar10_jpg
    from auxssl.engine.build import random_subset
    from auxssl.eval.features import extract_features

    out = []
    for split, n in (("train", bank), ("test", queries)):
        features, labels = extract_features(backbone, random_subset(cifar10_jpg(split), n), image_size=32)
        out += [features.numpy(), labels.numpy()]
    return tuple(out)


def feature_sets(kind: str, args: argparse.Namespace, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    if kind == "clustered":
        centres = rng.standard_normal((args.classes, args.dim), dtype=np.float32)
        return (*clustered_features(centres, args.bank, args.noise, rng),
                *clustered_features(centres, args.queries, args.noise, rng))
    if kind == "collapsed":
        common = rng.standard_normal(args.dim, dtype=np.float32)
        make = lambda n: (common + 1e-6 * rng.standard_normal((n, args.dim), dtype=np.float32),  # noqa: E731
                          rng.integers(0, args.classes, n))
        return (*make(args.bank), *make(args.queries))
    from baselines import build_backbone

    if kind == "random_init":
        torch.manual_seed(0)
        return real_features(build_backbone("resnet18", cifar_stem=True), args.bank, args.queries)
    if kind == "trained":
        from auxssl.eval.offline import load_backbone

        return real_features(load_backbone(args.checkpoint)[0], args.bank, args.queries)
    raise SystemExit(f"unknown feature distribution {kind!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--noise", type=float, default=12.0, help="within-class noise (class centres have norm ~√dim)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn comparison")
    parser.add_argument("--features", nargs="+", default=["clustered", "random_init", "collapsed"],
                        choices=["clustered", "random_init", "collapsed", "trained"])
    parser.add_argument("--checkpoint", help="run directory, checkpoint or exported weights, for --features trained")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    results: dict[str, object] = {**machine_info(torch.device("cpu")), "bank": args.bank, "queries": args.queries,
                                  "k": args.k, "temperature": args.temperature}
    ratios = {}
    for kind in args.features:
        bank, bank_labels, queries, query_labels = feature_sets(kind, args, rng)
        figures = time_knn(bank, bank_labels, queries, query_labels, args)
        print(f"[{kind}] dim {bank.shape[1]}: bare GEMM {figures['gemm_s']:.2f} s; "
              f"auxssl kNN {figures['auxssl_s']:.2f} s "
              f"= {figures['knn_vs_gemm']:.3f}× the GEMM ({figures['scan']} scan), fp32 scan "
              f"{figures['knn_fp32_scan_vs_gemm']:.3f}×; votes differ by ≤ {figures['max_vote_diff']:.1e} of a "
              f"query's total, identical predictions {100 * figures['same_top1_as_fp32_scan']:.2f}%", flush=True)
        predictions = figures.pop("_predictions")
        if kind == "clustered":  # the data scikit-learn is compared on
            compared = (bank, bank_labels, queries, query_labels, predictions)
        results[kind] = figures
        ratios[kind] = figures["knn_vs_gemm"]
    results["worst_knn_vs_gemm"] = max(ratios.values())
    results["worst_features"] = max(ratios, key=ratios.get)
    if args.no_sklearn or "clustered" not in args.features:
        print(json.dumps(results))
        return
    bank, bank_labels, queries, query_labels, ours = compared
    t, t_ours = args.temperature, results["clustered"]["auxssl_s"]
    sklearn_knn = KNeighborsClassifier(
        n_neighbors=args.k, algorithm="brute", metric="cosine", weights=lambda d: np.exp((1.0 - d) / t), n_jobs=None
    )
    start = time.perf_counter()
    sklearn_knn.fit(bank, bank_labels)
    theirs = sklearn_knn.predict(queries)
    t_sklearn = time.perf_counter() - start
    print(f"scikit-learn   {t_sklearn:7.2f} s   top-1 {100 * (theirs == query_labels).mean():.2f}%", flush=True)

    agreement = float((ours == theirs).mean())
    speedup = t_sklearn / t_ours
    print(f"speed-up {speedup:.1f}x over scikit-learn, identical predictions {100 * agreement:.2f}%")
    results.update({"sklearn_s": round(t_sklearn, 3), "speedup_vs_sklearn": round(speedup, 2),
                    "agreement": round(agreement, 5)})
    print(json.dumps(results))


def time_knn(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
             args: argparse.Namespace) -> dict[str, object]:
    """The bare GEMM, auxssl's kNN (default scan) and its fp32 scan, interleaved, best of ``args.repeats``."""
    bank_t, labels_t, queries_t = torch.from_numpy(bank), torch.from_numpy(bank_labels), torch.from_numpy(queries)
    unit_bank = torch.nn.functional.normalize(bank_t, dim=1)
    unit_queries = torch.nn.functional.normalize(queries_t, dim=1)
    output = torch.empty(len(queries), len(bank))
    default_scan = scan_dtype(torch.device("cpu"))
    classes = int(max(bank_labels.max(), query_labels.max())) + 1
    t_gemm, t_ours, t_fp32 = float("inf"), float("inf"), float("inf")
    for _ in range(args.repeats):  # interleaved, best of each
        start = time.perf_counter()
        torch.mm(unit_queries, unit_bank.T, out=output)
        t_gemm = min(t_gemm, time.perf_counter() - start)
        start = time.perf_counter()
        scores = knn_scores(bank_t, labels_t, queries_t, k=args.k, temperature=args.temperature, num_classes=classes)
        t_ours = min(t_ours, time.perf_counter() - start)
        start = time.perf_counter()
        fp32_scores = knn_scores(bank_t, labels_t, queries_t, k=args.k, temperature=args.temperature,
                                 num_classes=classes, scan=torch.float32)
        t_fp32 = min(t_fp32, time.perf_counter() - start)
    del output
    ours = scores.argmax(dim=1).numpy()
    return {"dim": int(bank.shape[1]), "scan": str(default_scan).removeprefix("torch."), "gemm_s": round(t_gemm, 3),
            "auxssl_s": round(t_ours, 3), "knn_vs_gemm": round(t_ours / t_gemm, 3),
            "knn_fp32_scan_vs_gemm": round(t_fp32 / t_gemm, 3),
            "max_vote_diff": float(((scores - fp32_scores).abs().amax(1) / fp32_scores.sum(1)).max()),
            "same_top1_as_fp32_scan": round(float((scores.argmax(1) == fp32_scores.argmax(1)).float().mean()), 5),
            "auxssl_top1": round(100 * float((ours == query_labels).mean()), 2), "_predictions": ours}


if __name__ == "__main__":
    main()
