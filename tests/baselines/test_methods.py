"""Behaviour of the seven base methods: protocol, gradients, EMA, queues, parameter groups, learning."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from baselines import BYOL, METHODS, Batch, MoCoV2, SSLMethod, SwAV, cosine_tau
from baselines.base import encode_views
from baselines.losses import sinkhorn_knopp
from baselines.queue import FeatureQueue

SMALL_HEADS = {
    "byol": dict(proj_hidden_dim=64, proj_dim=32, pred_hidden_dim=64),
    "simclr": dict(proj_hidden_dim=64, proj_dim=32),
    "simsiam": dict(proj_dim=64, pred_hidden_dim=16),
    "moco_v2": dict(proj_hidden_dim=64, proj_dim=32, queue_size=128),
    "swav": dict(proj_hidden_dim=64, proj_dim=32, num_prototypes=20),
    "barlow_twins": dict(proj_hidden_dim=64, proj_dim=64),
    "vicreg": dict(proj_hidden_dim=64, proj_dim=64),
}


JOINT_EMBEDDING = sorted(SMALL_HEADS)  # every method but the null one ("none", tested with the wrapper)


def make(name: str, backbone: nn.Module) -> nn.Module:
    return METHODS[name](backbone, **SMALL_HEADS[name])


@pytest.mark.parametrize("name", JOINT_EMBEDDING)
def test_method_follows_protocol_and_reports_finite_loss(name: str, tiny_backbone, two_views) -> None:
    method = make(name, tiny_backbone)
    assert isinstance(method, SSLMethod)
    assert method.backbone is tiny_backbone
    out = method(Batch(two_views))
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert all(torch.isfinite(v) for v in out.values())


@pytest.mark.parametrize("name", JOINT_EMBEDDING)
def test_param_groups_cover_every_trainable_parameter_once(name: str, tiny_backbone) -> None:
    method = make(name, tiny_backbone)
    grouped = [p for g in method.param_groups() for p in g["params"]]
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    for group in method.param_groups():
        if group.get("lars_exclude"):
            assert group["weight_decay"] == 0.0 and all(p.ndim == 1 for p in group["params"])
        else:
            assert all(p.ndim > 1 for p in group["params"])


@pytest.mark.parametrize("name", JOINT_EMBEDDING)
def test_loss_decreases_on_a_fixed_batch(name: str, tiny_backbone, two_views) -> None:
    torch.manual_seed(0)
    method = make(name, tiny_backbone)
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=3e-3)
    queue_state = copy.deepcopy(method.queues.state_dict()) if isinstance(method, MoCoV2) else None
    losses = []
    for _ in range(12):
        if queue_state is not None:  # keep the negatives fixed: the same batch would otherwise fill the queue
            method.queues.load_state_dict(queue_state)
        loss = method(Batch(two_views))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.momentum_update(0.9)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05 * abs(losses[0]), losses


@pytest.mark.parametrize("cls", [BYOL, MoCoV2])
def test_target_network_gets_no_gradient(cls, tiny_backbone, two_views) -> None:
    method = make(next(k for k, v in METHODS.items() if v is cls), tiny_backbone)
    method(Batch(two_views))["loss"].backward()
    for online, target in method.momentum_pairs():
        assert all(not p.requires_grad and p.grad is None for p in target.parameters())
        assert any(p.grad is not None for p in online.parameters())


def test_ema_update_matches_formula(tiny_backbone) -> None:
    method = make("byol", tiny_backbone)
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(torch.randn_like(p))
    before = [(o.clone(), t.clone())
              for a, b in method.momentum_pairs() for o, t in zip(a.parameters(), b.parameters())]
    method.momentum_update(0.9)
    after = [t for _, b in method.momentum_pairs() for t in b.parameters()]
    for (online, target), updated in zip(before, after):
        torch.testing.assert_close(updated, 0.9 * target + 0.1 * online)


def test_cosine_tau_schedule() -> None:
    assert cosine_tau(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_tau(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_tau(100, 100, 0.99) == pytest.approx(1.0)
    assert cosine_tau(25, 100, 0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    taus = [cosine_tau(k, 100, 0.996) for k in range(101)]
    assert all(a <= b for a, b in zip(taus, taus[1:]))


def test_queue_is_first_in_first_out() -> None:
    queue = FeatureQueue(6, 2, init="zeros")
    first = torch.arange(8.0).view(4, 2)
    queue.push(first, index=torch.tensor([10, 11, 12, 13]))
    assert not queue.full and int(queue.ptr) == 4
    second = -torch.arange(1.0, 9.0).view(4, 2)
    queue.push(second, index=torch.tensor([20, 21, 22, 23]))
    # rows 4, 5 take the first two new keys, then the oldest rows 0, 1 are overwritten
    torch.testing.assert_close(queue.items, torch.cat([second[2:], first[2:], second[:2]]))
    assert queue.index.tolist() == [22, 23, 12, 13, 20, 21]
    assert queue.full and int(queue.ptr) == 2


def test_moco_enqueues_normalised_keys_of_each_view_in_its_own_queue(tiny_backbone, two_views) -> None:
    method = make("moco_v2", tiny_backbone)
    method(Batch(two_views, index=torch.arange(16)))
    # the target encoder sees each view in its own call (per-view BN statistics): recompute the same way
    with torch.no_grad():
        keys = [nn.functional.normalize(method.target_projector(method.target_backbone(v)), dim=1) for v in two_views]
    torch.testing.assert_close(method.queues[0].items[:16], keys[0])
    torch.testing.assert_close(method.queues[1].items[:16], keys[1])
    assert all(q.index[:16].tolist() == list(range(16)) for q in method.queues)
    method.eval()
    ptr = int(method.queues[0].ptr)
    method(Batch(two_views))
    assert int(method.queues[0].ptr) == ptr  # evaluation never enqueues


def test_moco_v2_is_solo_learn_mocov2plus(tiny_backbone, two_views) -> None:
    """Projector Linear-ReLU-Linear 2048→256, τ 0.99 → 0.999, and the loss of q1 against k2 and view 2's queue
    (plus the mirror term), averaged: written out with einsum as in solo-learn's ``mocov2plus_loss_func``."""
    method = MoCoV2(tiny_backbone, queue_size=64)
    assert [type(m) for m in method.projector] == [nn.Linear, nn.ReLU, nn.Linear]
    assert method.projector[0].out_features == 2048 and method.projector[2].out_features == 256
    assert (method.base_tau, method.final_tau) == (0.99, 0.999)
    queues = [q.items.clone() for q in method.queues]
    out = method(Batch(two_views))
    with torch.no_grad():  # each view in its own call, as solo-learn does
        z = torch.cat([nn.functional.normalize(method.projector(method.backbone(v)), dim=1) for v in two_views])
        k = torch.cat([nn.functional.normalize(method.target_projector(method.target_backbone(v)), dim=1)
                       for v in two_views])

    def info_nce(query, key, queue):
        logits = torch.cat([torch.einsum("nc,nc->n", query, key)[:, None], torch.einsum("nc,kc->nk", query, queue)], 1)
        return nn.functional.cross_entropy(logits / 0.2, torch.zeros(len(query), dtype=torch.long))

    expected = (info_nce(z[:16], k[16:], queues[1]) + info_nce(z[16:], k[:16], queues[0])) / 2
    torch.testing.assert_close(out["loss"].detach(), expected, rtol=1e-5, atol=1e-6)


