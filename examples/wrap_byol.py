"""The README's code example: BYOL + rotation prediction on a CIFAR ResNet-18, a few optimiser steps."""

import torch

from auxssl import AuxWrapper, RotationPrediction
from baselines import BYOL, build_backbone, cosine_tau

model = AuxWrapper(BYOL(build_backbone("resnet18", cifar_stem=True)), tasks=[RotationPrediction(weight=0.1)])
optimizer = torch.optim.SGD(model.param_groups(), lr=0.05, momentum=0.9, weight_decay=5e-4)
views = [torch.rand(32, 3, 32, 32), torch.rand(32, 3, 32, 32)]  # two augmented views of 32 images
for step in range(3):
    out = model(views)  # {"loss", "loss/base", "loss/rotation", "acc/rotation", ...}
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    model.momentum_update(cosine_tau(step, total_steps=3, base_tau=model.base_tau))
    print({k: round(v.item(), 3) for k, v in out.items()})
