"""lightly's BYOL as a PyTorch Lightning module, plus rotation prediction, with auxssl's kNN monitor and run
recorder: ``auxssl report`` then compares runs with and without rotation (and auxssl-engine runs of the same
evaluation settings) as it compares its own.

    python examples/lightning_byol_rotation.py --output-dir runs/lightning              # BYOL + rotation
    python examples/lightning_byol_rotation.py --output-dir runs/lightning --no-rotation
    auxssl report runs/lightning --out runs/lightning/report
"""

from __future__ import annotations

import argparse
import copy

import lightning.pytorch as pl
import torch
import torchvision
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform
from lightly.utils.scheduler import cosine_schedule
from torch import nn
from torch.utils.data import DataLoader, Dataset

from auxssl import AuxiliaryLoss
from auxssl.engine.distributed import shutdown_distributed
from auxssl.integrations.lightning import KNNMonitor, RunRecorder, SeedPerRank


class BYOLWithRotation(pl.LightningModule):
    """lightly's Lightning BYOL example, with ``aux`` (rotation prediction, λ = 0.1) added to its loss."""

    def __init__(self, rotation: bool = True, max_epochs: int = 10) -> None:
        super().__init__()
        resnet = torchvision.models.resnet18()
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = BYOLProjectionHead(512, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()
        self.aux = AuxiliaryLoss(feature_dim=512) if rotation else None  # auxssl
        self.max_epochs = max_epochs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    def training_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        momentum = cosine_schedule(self.current_epoch, self.max_epochs, 0.996, 1)
        update_momentum(self.backbone, self.backbone_momentum, m=momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=momentum)
        (x0, x1), _ = batch
        p0, z0 = self.forward(x0), self.forward_momentum(x0)
        p1, z1 = self.forward(x1), self.forward_momentum(x1)
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        out = {"loss/base": loss.detach()}
        if self.aux is not None:
            terms = self.aux(self.backbone, [x0, x1])  # auxssl: λ-weighted total and every term
            loss = loss + terms["loss"]
            out.update({k: v.detach() for k, v in terms.items() if k != "loss"})
        self.log("train_loss", loss)
        return {"loss": loss, **out}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.06)  # self.aux is a submodule: its head is included


class Transformed(Dataset):
    def __init__(self, images: Dataset, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image, label = self.images[i]
        return self.transform(image), label


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/lightning")
    parser.add_argument("--dataset", default="digits", help="digits (offline), cifar10_jpg, cifar10, …")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-rotation", action="store_true")
    parser.add_argument("--knn-every", type=int, default=2)
    parser.add_argument("--devices", type=int, default=1, help="processes (under torchrun: its --nproc_per_node)")
    args = parser.parse_args(argv)
    pl.seed_everything(args.seed)

    # the kNN of an auxssl run with these data settings (same subsets, image size, protocol): comparable runs
    knn = KNNMonitor.like_auxssl(args.dataset, train_subset=args.train_subset, test_subset=args.test_subset,
                                 image_size=32, every_n_epochs=args.knn_every, at_start=True)
    transform = BYOLTransform(view_1_transform=BYOLView1Transform(input_size=32, gaussian_blur=0.0),
                              view_2_transform=BYOLView2Transform(input_size=32, gaussian_blur=0.0))
    loader = DataLoader(Transformed(knn.train_set, transform), batch_size=args.batch_size, shuffle=True,
                        drop_last=True)
    name = f"lightly_byol{'' if args.no_rotation else '+rotation'}-s{args.seed}"
    recorder = RunRecorder(f"{args.output_dir}/{name}", method="lightly_byol", seed=args.seed, dataset=args.dataset,
                           tasks=[] if args.no_rotation else ["rotation"], log_every_n_steps=10,
                           budget={"batch_size": args.batch_size, "train_images": len(knn.train_set)})
    # SeedPerRank: under DDP every rank its own augmentations and rotation labels (seed_everything seeds all alike)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="auto", devices=args.devices,
                         callbacks=[SeedPerRank(args.seed), recorder, knn],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(BYOLWithRotation(rotation=not args.no_rotation, max_epochs=args.epochs), loader)
    # under torchrun on CPU: leave the gloo group before exiting (Lightning destroys only NCCL groups at exit; a
    # gloo group alive at interpreter exit can abort its process: 'terminate called without an active exception')
    shutdown_distributed(completed=True)


if __name__ == "__main__":
    main()
