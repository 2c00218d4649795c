"""Training-step throughput: BYOL vs AuxWrapper(BYOL) (rotation, λ = 0.1) on a CIFAR ResNet-18, fp32 and bf16.

    python benchmarks/bench_step.py [--batch-size 64] [--bf16-batch-size 16] [--steps 2] [--device cpu]

Each configuration runs one warm-up step, then ``--steps`` timed steps (forward, backward, SGD step, EMA), with
channels_last and random 32×32 inputs, measured side by side in one run. bf16 uses autocast; on CPUs without
native bf16 (AVX2 only) it is emulated and very slow, hence its smaller default batch. Prints images/s (samples,
two views each) and the ratios; the last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from auxssl import AuxWrapper, RotationPrediction
from auxssl.engine.precision import native_bf16
from baselines import BYOL, build_backbone


def step_rate(aux: bool, dtype: torch.dtype | None, batch_size: int, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    model = BYOL(build_backbone("resnet18", cifar_stem=True))
    if aux:
        model = AuxWrapper(model, [RotationPrediction(weight=0.1)])
    model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.param_groups(), lr=0.05, momentum=0.9)
    views = [torch.rand(batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
             for _ in range(2)]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(views)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.momentum_update(0.99)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bf16-batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    results: dict[str, object] = {"device": str(device), "native_bf16": native_bf16(device)}
    for precision, dtype, batch in (("fp32", None, args.batch_size), ("bf16", torch.bfloat16, args.bf16_batch_size)):
        for name, aux in (("byol", False), ("byol_rotation", True)):
            rate = step_rate(aux, dtype, batch, args.steps, device)
            results[f"{name}_{precision}_img_s"] = round(rate, 2)
            print(f"{name:14s} {precision}  batch {batch:4d}  {rate:8.2f} images/s", flush=True)
        results[f"{precision}_batch"] = batch
        results[f"aux_cost_ratio_{precision}"] = round(results[f"byol_{precision}_img_s"] / results[f"byol_rotation_{precision}_img_s"], 2)
    results["bf16_vs_fp32_byol"] = round(results["byol_bf16_img_s"] / results["byol_fp32_img_s"], 3)
    print(f"rotation task costs {results['aux_cost_ratio_fp32']:.2f}x the BYOL step time (fp32); "
          f"bf16/fp32 speed {results['bf16_vs_fp32_byol']:.3f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
