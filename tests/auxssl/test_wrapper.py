"""AuxWrapper: exact loss composition, untouched base term, target isolation, third-party methods."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auxssl import AuxWrapper, JigsawPrediction, RotationPrediction
from auxssl.tasks import rotate
from baselines import BYOL, Batch, MoCoV2, SimCLR, SSLMethod, split_weight_decay


def byol(backbone: nn.Module) -> BYOL:
    return BYOL(backbone, proj_hidden_dim=64, proj_dim=32, pred_hidden_dim=64)


def test_total_is_base_plus_weighted_tasks_exactly(tiny_backbone, two_views) -> None:
    model = AuxWrapper(byol(tiny_backbone), tasks=[RotationPrediction(weight=0.1), JigsawPrediction(weight=0.05)])
    out = model(Batch(two_views))
    expected = out["loss/base"] + 0.1 * out["loss/rotation"] + 0.05 * out["loss/jigsaw"]
    assert torch.equal(out["loss"], expected)
    assert {"loss", "loss/base", "loss/rotation", "acc/rotation", "loss/jigsaw", "acc/jigsaw"} <= set(out)
    assert 0.0 <= out["acc/rotation"].item() <= 1.0


def test_base_term_is_unchanged_by_the_wrapper(tiny_backbone, two_views) -> None:
    base = byol(tiny_backbone)
    reference = copy.deepcopy(base)
    out = AuxWrapper(base)(Batch(two_views))
    assert torch.equal(out["loss/base"], reference(Batch(two_views))["loss"])


@pytest.mark.parametrize("method_cls", [BYOL, MoCoV2])
def test_target_encoder_never_sees_rotated_images(method_cls, tiny_backbone, two_views) -> None:
    kwargs = dict(proj_hidden_dim=64, proj_dim=32)
    base = method_cls(tiny_backbone, **kwargs)
    model = AuxWrapper(base, tasks=[RotationPrediction(generator=torch.Generator().manual_seed(0))])
    target_inputs: list[Tensor] = []
    online_inputs: list[Tensor] = []
    base.target_backbone.register_forward_pre_hook(lambda m, args: target_inputs.append(args[0].clone()))
    base.backbone.register_forward_pre_hook(lambda m, args: online_inputs.append(args[0].clone()))
    model(Batch(two_views))
    # the target sees exactly the two unrotated views (one call per view)
    assert len(target_inputs) == 2 and all(torch.equal(t, v) for t, v in zip(target_inputs, two_views))
    # the online backbone: one call per view for the base loss, then one per view's rotated copies (official code)
    assert len(online_inputs) == 4 and all(torch.equal(o, v) for o, v in zip(online_inputs, two_views))
    generator = torch.Generator().manual_seed(0)
    for view, seen in zip(two_views, online_inputs[2:]):
        labels = torch.randint(4, (len(view),), generator=generator)
        torch.testing.assert_close(seen, rotate(view, labels))
        assert (labels != 0).any()


def official_rotation_loss(backbone: nn.Module, head: nn.Module, views: list[Tensor], seed: int) -> Tensor:
    """EffSSL's ``CE(rot_pred1, t1) + CE(rot_pred2, t2)`` written out: per-view backbone calls, per-sample loops."""
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(())
    for view in views:
        k = torch.randint(4, (len(view),), generator=generator)
        rotated = torch.stack([torch.rot90(img, int(t), dims=(1, 2)) for img, t in zip(view, k)])
        log_probs = torch.log_softmax(head(backbone(rotated)).double(), dim=1)
        total = total + sum(-log_probs[i, int(k[i])] for i in range(len(view))) / len(view)
    return total


