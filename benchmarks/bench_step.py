"""Training-step time: auxssl's BYOL against the same BYOL built from lightly's modules, and the cost of rotation
prediction against its FLOP bound. CIFAR ResNet-18, random 32×32 inputs, channels_last, measured side by side.

    pip install -e ".[bench]"          # lightly, for the peer step (benchmark only)
    python benchmarks/bench_step.py [--batch-size 64] [--rounds 3] [--steps 2] [--device cpu] [--precision fp32]

Steps (forward, backward, SGD step, EMA update) of every configuration are timed in interleaved rounds (A B C …,
then again), and each configuration's best round is kept, so that drifts of a shared machine hit every
configuration alike. Configurations:

- ``byol``: `baselines.BYOL`, the step the engine runs.
- ``lightly_byol``: lightly's ``BYOLProjectionHead``/``BYOLPredictionHead`` (the same 4096→256 MLPs),
  ``NegativeCosineSimilarity`` and ``update_momentum``, on the same backbone, batch, optimiser and precision.
- ``byol_rotation`` / ``byol_rotation16``: `AuxWrapper(BYOL)` with rotation prediction at full / half resolution.
- ``byol_jigsaw``: `AuxWrapper(BYOL)` with 2×2 jigsaw prediction.
- ``byol_augself``: `AuxWrapper(BYOL)` with AugSelf (crop, colour and flip heads on the base method's features, no
  backbone pass of its own; target ≤ 1.05× the BYOL step, ``byol_augself_overhead``).

FLOP bound of the rotation overhead: a BYOL step costs 8 forward-equivalents per image (online forward 2 views,
backward ≈ 2× forward, target forward 2 views); rotation adds 6 (forward + backward of the 2 rotated copies), or
6/4 = 1.5 at half resolution, so the bound is 14/8 = 1.75× the BYOL step (9.5/8 ≈ 1.19× at half resolution).
The last line is one JSON object with every figure; ``byol_step_time_vs_lightly`` = auxssl's step time ÷ lightly's.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable

import torch
from machine import machine_info  # benchmarks/ is on sys.path when a benchmark script runs
from torch import Tensor, nn

from auxssl import AuxWrapper, JigsawPrediction, RotationPrediction
from auxssl.data.params import identity_params, stack_views
from auxssl.tasks import AugSelf
from baselines import BYOL, Batch, build_backbone

ROTATION_BOUND = {"byol_rotation": 14 / 8, "byol_rotation16": 9.5 / 8}


class LightlyBYOL(nn.Module):
    """BYOL assembled from lightly's modules, as in lightly's BYOL example (symmetrised loss, EMA of the backbone
    and the projection head)."""

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feature_dim, 4096, 256)
        self.prediction_head = BYOLPredictionHead(256, 4096, 256)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, views: list[Tensor]) -> Tensor:
        x0, x1 = views
        p0 = self.prediction_head(self.projection_head(self.backbone(x0)))
        p1 = self.prediction_head(self.projection_head(self.backbone(x1)))
        with torch.no_grad():
            z0 = self.projection_head_momentum(self.backbone_momentum(x0))
            z1 = self.projection_head_momentum(self.backbone_momentum(x1))
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    def momentum_update(self, tau: float) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(self.backbone, self.backbone_momentum, m=tau)
        update_momentum(self.projection_head, self.projection_head_momentum, m=tau)


def build(name: str, device: torch.device) -> tuple[nn.Module, Callable[[list[Tensor]], Tensor], torch.optim.Optimizer]:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", cifar_stem=True)
    if name == "lightly_byol":
        model: nn.Module = LightlyBYOL(backbone, 512)
        params = [p for p in model.parameters() if p.requires_grad]
        loss_of = model
    else:
        model = BYOL(backbone)
        if name.startswith("byol_rotation"):
            model = AuxWrapper(model, [RotationPrediction(weight=0.1, size=16 if name.endswith("16") else None)])
        elif name == "byol_jigsaw":
            model = AuxWrapper(model, [JigsawPrediction()])
        elif name == "byol_augself":
            model = AuxWrapper(model, [AugSelf(flip=1.0)])
        params = model.param_groups()

        def loss_of(views: list[Tensor]) -> Tensor:
            return model(with_augmentation_parameters(views) if name == "byol_augself" else views)["loss"]
    model.to(device, memory_format=torch.channels_last)
    return model, loss_of, torch.optim.SGD(params, lr=0.05, momentum=0.9)


def with_augmentation_parameters(views: list[Tensor]) -> Batch:
    """The views with random crop boxes and augmentation parameters (what a loader records), for AugSelf."""
    n, g = len(views[0]), torch.Generator().manual_seed(0)
    corner = torch.rand(2, n, 2, generator=g) * 0.5
    params = stack_views([identity_params(n), identity_params(n)])
    params["flip"] = torch.rand(2, n, generator=g) < 0.5
    params["jitter"] = 1 + 0.4 * (torch.rand(2, n, 4, generator=g) - 0.5)
    boxes = torch.cat([corner, corner + 0.5], dim=2)
    device = views[0].device
    return Batch(views, crop_boxes=boxes.to(device), aug_params={k: v.to(device) for k, v in params.items()})


def timed_steps(name: str, setup: tuple, views: list[Tensor], dtype: torch.dtype | None, steps: int) -> float:
    """Seconds per step over ``steps`` steps."""
    model, loss_of, optimizer = setup
    device = views[0].device
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_of(views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.momentum_update(0.99)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def random_views(batch_size: int, device: torch.device, size: int = 32) -> list[Tensor]:
    return [torch.rand(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
            for _ in range(2)]


def step_rate(name: str, dtype: torch.dtype | None, batch_size: int, steps: int, device: torch.device) -> float:
    """Images per second of one configuration's training step (after one warm-up step)."""
    setup, views = build(name, device), random_views(batch_size, device)
    timed_steps(name, setup, views, dtype, 1)
    return batch_size / timed_steps(name, setup, views, dtype, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is kept")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--configs", nargs="*", default=["byol", "lightly_byol", "byol_rotation", "byol_rotation16",
                                                         "byol_jigsaw", "byol_augself"])
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    views = random_views(args.batch_size, device)
    setups = {name: build(name, device) for name in args.configs}
    for name, setup in setups.items():  # warm-up (allocations, oneDNN primitive caches)
        timed_steps(name, setup, views, dtype, 1)
    best = {name: float("inf") for name in setups}
    for _ in range(args.rounds):
        for name, setup in setups.items():
            best[name] = min(best[name], timed_steps(name, setup, views, dtype, args.steps))
    results: dict[str, object] = {**machine_info(device), "precision": args.precision, "batch": args.batch_size}
    for name, seconds in best.items():
        results[f"{name}_img_s"] = round(args.batch_size / seconds, 2)
        print(f"{name:16s} {args.precision}  batch {args.batch_size:4d}  {seconds:7.3f} s/step  "
              f"{args.batch_size / seconds:8.2f} images/s", flush=True)
    if "lightly_byol" in best and "byol" in best:
        results["byol_step_time_vs_lightly"] = round(best["byol"] / best["lightly_byol"], 3)
        print(f"auxssl BYOL step time / lightly BYOL step time: {results['byol_step_time_vs_lightly']:.3f}")
    for name, bound in ROTATION_BOUND.items():
        if name in best and "byol" in best:
            ratio = best[name] / best["byol"]
            results[f"{name}_overhead"] = round(ratio, 3)
            results[f"{name}_flop_bound"] = round(bound, 3)
            print(f"{name}: {ratio:.3f}× the BYOL step (FLOP bound {bound:.3f}×, {100 * (ratio / bound - 1):+.1f}%)")
    for name in ("byol_jigsaw", "byol_augself"):
        if name in best and "byol" in best:
            results[f"{name}_overhead"] = round(best[name] / best["byol"], 3)
            print(f"{name}: {results[f'{name}_overhead']:.3f}× the BYOL step")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
