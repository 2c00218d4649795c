"""Every loss of `baselines.losses` against an independent computation (float64 loops, analytic values)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

import baselines.losses as L
from baselines.losses import (
    barlow_twins_loss,
    byol_loss,
    moco_loss,
    nt_xent_loss,
    simsiam_loss,
    sinkhorn_knopp,
    swav_loss,
    vicreg_loss,
    vicreg_terms,
)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------- NT-Xent
def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, t: float, weight: np.ndarray | None = None) -> float:
    """Explicit loop over the 2N anchors; sample of view index a is a % N, its positive (a + N) % 2N."""
    z = [unit(v) for v in torch.cat([z1, z2]).double().numpy()]
    n2, n = len(z), len(z) // 2
    total = 0.0
    for a in range(n2):
        pos = (a + n) % n2
        denominator = 0.0
        for k in range(n2):
            if k == a:
                continue
            w = 1.0 if k == pos or weight is None else weight[a % n, k % n]
            denominator += w * math.exp(z[a] @ z[k] / t)
        total -= z[a] @ z[pos] / t - math.log(denominator)
    return total / n2


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_loop(temperature: float) -> None:
    z1, z2 = randn(5, 7, seed=1), randn(5, 7, seed=2)
    got = nt_xent_loss(z1, z2, temperature).item()
    assert got == pytest.approx(nt_xent_reference(z1, z2, temperature), rel=1e-5)


def test_nt_xent_negative_weight_matches_loop() -> None:
    z1, z2 = randn(6, 4, seed=3), randn(6, 4, seed=4)
    weight = (torch.rand(6, 6, generator=torch.Generator().manual_seed(5)) > 0.4).float()
    got = nt_xent_loss(z1, z2, 0.3, negative_weight=weight).item()
    assert got == pytest.approx(nt_xent_reference(z1, z2, 0.3, weight.numpy()), rel=1e-5)


def test_nt_xent_analytic_values() -> None:
    n, t = 4, 0.5
    same = torch.ones(n, 3)
    assert nt_xent_loss(same, same, t).item() == pytest.approx(math.log(2 * n - 1), rel=1e-6)
    eye = torch.eye(n)  # z1_i = z2_i = e_i: positive similarity 1, every negative 0
    expected = -1 / t + math.log(math.exp(1 / t) + 2 * n - 2)
    assert nt_xent_loss(eye, eye, t).item() == pytest.approx(expected, rel=1e-6)
    # removing every negative leaves only the positive in the denominator
    assert nt_xent_loss(eye, eye, t, negative_weight=torch.zeros(n, n)).item() == pytest.approx(0.0, abs=1e-6)


def test_nt_xent_is_scale_invariant() -> None:
    z1, z2 = randn(5, 7, seed=6), randn(5, 7, seed=7)
    assert nt_xent_loss(3 * z1, 0.2 * z2).item() == pytest.approx(nt_xent_loss(z1, z2).item(), rel=1e-5)


# ------------------------------------------------------------------------------------ BYOL and SimSiam
def test_byol_loss_analytic_and_stopgrad() -> None:
    z = randn(8, 5, seed=8)
    assert byol_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(-z, z).item() == pytest.approx(4.0, abs=1e-6)
    assert byol_loss(torch.eye(2), torch.eye(2).flip(0)).item() == pytest.approx(2.0, abs=1e-6)
    p = randn(8, 5, seed=9).requires_grad_()
    target = z.clone().requires_grad_()
    byol_loss(p, target).backward()
    assert target.grad is None and p.grad is not None


def test_byol_loss_matches_formula_and_weights() -> None:
    p, z = randn(6, 4, seed=10), randn(6, 4, seed=11)
    per_pair = [2 - 2 * unit(a) @ unit(b) for a, b in zip(p.double().numpy(), z.double().numpy())]
    assert byol_loss(p, z).item() == pytest.approx(np.mean(per_pair), rel=1e-5)
    assert byol_loss(5 * p, 0.1 * z).item() == pytest.approx(np.mean(per_pair), rel=1e-5)
    w = np.array([1, 0, 2, 0, 1, 1], dtype=float)
    got = byol_loss(p, z, weight=torch.tensor(w)).item()
    assert got == pytest.approx((w * per_pair).sum() / w.sum(), rel=1e-5)


def test_simsiam_loss_analytic_and_stopgrad() -> None:
    z = randn(8, 5, seed=12)
    assert simsiam_loss(z, z).item() == pytest.approx(-1.0, abs=1e-6)
    assert simsiam_loss(-z, z).item() == pytest.approx(1.0, abs=1e-6)
    p, target = randn(8, 5, seed=13).requires_grad_(), z.clone().requires_grad_()
    simsiam_loss(p, target).backward()
    assert target.grad is None and p.grad is not None


# -------------------------------------------------------------------------------------- Barlow Twins
def barlow_reference(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> float:
    a, b = z1.double().numpy(), z2.double().numpy()
    n, d = a.shape
    a = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)
    b = (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-5)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[k, i] * b[k, j] for k in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij**2
    return loss


def test_barlow_twins_matches_loop() -> None:
    z1, z2 = randn(10, 6, seed=14), randn(10, 6, seed=15)
    assert barlow_twins_loss(z1, z2, 5e-3).item() == pytest.approx(barlow_reference(z1, z2, 5e-3), rel=1e-5)


def test_barlow_twins_analytic_and_invariance() -> None:
    # standardised, decorrelated dimensions: C = I for identical views and -I for opposite ones
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins_loss(z, z).item() == pytest.approx(0.0, abs=1e-4)
    assert barlow_twins_loss(z, -z).item() == pytest.approx(8.0, rel=1e-4)
    z1, z2 = randn(10, 6, seed=16), randn(10, 6, seed=17)
    scale, shift = torch.rand(6) + 0.5, randn(6, seed=18)
    assert barlow_twins_loss(z1 * scale + shift, z2).item() == pytest.approx(barlow_twins_loss(z1, z2).item(), rel=1e-4)


# -------------------------------------------------------------------------------------------- VICReg
def vicreg_reference(z1: torch.Tensor, z2: torch.Tensor) -> tuple[float, float, float]:
    a, b = z1.double().numpy(), z2.double().numpy()
    n, d = a.shape
    invariance = float(((a - b) ** 2).mean())

    def variance(x: np.ndarray) -> float:
        return float(np.mean([max(0.0, 1 - math.sqrt(np.var(x[:, j], ddof=1) + 1e-4)) for j in range(d)]))

    def covariance(x: np.ndarray) -> float:
        cov = np.cov(x, rowvar=False)  # unbiased
        return float(sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d)

    return invariance, (variance(a) + variance(b)) / 2, covariance(a) + covariance(b)


def test_vicreg_matches_reference() -> None:
    z1, z2 = 0.5 * randn(12, 5, seed=19), 0.5 * randn(12, 5, seed=20) + 0.3
    ref = vicreg_reference(z1, z2)
    for got, want in zip(vicreg_terms(z1, z2), ref):
        assert got.item() == pytest.approx(want, rel=1e-5)
    total = 25 * ref[0] + 25 * ref[1] + 1 * ref[2]
    assert vicreg_loss(z1, z2).item() == pytest.approx(total, rel=1e-5)


def test_vicreg_analytic_values() -> None:
    constant = torch.zeros(8, 4)
    inv, var, cov = vicreg_terms(constant, constant)
    assert inv.item() == 0.0 and cov.item() == 0.0
    assert var.item() == pytest.approx(1 - math.sqrt(1e-4), rel=1e-6)  # collapsed: every std is 0
    spread = 10 * torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    inv, var, cov = vicreg_terms(spread, spread)
    assert (inv.item(), var.item()) == (0.0, 0.0) and cov.item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------------------- Sinkhorn, SwAV
def sinkhorn_reference(scores: np.ndarray, epsilon: float, iterations: int) -> np.ndarray:
    """Scaling-vector form: Q = diag(u) P diag(v) with marginals 1/K (prototypes) and 1/B (samples)."""
    p = np.exp(scores.T / epsilon)
    p /= p.sum()
    k, b = p.shape
    v = np.ones(b)
    for _ in range(iterations):
        u = (1 / k) / (p @ v)
        v = (1 / b) / (p.T @ u)
    return (u[:, None] * p * v[None, :]).T * b


def test_sinkhorn_matches_scaling_form_and_marginals() -> None:
    scores = torch.nn.functional.normalize(randn(32, 8, seed=21), dim=1)
    q = sinkhorn_knopp(scores, 0.05, 3)
    np.testing.assert_allclose(q.double().numpy(), sinkhorn_reference(scores.double().numpy(), 0.05, 3), rtol=1e-4)
    np.testing.assert_allclose(q.sum(dim=1).numpy(), np.ones(32), rtol=1e-5)
    converged = sinkhorn_knopp(scores, 0.05, 200)
    np.testing.assert_allclose(converged.sum(dim=0).numpy(), np.full(8, 32 / 8), rtol=1e-3)


def test_sinkhorn_is_shift_invariant_and_gradient_free() -> None:
    scores = randn(16, 5, seed=22).requires_grad_()
    q = sinkhorn_knopp(scores, 0.05, 3)
    assert not q.requires_grad
    torch.testing.assert_close(sinkhorn_knopp(scores + 3.0, 0.05, 3), q)


def swav_reference(scores: list[torch.Tensor], codes: list[torch.Tensor], t: float) -> float:
    terms = []
    for a, q in enumerate(codes):
        for v, s in enumerate(scores):
            if v == a:
                continue
            s_np, q_np = s.double().numpy() / t, q.double().numpy()
            ce = 0.0
            for i in range(s_np.shape[0]):
                log_p = s_np[i] - math.log(sum(math.exp(x) for x in s_np[i]))
                ce -= sum(q_np[i, k] * log_p[k] for k in range(s_np.shape[1]))
            terms.append(ce / s_np.shape[0])
    return float(np.mean(terms))


def test_swav_loss_matches_loop_with_multicrop() -> None:
    scores = [randn(6, 5, seed=s) for s in (23, 24, 25, 26)]  # 2 global + 2 local crops
    codes = [torch.softmax(randn(6, 5, seed=s), dim=1) for s in (27, 28)]
    assert swav_loss(scores, codes, 0.1).item() == pytest.approx(swav_reference(scores, codes, 0.1), rel=1e-5)


def test_swav_loss_two_views_is_the_swapped_average() -> None:
    s0, s1 = randn(4, 3, seed=29), randn(4, 3, seed=30)
    q0, q1 = torch.softmax(randn(4, 3, seed=31), 1), torch.softmax(randn(4, 3, seed=32), 1)

    def ce(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return -(q * torch.log_softmax(s / 0.1, 1)).sum(1).mean()

    expected = (ce(q0, s1) + ce(q1, s0)) / 2
    assert swav_loss([s0, s1], [q0, q1], 0.1).item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------- MoCo
def moco_reference(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float, w: np.ndarray | None) -> float:
    qs, ks, qu = (np.array([unit(r) for r in x.double().numpy()]) for x in (q, k, queue))
    total = 0.0
    for i in range(len(qs)):
        pos = math.exp(qs[i] @ ks[i] / t)
        neg = sum((1.0 if w is None else w[i, j]) * math.exp(qs[i] @ qu[j] / t) for j in range(len(qu)))
        total -= math.log(pos / (pos + neg))
    return total / len(qs)


def test_moco_loss_matches_loop_with_and_without_weights() -> None:
    q, k, queue = randn(5, 4, seed=33), randn(5, 4, seed=34), randn(9, 4, seed=35)
    assert moco_loss(q, k, queue, 0.2).item() == pytest.approx(moco_reference(q, k, queue, 0.2, None), rel=1e-5)
    w = (torch.rand(5, 9, generator=torch.Generator().manual_seed(36)) > 0.5).float()
    got = moco_loss(q, k, queue, 0.2, negative_weight=w).item()
    assert got == pytest.approx(moco_reference(q, k, queue, 0.2, w.numpy()), rel=1e-5)


def test_moco_loss_analytic_and_key_stopgrad() -> None:
    t, n_queue = 0.2, 6
    q = torch.eye(8)[:2]
    queue = torch.eye(8)[2 : 2 + n_queue]  # orthogonal to every query
    expected = -1 / t + math.log(math.exp(1 / t) + n_queue)
    assert moco_loss(q, q, queue, t).item() == pytest.approx(expected, rel=1e-6)
    key = q.clone().requires_grad_()
    moco_loss(q.clone().requires_grad_(), key, queue, t).backward()
    assert key.grad is None


def _loss_cases() -> dict[str, Callable[[list[Tensor]], Tensor]]:
    return {
        "nt_xent": lambda t: L.nt_xent_loss(t[0], t[1], temperature=0.2),
        "nt_xent_weighted": lambda t: L.nt_xent_loss(t[0], t[1], 0.2, negative_weight=(t[3][:, :16] > 0).float()),
        "byol": lambda t: L.byol_loss(t[0], t[1]),
        "simsiam": lambda t: L.simsiam_loss(t[0], t[1]),
        "barlow_twins": lambda t: L.barlow_twins_loss(t[0], t[1]),
        "vicreg": lambda t: L.vicreg_loss(t[0], t[1]),
        "moco": lambda t: L.moco_loss(t[0], t[1], t[2], temperature=0.2),
        "sinkhorn": lambda t: (L.sinkhorn_knopp(t[4]) ** 2).sum(),
        "swav": lambda t: L.swav_loss([t[4], t[5]], [L.sinkhorn_knopp(t[4])]),
    }


@pytest.mark.parametrize("name", list(_loss_cases()))
def test_every_loss_is_float32_under_bf16_autocast(name: str) -> None:
    """Autocast must not run a loss's matmuls in bf16 (Barlow Twins drifted 5.142 → 5.156 before)."""
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(16, 64, generator=g), torch.randn(16, 64, generator=g), torch.randn(48, 64, generator=g),
               torch.randn(16, 48, generator=g)]
    tensors[2] = torch.nn.functional.normalize(tensors[2], dim=1)
    tensors += [tensors[0] @ tensors[2].T, tensors[1] @ tensors[2].T]  # prototype scores
    loss = _loss_cases()[name]
    reference = loss(tensors)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = loss(tensors)
    assert under_autocast.dtype == torch.float32
    assert abs(under_autocast.item() - reference.item()) <= 1e-5 * abs(reference.item()), (under_autocast, reference)
    # bf16 inputs (a model's outputs under autocast) are upcast and computed in float32 too
    rounded = [t.bfloat16() for t in tensors]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        from_bf16 = loss(rounded)
    expected = loss([t.float() for t in rounded])
    assert abs(from_bf16.item() - expected.item()) <= 1e-5 * abs(expected.item())
