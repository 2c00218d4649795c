"""Loader throughput on the real CIFAR-10 train split: BYOL two-view recipe, batch 256, every backend.

    python benchmarks/bench_data.py [--batches 30] [--device cpu] [--no-step]

Prints images/s per backend (setup — decoding, .beton writing — excluded and reported separately), the ratio to
the torchvision baseline and, unless --no-step, the rate of a BYOL CIFAR ResNet-18 training step (channels_last;
bf16 autocast where the CPU/GPU runs bf16 natively, else fp32 — on CPUs without AVX512-BF16/AMX, bf16 autocast is
~20x slower than fp32) measured in the same run, so that loader and model can be compared. The last line is one
JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from bench_step import step_rate  # benchmarks/ is on sys.path when this script runs
from machine import machine_info

from auxssl.data import build_loader, cifar10_jpg, get_recipe
from auxssl.data.loaders import ffcv_available
from auxssl.engine.precision import native_bf16


def loader_rate(loader, batches: int, warmup: int = 2) -> float:
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        images += batch.size
    if batch.views[0].is_cuda:
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per backend")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-step", action="store_true", help="skip the training-step measurement")
    parser.add_argument("--step-batch-size", type=int, default=64, help="batch of the training-step measurement")
    args = parser.parse_args()

    dataset = cifar10_jpg("train")
    recipe = get_recipe("byol", 32)
    results: dict[str, object] = {**machine_info(torch.device(args.device)), "batch_size": args.batch_size}
    backends = ["torchvision", "tensor"] + (["ffcv"] if ffcv_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            start = time.perf_counter()
            loader = build_loader(
                backend, dataset, recipe, args.batch_size, device=args.device, num_workers=args.workers,
                beton_path=Path(tmp) / "cifar10.beton",
            )
            setup = time.perf_counter() - start
            rate = loader_rate(loader, args.batches)
            results[f"{backend}_img_s"] = round(rate, 1)
            results[f"{backend}_setup_s"] = round(setup, 1)
            print(f"{backend:12s} {rate:8.0f} images/s (two views each)   setup {setup:5.1f} s", flush=True)
            del loader
    if not ffcv_available():
        print("ffcv          not installed (pip install -e '.[ffcv]'), skipped")
    baseline = results["torchvision_img_s"]
    best = max(backends, key=lambda b: results[f"{b}_img_s"])
    results["best_backend"] = best
    results["ratio_best_vs_torchvision"] = round(results[f"{best}_img_s"] / baseline, 2)
    for backend in backends[1:]:
        results[f"ratio_{backend}_vs_torchvision"] = round(results[f"{backend}_img_s"] / baseline, 2)
        print(f"{backend:12s} {results[f'ratio_{backend}_vs_torchvision']:8.2f}x torchvision")
    if not args.no_step:
        bf16 = native_bf16(torch.device(args.device))
        precision = "bf16" if bf16 else "fp32"
        step = step_rate("byol", torch.bfloat16 if bf16 else None, args.step_batch_size, 2, torch.device(args.device))
        results["train_step_img_s"] = round(step, 1)
        results["train_step_precision"] = precision
        results["ratio_best_vs_train_step"] = round(results[f"{best}_img_s"] / step, 2)
        print(f"train step   {step:8.1f} images/s (BYOL ResNet-18, {precision}, channels_last, "
              f"batch {args.step_batch_size})")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
