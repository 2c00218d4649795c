"""AuxiliaryLoss, the tasks as one loss term for a user's own loop: the same loss and gradients as AuxWrapper,
lazy heads from lightly-style 4-D features, the optimiser pitfall refused, checkpoints that round-trip."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from auxssl import AuxiliaryLoss, AuxWrapper, JigsawPrediction, RotationPrediction
from baselines import BYOL


def small_backbone() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten())
    net.feature_dim = 8
    return net


def views(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(6, 3, 16, 16, generator=g) for _ in range(2)]


def test_in_a_users_loop_it_gives_the_wrappers_loss_and_gradients() -> None:
    """The same base method, initial weights, batch and rotation draws: ``base(views)["loss"] + aux(backbone,
    views)["loss"]`` in a hand-written step equals AuxWrapper's loss, and every parameter gets the same gradient."""
    torch.manual_seed(0)
    base = BYOL(small_backbone(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16)
    tasks = [RotationPrediction(weight=0.1), JigsawPrediction(weight=0.05)]
    wrapper = AuxWrapper(copy.deepcopy(base), copy.deepcopy(tasks))
    user_base, aux = copy.deepcopy(base), AuxiliaryLoss(copy.deepcopy(tasks), feature_dim=8)
    aux.load_state_dict(wrapper.tasks.state_dict())  # the same initial heads

    torch.manual_seed(1)
    expected = wrapper(views())
    expected["loss"].backward()
    torch.manual_seed(1)
    ssl_loss = user_base(views())["loss"]  # the user's own loop: their loss, plus the auxiliary term
    terms = aux(user_base.backbone, views())
    loss = ssl_loss + terms["loss"]
    loss.backward()

    assert torch.equal(loss, expected["loss"])
    assert {k: v for k, v in terms.items() if k != "loss"} == {k: expected[k] for k in terms if k != "loss"}
    assert torch.equal(terms["loss"], 0.1 * terms["loss/rotation"] + 0.05 * terms["loss/jigsaw"])  # λ applied
    mine = dict(user_base.named_parameters()) | {f"tasks.{k}": v for k, v in aux.named_parameters()}
    theirs = {k.removeprefix("base."): v for k, v in wrapper.named_parameters()}
    assert mine.keys() == theirs.keys()
    for name, parameter in mine.items():
        if theirs[name].grad is None:
            assert parameter.grad is None, name
        else:
            assert torch.equal(parameter.grad, theirs[name].grad), name


def lightly_style_resnet() -> nn.Module:
    """lightly's examples' backbone: a torchvision ResNet-18 without its classifier, returning (B, 512, 1, 1)."""
    resnet = torchvision.models.resnet18()
    return nn.Sequential(*list(resnet.children())[:-1])


def test_heads_are_built_lazily_from_lightly_style_4d_features() -> None:
    backbone = lightly_style_resnet()
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, 512, 1, 1)
    aux = AuxiliaryLoss()  # rotation, λ = 0.1
    running_mean = backbone[1].running_mean.clone()
    out = aux(backbone, views())
    assert aux.feature_dim == 512 and aux[0].head[0].in_features == 512
    assert torch.equal(out["loss"], 0.1 * out["loss/rotation"]) and out["loss"].requires_grad
    assert set(out) == {"loss", "loss/rotation", "acc/rotation"}
    # sizing the heads ran one image in eval mode; the training forward then updated the statistics once
    assert not torch.equal(backbone[1].running_mean, running_mean) and backbone.training


def test_an_optimiser_built_before_the_lazy_heads_exist_is_refused() -> None:
    aux = AuxiliaryLoss()
    torch.optim.SGD([*small_backbone().parameters(), *aux.parameters()], lr=0.1)  # holds no head parameter
    with pytest.raises(RuntimeError, match="parameters were read before its heads existed"):
        aux(small_backbone(), views())
    aux = AuxiliaryLoss(feature_dim=8)  # the fix it names
    optimizer = torch.optim.SGD(aux.param_groups(), lr=0.1)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == \
        sum(p.numel() for p in aux.parameters()) > 0
    aux(small_backbone(), views())


