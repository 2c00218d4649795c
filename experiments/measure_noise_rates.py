"""The noise present in SSL batches of a dataset, per noise-control setting, measured without training.

The false-negative and false-positive rates depend on the data, the sampling and the crops, not on the network, so
they are measured here on the loader's batches directly (SimCLR's in-batch negatives; MoCo's queue would add the
same-class share of its keys). Prints one Markdown table, last.

    python experiments/measure_noise_rates.py --dataset cifar10_jpg --batches 40
"""

from __future__ import annotations

import argparse
import statistics

import torch

from auxssl.config import load_config
from auxssl.engine.build import build_datasets, build_train_loader
from auxssl.noise.control import NoiseControl
from baselines.protocol import Batch, ContrastSets

SETTINGS = {
    "natural": [],
    "fn_elimination 0.3": ["noise.fn_elimination=0.3"],
    "fn_elimination 0.5": ["noise.fn_elimination=0.5"],
    "fn_elimination 1": ["noise.fn_elimination=1.0"],
    "classes_per_batch 2": ["noise.fn_injection.classes_per_batch=2"],
    "fp_injection 0.2": ["noise.fp_injection=0.2"],
    "good_crop_fraction 0.5": ["noise.good_crop_fraction=0.5"],
    "good_crop_fraction 1": ["noise.good_crop_fraction=1.0"],
}


class InBatchNegatives:
    """SimCLR's negatives on one process: every image of the batch against every other."""

    def contrast_sets(self, batch: Batch) -> ContrastSets:
        return ContrastSets(batch.index, batch.index)


def measure(overrides: list[str], batches: int) -> dict[str, tuple[float, float]]:
    config = load_config(None, ["model.method=simclr", *overrides])
    train = build_datasets(config).train
    control = NoiseControl(config.noise, train, config.train.seed)
    loader = build_train_loader(config, train, torch.device("cpu"), noise=control)
    values: dict[str, list[float]] = {}
    for step, batch in zip(range(batches), loader):
        for key, value in control.prepare(batch, InBatchNegatives(), step).items():
            values.setdefault(key, []).append(float(value))
    return {k: (statistics.fmean(v), statistics.stdev(v)) for k, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10_jpg")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--recipe", default="simclr")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    common = [f"data.dataset={args.dataset}", f"data.batch_size={args.batch_size}", f"data.recipe={args.recipe}"]
    columns = ("noise/fn_rate_raw", "noise/fn_rate", "noise/fp_rate")
    lines = [f"{args.dataset}, batch {args.batch_size}, recipe {args.recipe}, {args.batches} batches "
             "(mean ± std over batches)",
             "", "| setting | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for name in args.settings:
        rates = measure(common + SETTINGS[name], args.batches)
        cells = [f"{rates[c][0]:.4f} ± {rates[c][1]:.4f}" if c in rates else "—" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
