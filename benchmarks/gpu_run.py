"""A short training run of BYOL and BYOL + rotation on one device, reporting images/s and host syncs per step.

    python benchmarks/gpu_run.py [--device cuda] [--steps 40] [--batch-size 256]

Real CIFAR-10 (the shared JPEG archive; the offline digits where it is missing), the tensor loader on the device,
CIFAR ResNet-18, ``precision: auto``, two epochs of ``--steps`` steps (a log record at each epoch's end). Host
synchronisations are counted over the whole training loop of the first epoch, per step:
on CUDA with ``torch.cuda.set_sync_debug_mode("warn")`` (one warning per synchronising call), on a CPU by
counting ``aten._local_scalar_dense`` dispatches (what ``.item()``, ``float()`` and ``bool()`` of a tensor run).
Each configuration's figures are printed; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings

import torch
from machine import machine_info  # benchmarks/ is on sys.path when a benchmark script runs

from auxssl.config import load_config
from auxssl.data.datasets import find_shared_cifar10_archive
from auxssl.engine.syncs import ScalarReads
from auxssl.engine.trainer import Trainer
from auxssl.eval.tracker import read_metrics


def run(method_tasks: str, args: argparse.Namespace, out: str) -> dict[str, float]:
    """Two epochs of ``args.steps`` steps each: images/s from the second (the run's own record), host syncs over
    the whole loop of the first, per step."""
    dataset = "cifar10_jpg" if find_shared_cifar10_archive() else "digits"
    config = load_config(None, [
        f"name={method_tasks}", f"output_dir={out}", f"data.dataset={dataset}", "data.backend=tensor",
        "data.recipe=byol", "data.image_size=32", f"data.batch_size={args.batch_size}",
        f"data.train_subset={args.steps * args.batch_size}", "model.backbone=resnet18", "model.method=byol",
        f"tasks={'[{name: rotation}]' if method_tasks.endswith('rotation') else '[]'}", f"train.device={args.device}",
        "train.epochs=2", "train.progress=false", f"train.log_every_steps={args.steps}", "eval.every_epochs=0",
        "train.checkpoint_every_epochs=0", "optim.warmup_epochs=0.5",
    ])
    trainer = Trainer(config)
    fit_one_epoch = lambda: trainer.fit() if trainer.epoch < 1 else None  # noqa: E731
    trainer.config.train.epochs = 1  # count over the first epoch, then time the second
    if trainer.device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            fit_one_epoch()
            torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
    else:
        counter = ScalarReads()
        with counter:
            fit_one_epoch()
        syncs = counter.count
    trainer.config.train.epochs = 2
    trainer.fit()
    second = read_metrics(config.run_dir, "train")[-1]
    return {"images_per_s": round(second["images_per_s"], 1), "host_syncs_per_step": round(syncs / args.steps, 2),
            "dataset": dataset, "precision": trainer.precision.label}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=40, help="steps per epoch")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    results: dict[str, object] = {**machine_info(torch.device(args.device)), "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as out:
        for name in ("byol", "byol_rotation"):
            results[name] = run(name, args, out)
            print(f"{name}: {results[name]}", flush=True)
    results["rotation_step_cost"] = round(results["byol"]["images_per_s"] / results["byol_rotation"]["images_per_s"], 3)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
