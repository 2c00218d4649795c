"""The cost of one kNN evaluation against one training epoch, on real CIFAR-10 (the shared JPEG archive).

    python benchmarks/bench_eval.py [--backbone resnet18] [--width 64] [--images 5000] [--batch-size 512]

Measured side by side in one run, for the same CIFAR backbone:

- ``bare``: the backbone's inference rate on an in-memory batch (eval mode, the fastest native precision — bf16
  autocast where native, else fp32 — channels_last): the floor of feature extraction;
- ``extract``: `extract_features` as the trainer calls it (decoded images, the same precision and layout) on
  ``--images`` training images, and in fp32 (as before the precision choice) for comparison;
- ``knn``: the exact kNN of the 10,000 test features against the 50,000-image bank (random features of the
  backbone's width: the cost does not depend on their values);
- ``epoch``: one training epoch of BYOL (50,000 images) at the measured step rate (`bench_step.step_rate`, batch
  ``--step-batch-size``, the same precision).

One evaluation = extraction of 60,000 images + the kNN. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_step import step_rate  # benchmarks/ is on sys.path when a benchmark script runs
from machine import machine_info

from auxssl.data import cifar10_jpg
from auxssl.engine.build import random_subset
from auxssl.engine.precision import native_bf16
from auxssl.eval.features import extract_features
from auxssl.eval.knn import knn_scores
from baselines import build_backbone, feature_dim

TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000


def bare_rate(backbone: torch.nn.Module, batch_size: int, dtype: torch.dtype | None, repeats: int = 3) -> float:
    x = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    best = float("inf")
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        backbone(x)
        for _ in range(repeats):
            start = time.perf_counter()
            backbone(x)
            best = min(best, time.perf_counter() - start)
    return batch_size / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--images", type=int, default=5000, help="training images whose extraction is timed")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--step-batch-size", type=int, default=128)
    args = parser.parse_args()
    device = torch.device("cpu")
    bf16 = native_bf16(device)
    dtype = torch.bfloat16 if bf16 else None
    precision = "bf16" if bf16 else "fp32"
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone, cifar_stem=True, width=args.width).eval()
    backbone.to(memory_format=torch.channels_last)
    data = random_subset(cifar10_jpg("train"), args.images)
    decoded = data.to_uint8()

    bare = bare_rate(backbone, args.batch_size, dtype)
    rates = {}
    plain = build_backbone(args.backbone, cifar_stem=True, width=args.width).eval()  # NCHW weights, for fp32
    plain.load_state_dict(backbone.state_dict())
    for name, prec, model in (("extract", "auto", backbone), ("extract_fp32_old", "fp32", plain)):
        start = time.perf_counter()
        extract_features(model, data, images=decoded[0], rows=decoded[1], batch_size=args.batch_size, precision=prec)
        rates[name] = len(data) / (time.perf_counter() - start)
    dim = feature_dim(backbone)
    bank, queries = torch.randn(TRAIN_IMAGES, dim), torch.randn(TEST_IMAGES, dim)
    start = time.perf_counter()
    knn_scores(bank, torch.randint(0, 10, (TRAIN_IMAGES,)), queries, k=200, num_classes=10)
    knn_s = time.perf_counter() - start
    standard = args.backbone == "resnet18" and args.width == 64
    step = step_rate("byol", dtype, args.step_batch_size, 2, device) if standard else None

    extraction_s = (TRAIN_IMAGES + TEST_IMAGES) / rates["extract"]
    results = {
        **machine_info(device), "backbone": args.backbone, "width": args.width, "precision": precision,
        "bare_inference_img_s": round(bare, 1), "extract_img_s": round(rates["extract"], 1),
        "extract_fp32_img_s": round(rates["extract_fp32_old"], 1),
        "extract_vs_bare": round(rates["extract"] / bare, 3),
        "extract_speedup_vs_fp32": round(rates["extract"] / rates["extract_fp32_old"], 2),
        "knn_s": round(knn_s, 2), "evaluation_s": round(extraction_s + knn_s, 1),
    }
    print(f"bare inference   {bare:8.1f} images/s ({precision}, channels_last)")
    print(f"extraction       {rates['extract']:8.1f} images/s ({results['extract_vs_bare']:.2f}× bare); "
          f"fp32 {rates['extract_fp32_old']:.1f} images/s")
    print(f"kNN 10k × 50k    {knn_s:8.2f} s; one evaluation ≈ {results['evaluation_s']:.0f} s")
    if step is not None:
        epoch_s = TRAIN_IMAGES / step
        results.update({"train_step_img_s": round(step, 1), "epoch_s": round(epoch_s, 1),
                        "evaluation_vs_epoch": round((extraction_s + knn_s) / epoch_s, 3)})
        print(f"training epoch   {epoch_s:8.1f} s (BYOL step {step:.1f} images/s); evaluation / epoch = "
              f"{results['evaluation_vs_epoch']:.3f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
