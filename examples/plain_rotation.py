"""A hand-written SSL loop without any SSL library (SimSiam: negative cosine between a predictor and a stopped-
gradient projection), plus rotation prediction from auxssl: the auxiliary term is one line of the loss.

    python examples/plain_rotation.py --steps 200
"""

import argparse

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.transforms import v2

from auxssl import AuxiliaryLoss
from auxssl.data import digits

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--batch-size", type=int, default=64)
args = parser.parse_args()
torch.manual_seed(0)

images, _ = digits("train").to_uint8()  # 1,437 real 32 px images, offline
augment = v2.Compose([v2.RandomResizedCrop(32, scale=(0.2, 1.0)), v2.RandomHorizontalFlip(),
                      v2.ColorJitter(0.4, 0.4, 0.4, 0.1), v2.ToDtype(torch.float32, scale=True)])
backbone = torchvision.models.resnet18(num_classes=512)  # its fc as the projector's first layer
projector = nn.Sequential(nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 128))
predictor = nn.Sequential(nn.Linear(128, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 128))
aux = AuxiliaryLoss(feature_dim=512)  # rotation prediction on the backbone's output, λ = 0.1
params = [*backbone.parameters(), *projector.parameters(), *predictor.parameters(), *aux.parameters()]
optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)

for step in range(args.steps):
    batch = images[torch.randint(len(images), (args.batch_size,))]
    x0, x1 = torch.stack([augment(x) for x in batch]), torch.stack([augment(x) for x in batch])
    z0, z1 = projector(backbone(x0)), projector(backbone(x1))
    p0, p1 = predictor(z0), predictor(z1)
    ssl = -(F.cosine_similarity(p0, z1.detach()).mean() + F.cosine_similarity(p1, z0.detach()).mean()) / 2
    terms = aux(backbone, [x0, x1])  # {"loss": λ·Σ CE, "loss/rotation", "acc/rotation"}
    loss = ssl + terms["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 20 == 0 or step == args.steps - 1:
        print(f"step {step}: ssl {ssl.item():.3f}, rotation {terms['loss/rotation'].item():.3f}, "
              f"rotation accuracy {terms['acc/rotation'].item():.2f}")