def test_swav_multicrop_batches_views_by_resolution(tiny_backbone) -> None:
    method = make("swav", tiny_backbone)
    views = [torch.rand(8, 3, 16, 16) for _ in range(2)] + [torch.rand(8, 3, 8, 8) for _ in range(3)]
    calls: list[tuple[int, ...]] = []
    tiny_backbone.register_forward_pre_hook(lambda m, args: calls.append(tuple(args[0].shape)))
    out = method(Batch(views, num_global=2))
    assert calls == [(16, 3, 16, 16), (24, 3, 8, 8)]
    assert torch.isfinite(out["loss"])


def test_swav_queue_is_used_from_epoch_queue_starts_once_full(tiny_backbone) -> None:
    method = SwAV(tiny_backbone, proj_hidden_dim=64, proj_dim=32, num_prototypes=10, queue_length=32,
                  epoch_queue_starts=2)
    assert SwAV(tiny_backbone, queue_length=32).epoch_queue_starts == 15  # the official SwAV default
    scores = torch.randn(16, 10)
    assert not method.queues[0].full
    torch.testing.assert_close(method.codes(scores, 0).sum(dim=1), torch.ones(16))
    without_queue = method.codes(scores, 0)
    for _ in range(2):  # filled from the first step
        method(Batch([torch.rand(16, 3, 16, 16), torch.rand(16, 3, 16, 16)]))
    assert method.queues[0].full
    for epoch in (0, 1):
        method.on_train_epoch_start(epoch)
        assert not method.queue_in_use(0)
        torch.testing.assert_close(method.codes(scores, 0), without_queue)
    method.on_train_epoch_start(2)
    with_queue = sinkhorn_knopp(torch.cat([scores, method.prototypes(method.queues[0].items)]))[:16]
    torch.testing.assert_close(method.codes(scores, 0), with_queue)
    assert not torch.allclose(with_queue, without_queue)


