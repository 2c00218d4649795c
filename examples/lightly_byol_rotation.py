"""lightly's BYOL, assembled as lightly's own example does (plain PyTorch), plus rotation prediction from auxssl.

The three lines that add the auxiliary task are marked ``# auxssl``: build the loss, hand its parameters to the
optimiser, add its λ-weighted term to the BYOL loss. Runs offline on scikit-learn's digits by default:

    python examples/lightly_byol_rotation.py --epochs 10                    # digits
    python examples/lightly_byol_rotation.py --dataset cifar10 --download  # CIFAR-10 through torchvision

(`examples/lightning_byol_rotation.py` trains the same model with and without rotation and records both runs.)
"""

from __future__ import annotations

import argparse
import copy

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
from auxssl.data import get_dataset
from auxssl.engine.build import random_subset
from auxssl.eval.offline import evaluate_backbone


class BYOL(nn.Module):
    """lightly's BYOL example model: a backbone, projection and prediction heads, and their momentum copies."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(512, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


class Transformed(Dataset):
    """An auxssl dataset (PIL image, label) under a lightly transform (a list of views)."""

    def __init__(self, images: Dataset, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image, label = self.images[i]
        return self.transform(image), label


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", help="digits (offline), cifar10, cifar10_jpg, or a name of "
                                                              "auxssl.data.DATASETS")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = args.device

    resnet = torchvision.models.resnet18()
    backbone = nn.Sequential(*list(resnet.children())[:-1])  # (B, 512, 1, 1), as in lightly's examples
    model = BYOL(backbone).to(device)
    transform = BYOLTransform(view_1_transform=BYOLView1Transform(input_size=32, gaussian_blur=0.0),
                              view_2_transform=BYOLView2Transform(input_size=32, gaussian_blur=0.0))
    train = random_subset(get_dataset(args.dataset, "train", download=args.download), args.train_subset)
    loader = DataLoader(Transformed(train, transform), batch_size=args.batch_size, shuffle=True, drop_last=True)
    criterion = NegativeCosineSimilarity()

    aux = AuxiliaryLoss(feature_dim=512).to(device)  # auxssl: rotation prediction, λ = 0.1
    optimizer = torch.optim.SGD([*model.parameters(), *aux.parameters()], lr=0.06)  # auxssl: its head trains too

    for epoch in range(args.epochs):
        momentum = cosine_schedule(epoch, args.epochs, 0.996, 1)
        total = 0.0
        for (x0, x1), _ in loader:
            update_momentum(model.backbone, model.backbone_momentum, m=momentum)
            update_momentum(model.projection_head, model.projection_head_momentum, m=momentum)
            x0, x1 = x0.to(device), x1.to(device)
            p0, z0 = model(x0), model.forward_momentum(x0)
            p1, z1 = model(x1), model.forward_momentum(x1)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            loss = loss + aux(model.backbone, [x0, x1])["loss"]  # auxssl: + λ · rotation loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            total += loss.item()
        print(f"epoch {epoch}: loss {total / max(1, len(loader)):.4f}")

    test = random_subset(get_dataset(args.dataset, "test", download=args.download), args.test_subset)
    results = evaluate_backbone(backbone, train, test, image_size=32, device=device, num_workers=0)
    print({k: round(v, 2) for k, v in results.items()})
    return results


if __name__ == "__main__":
    main()