@pytest.mark.parametrize("method_cls", [BYOL, SimCLR])
def test_default_wrapper_total_is_the_official_effssl_loss(method_cls, tiny_backbone, two_views) -> None:
    base = method_cls(tiny_backbone, proj_hidden_dim=64, proj_dim=32)
    model = AuxWrapper(base, tasks=[RotationPrediction(generator=torch.Generator().manual_seed(5))])
    reference = copy.deepcopy(model)
    out = model(Batch(two_views))
    base_loss = reference.base(Batch(two_views))["loss"]
    rot = official_rotation_loss(reference.backbone, reference.tasks[0].head, two_views, seed=5)
    torch.testing.assert_close(out["loss/rotation"].double(), rot, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"].double(), base_loss.double() + 0.1 * rot, rtol=1e-5, atol=1e-6)
    assert model.weights == {"rotation": 0.1}


def test_batched_views_option_is_one_call_with_the_same_loss_definition(tiny_backbone, two_views) -> None:
    task = RotationPrediction(generator=torch.Generator().manual_seed(2), batch_views=True)
    model = AuxWrapper(byol(tiny_backbone), tasks=[task])
    calls: list[int] = []
    model.backbone.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
    with torch.no_grad():
        out = model(Batch(two_views))
        generator = torch.Generator().manual_seed(2)
        labels = [torch.randint(4, (16,), generator=generator) for _ in two_views]
        logits = task.head(model.backbone(torch.cat([rotate(v, k) for v, k in zip(two_views, labels)])))
    assert calls[:3] == [16, 16, 32]  # base calls (one per view), then all rotated copies of both views together
    expected = F.cross_entropy(logits[:16], labels[0]) + F.cross_entropy(logits[16:], labels[1])
    torch.testing.assert_close(out["loss/rotation"], expected)


def test_wrapper_keeps_protocol_groups_and_pairs(tiny_backbone) -> None:
    base = byol(tiny_backbone)
    model = AuxWrapper(base)
    assert isinstance(model, SSLMethod) and model.backbone is base.backbone
    assert model.base_tau == base.base_tau
    assert model.momentum_pairs() == base.momentum_pairs()
    grouped = {id(p) for g in model.param_groups() for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert grouped == trainable
    head_params = {id(p) for p in model.tasks[0].parameters()}
    assert head_params <= grouped and not head_params & {id(p) for g in base.param_groups() for p in g["params"]}


def test_rotation_head_is_the_official_mlp(tiny_backbone) -> None:
    model = AuxWrapper(byol(tiny_backbone))
    layers = list(model.tasks[0].head)
    assert [type(m) for m in layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert layers[0].in_features == 32 and layers[-1].out_features == 4
    assert model.weights == {"rotation": 0.1}


def test_weights_override_and_validation(tiny_backbone) -> None:
    tasks = [RotationPrediction(), JigsawPrediction()]
    assert AuxWrapper(byol(tiny_backbone), tasks, weights=0.5).weights == {"rotation": 0.5, "jigsaw": 0.5}
    tasks = [RotationPrediction(), JigsawPrediction()]
    assert AuxWrapper(byol(tiny_backbone), tasks, weights={"jigsaw": 1.0}).weights == {"rotation": 0.1, "jigsaw": 1.0}
    with pytest.raises(ValueError, match="unknown tasks"):
        AuxWrapper(byol(tiny_backbone), [RotationPrediction()], weights={"rotaton": 1.0})
    with pytest.raises(ValueError, match="unique"):
        AuxWrapper(byol(tiny_backbone), [RotationPrediction(), RotationPrediction()])
    with pytest.raises(TypeError, match="missing"):
        AuxWrapper(nn.Linear(2, 2))


class CosineAlignment(nn.Module):
    """A method written outside the package: it follows the protocol without subclassing anything."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(32, 8)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        z1, z2 = (self.head(self.backbone(v)) for v in batch.views[:2])
        return {"loss": 1 - F.cosine_similarity(z1, z2).mean()}

    def param_groups(self) -> list[dict[str, Any]]:
        return split_weight_decay(self.named_parameters())

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return []


def test_wraps_a_third_party_method_and_trains(tiny_backbone, two_views) -> None:
    torch.manual_seed(0)
    model = AuxWrapper(CosineAlignment(tiny_backbone), weights=1.0)
    optimizer = torch.optim.Adam([p for g in model.param_groups() for p in g["params"]], lr=1e-2)
    losses = []
    for _ in range(15):
        out = model([two_views[0], two_views[1]])
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss/rotation"].item())
    assert model.tasks[0].head[0].weight.grad is not None
    assert losses[-1] < losses[0] - 0.1, losses


def test_wrapped_simclr_learns_rotation(tiny_backbone, two_views) -> None:
    torch.manual_seed(0)
    model = AuxWrapper(SimCLR(tiny_backbone, proj_hidden_dim=64, proj_dim=32), weights=1.0)
    optimizer = torch.optim.Adam([p for g in model.param_groups() for p in g["params"]], lr=3e-3)
    first = last = None
    for _ in range(25):
        out = model(Batch(two_views))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        first = first if first is not None else (out["loss/base"].item(), out["loss/rotation"].item())
        last = (out["loss/base"].item(), out["loss/rotation"].item())
    assert last[0] < first[0] and last[1] < first[1], (first, last)


def test_rotation_alone_through_the_null_base_method(tiny_backbone, two_views) -> None:
    """The paper's table-4 control: no base loss, the backbone only sees the rotated copies."""
    from baselines import METHODS, NoBaseLoss

    assert METHODS["none"] is NoBaseLoss
    model = AuxWrapper(NoBaseLoss(tiny_backbone), [RotationPrediction(weight=1.0)])
    calls: list[int] = []
    model.backbone.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
    out = model(Batch(two_views))
    assert calls == [16, 16] and out["loss/base"].item() == 0.0
    assert torch.equal(out["loss"], out["loss/rotation"])
    out["loss"].backward()
    assert tiny_backbone.net[0].weight.grad is not None
