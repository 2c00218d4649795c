"""AugSelf (Lee et al. 2021) and exact E-SSL (Dangovski et al. 2022) against computations written independently."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auxssl import AuxWrapper
from auxssl.config import ConfigError, load_config
from auxssl.data import get_recipe
from auxssl.data.params import identity_params, stack_views
from auxssl.engine.trainer import train
from auxssl.eval.tracker import read_metrics
from auxssl.tasks import AugSelf
from baselines import BYOL, Batch
from tests.auxssl.engine.test_trainer import tiny

B, D = 6, 8


def batch_with(boxes: torch.Tensor, flips: torch.Tensor, jitter: torch.Tensor) -> Batch:
    params = stack_views([identity_params(B), identity_params(B)])
    params["flip"], params["jitter"] = flips, jitter
    return Batch([torch.rand(B, 3, 8, 8) for _ in range(2)], crop_boxes=boxes, aug_params=params)


def random_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(2, B, 2, generator=g) * 0.5
    boxes = torch.cat([corner, corner + 0.2 + 0.3 * torch.rand(2, B, 2, generator=g)], dim=2)
    flips = torch.rand(2, B, generator=g) < 0.5
    jitter = torch.stack([1 + 0.8 * (torch.rand(2, B, generator=g) - 0.5) for _ in range(3)]
                         + [0.2 * (torch.rand(2, B, generator=g) - 0.5)], dim=2)
    return batch_with(boxes, flips, jitter)


def test_targets_match_the_definitions_written_per_sample() -> None:
    """Crop: centre (y, x) and size (h, w) differences, a flipped view's x centre mirrored; colour: each factor's
    deviation from identity over its range width 2s, view 1 minus view 2; flip: 1 where both alike."""
    batch = random_batch()
    strengths = (0.4, 0.4, 0.2, 0.1)
    recipe = get_recipe("byol", 32)  # BYOL's CIFAR jitter: 0.4, 0.4, 0.2, 0.1
    task = AugSelf(flip=1.0, recipe=recipe)
    targets = task.targets(batch)
    for i in range(B):
        def crop(v: int) -> list[float]:
            x0, y0, x1, y1 = batch.crop_boxes[v, i].tolist()
            cx = (x0 + x1) / 2
            return [(y0 + y1) / 2, 1 - cx if bool(batch.aug_params["flip"][v, i]) else cx, y1 - y0, x1 - x0]

        def colour(v: int) -> list[float]:
            b, c, s, h = batch.aug_params["jitter"][v, i].tolist()
            return [(b - 1) / (2 * strengths[0]), (c - 1) / (2 * strengths[1]), (s - 1) / (2 * strengths[2]),
                    h / (2 * strengths[3])]

        torch.testing.assert_close(targets["crop"][i], torch.tensor(crop(0)) - torch.tensor(crop(1)))
        torch.testing.assert_close(targets["colour"][i], torch.tensor(colour(0)) - torch.tensor(colour(1)))
        same = bool(batch.aug_params["flip"][0, i]) == bool(batch.aug_params["flip"][1, i])
        assert float(targets["flip"][i]) == float(same)


def test_identical_augmentations_have_zero_targets_and_unjittered_views_zero_colour() -> None:
    box = torch.tensor([0.1, 0.2, 0.7, 0.9]).expand(2, B, 4)
    flips = torch.ones(2, B, dtype=torch.bool)
    targets = AugSelf(flip=1.0).targets(batch_with(box, flips, identity_params(B)["jitter"].expand(2, B, 4)))
    assert bool((targets["crop"] == 0).all() & (targets["colour"] == 0).all() & (targets["flip"] == 1).all())


def test_loss_equals_the_papers_symmetric_objective_computed_pair_by_pair() -> None:
    """``Σ_g w_g · mean over both orders, samples and outputs of (tanh h_g([f_a, f_b]) − (ω_a − ω_b))²`` for crop
    and colour, binary cross-entropy for flip; recomputed one ordered pair at a time."""
    torch.manual_seed(0)
    task = AugSelf(crop=1.0, colour=0.5, flip=0.25, hidden_dim=16)
    task.build(D)
    task.eval()  # batch norm on running statistics: a row's output does not depend on its batch
    batch = random_batch(1)
    features = [torch.randn(B, D), torch.randn(B, D)]
    got = task(nn.Identity(), batch, features)
    targets = task.targets(batch)
    expected = 0.0
    for name, weight in (("crop", 1.0), ("colour", 0.5), ("flip", 0.25)):
        terms = []
        for a, b, sign in ((0, 1, 1.0), (1, 0, -1.0)):
            for i in range(B):
                out = task.heads[name](torch.cat([features[a][i], features[b][i]])[None])[0]
                if name == "flip":
                    y = targets["flip"][i]
                    terms.append(-(y * F.logsigmoid(out) + (1 - y) * F.logsigmoid(-out)).mean())
                else:
                    terms.append(((torch.tanh(out) - sign * targets[name][i]) ** 2).mean())
        expected = expected + weight * torch.stack(terms).mean()
    torch.testing.assert_close(got["loss"], expected)
    assert 0 <= float(got["acc_flip"]) <= 1


def small_backbone() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, D, 3, padding=1), nn.BatchNorm2d(D), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten())
    net.feature_dim = D
    return net


def test_through_the_wrapper_it_costs_no_backbone_pass_and_trains_the_backbone() -> None:
    torch.manual_seed(0)
    wrapper = AuxWrapper(BYOL(small_backbone(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16), [AugSelf()])
    calls: list[int] = []
    wrapper.backbone.register_forward_hook(lambda *args: calls.append(1))
    batch = random_batch(2)
    out = wrapper(batch)
    assert len(calls) == 2  # BYOL's two online views; the task reuses their features
    assert {"loss/augself", "loss_crop/augself", "loss_colour/augself"} <= set(out)
    grads = torch.autograd.grad(out["loss/augself"], list(wrapper.backbone.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)
    total = (out["loss/base"] + out["loss/augself"]).detach()
    assert math.isclose(out["loss"].item(), total.item(), rel_tol=1e-6)


def test_missing_parameters_and_a_base_without_features_are_named() -> None:
    task = AugSelf()
    task.build(D)
    with pytest.raises(ValueError, match="Batch.aug_params"):
        task(nn.Identity(), Batch([torch.rand(B, 3, 8, 8)] * 2), [torch.randn(B, D)] * 2)
    no_boxes = random_batch()
    no_boxes.crop_boxes = None
    with pytest.raises(ValueError, match="crop boxes"):
        task(nn.Identity(), no_boxes, [torch.randn(B, D)] * 2)


def test_it_trains_from_a_config_with_the_recipes_jitter(tmp_path: Path) -> None:
    config = load_config(None, tiny(tmp_path, "augself", "tasks=[{name: augself, weight: 1.0}]",
                                    "data.recipe=byol", "train.epochs=1"))
    train(config)
    last = read_metrics(config.run_dir, "train")[-1]
    assert {"loss/augself", "loss_crop/augself", "loss_colour/augself"} <= set(last)
    assert math.isfinite(last["loss/augself"])
    with pytest.raises(ConfigError, match="model.method=none computes none"):
        load_config(None, tiny(tmp_path, "none", "model.method=none", "tasks=[{name: augself}]"))


def test_essl_rotates_the_task_view_as_the_official_rotate_images() -> None:
    """The four blocks are E-SSL's ``rotate_images`` written out: 90° = flip(3).transpose(2, 3), 180° = flip(3)
    .flip(2), 270° = transpose(2, 3).flip(3); labels 0-3 per block."""
    from auxssl.tasks.essl import four_rotations

    x = torch.rand(3, 2, 5, 5)
    rotated, labels = four_rotations(x)
    official = torch.cat([x, x.flip(3).transpose(2, 3), x.flip(3).flip(2), x.transpose(2, 3).flip(3)])
    assert torch.equal(rotated, official)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


def test_essl_is_one_backbone_call_on_the_small_crop_with_a_layer_norm_head() -> None:
    from auxssl.tasks import ESSLRotation

    torch.manual_seed(0)
    task = ESSLRotation(hidden_dim=32)
    task.build(D)
    assert [type(m).__name__ for m in task.head] == ["Linear", "LayerNorm", "ReLU", "Linear", "LayerNorm", "ReLU",
                                                     "Linear"]
    backbone = small_backbone()
    calls: list[tuple[int, ...]] = []
    backbone.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    small = torch.rand(B, 3, 4, 4)
    batch = Batch([torch.rand(B, 3, 8, 8)] * 2, task_views=[small])
    out = task(backbone, batch)
    assert calls == [(4 * B, 3, 4, 4)]  # the four rotations of the separate crop, one call
    from auxssl.tasks.essl import four_rotations

    images, labels = four_rotations(small)
    expected = F.cross_entropy(task.head(backbone(images)), labels)  # the mean over all 4B copies
    torch.testing.assert_close(out["loss"], expected)
    with pytest.raises(ValueError, match="data.recipe=essl"):
        task(backbone, Batch([torch.rand(B, 3, 8, 8)] * 2))


def test_essl_trains_from_a_config_with_its_recipe(tmp_path: Path) -> None:
    """The essl recipe draws the 16 px crop as a task view (the base method still gets exactly two views)."""
    config = load_config(None, tiny(tmp_path, "essl", "tasks=[{name: essl, weight: 0.4}]", "data.recipe=essl",
                                    "data.image_size=16", "train.epochs=1"))
    recipe = get_recipe("essl", 32)
    assert [v.size for v in recipe.views] == [32, 32] and [v.size for v in recipe.task_views] == [16]
    assert recipe.task_views[0].scale == (0.2, 1.0)
    train(config)
    last = read_metrics(config.run_dir, "train")[-1]
    assert {"loss/essl", "acc/essl"} <= set(last) and math.isfinite(last["loss/essl"])