def test_feature_maps_with_a_spatial_extent_are_refused() -> None:
    trunk = nn.Conv2d(3, 4, 3)  # returns (B, 4, 14, 14): flattening would feed the heads 784 pixels
    with pytest.raises(ValueError, match=r"shape \(1, 4, 14, 14\).*end the backbone with global pooling"):
        AuxiliaryLoss()(trunk, views())


def test_a_checkpoint_loads_into_an_unbuilt_loss() -> None:
    torch.manual_seed(0)
    aux = AuxiliaryLoss(feature_dim=8)
    restored = AuxiliaryLoss()
    restored.load_state_dict(aux.state_dict())
    assert restored.feature_dim == 8
    backbone = small_backbone()
    torch.manual_seed(3)
    expected = aux(backbone, views())["loss"]
    torch.manual_seed(3)
    assert torch.equal(restored(backbone, views())["loss"], expected)


def test_the_wrappers_checkpoints_keep_their_keys() -> None:
    """AuxWrapper holds an AuxiliaryLoss as ``tasks``: its heads stay at ``tasks.<i>.head.…``, so checkpoints
    written before it was built on AuxiliaryLoss load unchanged."""
    model = AuxWrapper(BYOL(small_backbone(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16))
    keys = [k for k in model.state_dict() if not k.startswith("base.")]
    assert keys and all(k.startswith("tasks.0.head.") for k in keys)


@pytest.mark.parametrize("name", ["byol", "simclr", "simsiam", "moco_v2", "swav", "barlow_twins", "vicreg"])
def test_every_method_hands_its_online_features_of_each_view_in_view_order(name: str) -> None:
    """The channel's contract (`OnlineFeatures`): what the wrapper records around the base call is one
    ``(B, D)`` tensor per view, in view order, equal to the online backbone's features of that view (in eval
    mode, so that batch statistics do not depend on how the method groups its calls)."""
    from baselines import METHODS
    from tests.baselines.test_methods import SMALL_HEADS

    torch.manual_seed(0)
    wrapper = AuxWrapper(METHODS[name](small_backbone(), **SMALL_HEADS[name]), []).eval()
    batch = views(1)
    wrapper(batch)
    with torch.no_grad():
        expected = [wrapper.backbone(v) for v in batch]
    assert len(wrapper.online_features) == len(batch)
    for got, want in zip(wrapper.online_features, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert not got.requires_grad  # the probe's copy is detached


class FeatureTask(nn.Module):
    """A task predicting from the base method's features: the mean squared feature, times λ."""

    name, weight, uses_features = "feature_norm", 1.0, True

    def build(self, feature_dim: int) -> None:
        self.feature_dim = feature_dim

    def forward(self, backbone: nn.Module, batch, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        self.received = features
        return {"loss": torch.stack([f.pow(2).mean() for f in features]).sum()}


def test_a_task_that_uses_features_gets_the_base_methods_with_their_gradient_and_no_backbone_pass() -> None:
    torch.manual_seed(0)
    task = FeatureTask()
    wrapper = AuxWrapper(BYOL(small_backbone(), proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32), [task])
    calls = []
    wrapper.backbone.register_forward_hook(lambda *args: calls.append(1))
    out = wrapper(views(2))
    assert len(calls) == 2  # the base method's two views only: the task added no backbone pass
    assert [f.shape for f in task.received] == [(6, wrapper.tasks.feature_dim)] * 2
    for live, kept in zip(task.received, wrapper.online_features):
        assert live.requires_grad and torch.equal(live.detach(), kept)
    grad = torch.autograd.grad(out["loss/feature_norm"], wrapper.backbone.parameters(), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grad)


def test_a_task_that_uses_features_is_refused_without_them() -> None:
    from baselines import NoBaseLoss

    with pytest.raises(ValueError, match="feature_norm predicts from the SSL method's online features"):
        AuxiliaryLoss([FeatureTask()], feature_dim=8)(small_backbone(), views())
    with pytest.raises(ValueError, match="model.method=none computes none"):
        AuxWrapper(NoBaseLoss(small_backbone()), [FeatureTask()])(views())
