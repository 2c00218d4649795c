"""Run by test_other_loops.py under torchrun: a Lightning run that writes, per rank, the rotation labels
`AuxiliaryLoss` drew and the weights training started from (``--per-rank-seed`` adds `SeedPerRank`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from auxssl import AuxiliaryLoss
from auxssl.engine.distributed import shutdown_distributed
from auxssl.integrations.lightning import SeedPerRank
from auxssl.tasks import RotationPrediction


class Labels(RotationPrediction):
    """Rotation prediction that keeps the labels it drew."""

    def __init__(self) -> None:
        super().__init__()
        self.drawn: list[list[int]] = []

    def random_labels(self, n: int, device: torch.device) -> torch.Tensor:
        labels = super().random_labels(n, device)
        self.drawn.append(labels.tolist())
        return labels


class Module(pl.LightningModule):
    def __init__(self, out: Path) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.aux = AuxiliaryLoss([Labels()], feature_dim=4)
        self.out = out

    def on_train_start(self) -> None:
        self.first_weight = self.backbone[0].weight.detach().flatten()[:4].tolist()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        (x,) = batch
        return self.aux(self.backbone, [x, x.flip(-1)])["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self) -> None:
        record = {"labels": self.aux[0].drawn, "weight": self.first_weight}
        (self.out / f"rank{self.global_rank}.json").write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--per-rank-seed", action="store_true")
    args = parser.parse_args()
    pl.seed_everything(0, verbose=False)
    data = DataLoader(TensorDataset(torch.randn(16, 3, 8, 8)), batch_size=4)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=args.devices, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[SeedPerRank(0)] if args.per_rank_seed else [])
    trainer.fit(Module(args.out), data)
    shutdown_distributed(completed=True)  # as the Lightning example: gloo groups are not destroyed at exit


if __name__ == "__main__":
    main()