def test_swav_prototypes_frozen_during_first_steps(tiny_backbone, two_views) -> None:
    method = SwAV(tiny_backbone, proj_hidden_dim=64, proj_dim=32, num_prototypes=10, freeze_prototypes_steps=5)
    method(Batch(two_views))["loss"].backward()
    method.on_before_optimizer_step(4)
    assert method.prototypes.weight.grad is None
    method(Batch(two_views))["loss"].backward()
    method.on_before_optimizer_step(5)
    assert method.prototypes.weight.grad is not None
    by_epoch = SwAV(tiny_backbone, proj_hidden_dim=64, proj_dim=32, num_prototypes=10, freeze_prototypes_epochs=2)
    for epoch, frozen in ((1, True), (2, False)):
        by_epoch.on_train_epoch_start(epoch)
        by_epoch(Batch(two_views))["loss"].backward()
        by_epoch.on_before_optimizer_step(1000)
        assert (by_epoch.prototypes.weight.grad is None) == frozen


def test_two_view_methods_reject_other_view_counts(tiny_backbone) -> None:
    method = make("byol", tiny_backbone)
    with pytest.raises(ValueError, match="exactly 2 views"):
        method([torch.rand(4, 3, 16, 16)] * 3)


def test_encode_views_equals_separate_calls_in_eval_mode(tiny_backbone) -> None:
    tiny_backbone.eval()
    views = [torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16), torch.rand(4, 3, 8, 8)]
    for together in (False, True):
        for got, view in zip(encode_views(tiny_backbone, views, together=together), views):
            torch.testing.assert_close(got, tiny_backbone(view))


def test_views_get_their_own_batch_norm_statistics_in_training_as_in_solo_learn(tiny_backbone) -> None:
    """In training mode each view is normalised with its own batch statistics (BYOL's official code, solo-learn);
    ``together=True`` (SwAV) normalises same-resolution views jointly."""
    tiny_backbone.train()
    g = torch.Generator().manual_seed(0)
    views = [torch.rand(4, 3, 16, 16, generator=g), 3 * torch.rand(4, 3, 16, 16, generator=g)]
    separate = encode_views(tiny_backbone, views)
    for got, view in zip(separate, views):
        torch.testing.assert_close(got, tiny_backbone(view))
    joint = encode_views(tiny_backbone, views, together=True)
    torch.testing.assert_close(torch.cat(joint), tiny_backbone(torch.cat(views)))
    assert not torch.allclose(joint[0], separate[0])


def test_vicreg_trains_on_the_vicreg_loss_the_readme_names() -> None:
    """VICReg.forward weights its three terms exactly as `vicreg_loss` (25, 25, 1) does on its embeddings."""
    from baselines import VICReg
    from baselines.losses import vicreg_loss

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    backbone.feature_dim = 4
    model = VICReg(backbone, proj_hidden_dim=16, proj_dim=8)
    views = [torch.rand(6, 3, 8, 8), torch.rand(6, 3, 8, 8)]
    z1, z2 = (model.projector(backbone(v)) for v in views)
    torch.testing.assert_close(model(views)["loss"], vicreg_loss(z1, z2, 25.0, 25.0, 1.0))
