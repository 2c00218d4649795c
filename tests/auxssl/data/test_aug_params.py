"""Every backend records the augmentation parameters each view was drawn with (``Batch.aug_params``), and the
recorded values explain the pixels: each check recomputes the step from an unaugmented copy of the images."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from auxssl.data import ArrayDataset, Recipe, ViewSpec, build_loader
from auxssl.data.loaders import ffcv_available
from baselines import Batch

BACKENDS = ["tensor", "torchvision", pytest.param("ffcv", marks=pytest.mark.skipif(not ffcv_available(),
                                                                                  reason="ffcv not installed"))]
SIDE, N = 16, 32
PLAIN = ViewSpec(size=SIDE, scale=None, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)


def images() -> ArrayDataset:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (N, SIDE, SIDE, 3), dtype=np.uint8)
    return ArrayDataset(pixels, np.zeros(N, dtype=np.int64), ["a"], mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def first_batch(backend: str, spec: ViewSpec, tmp_path) -> Batch:
    recipe = Recipe("test", (spec, spec))
    return next(iter(build_loader(backend, images(), recipe, N, num_workers=0, shuffle=False, seed=3,
                                  beton_path=tmp_path / "x.beton")))


@pytest.fixture
def plain(tmp_path):
    return lambda backend: first_batch(backend, PLAIN, tmp_path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_view_without_steps_records_identity_values(backend: str, plain) -> None:
    params = plain(backend).aug_params
    assert params["jitter"].shape == (2, N, 4) and bool((params["jitter"] == torch.tensor([1.0, 1, 1, 0])).all())
    assert not bool(params["flip"].any() | params["grayscale"].any() | params["solarize"].any())
    assert bool((params["blur_sigma"] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_recorded_flips_are_the_flipped_images(backend: str, plain, tmp_path) -> None:
    batch, reference = first_batch(backend, replace(PLAIN, flip_p=0.5), tmp_path), plain(backend)
    flip = batch.aug_params["flip"]
    assert 0 < int(flip.sum()) < flip.numel()
    for v in range(2):
        expected = torch.where(flip[v][:, None, None, None], reference.views[v].flip(-1), reference.views[v])
        torch.testing.assert_close(batch.views[v], expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_recorded_grayscale_and_solarize_explain_the_pixels(backend: str, plain, tmp_path) -> None:
    reference = plain(backend).views[0]
    gray = first_batch(backend, replace(PLAIN, grayscale_p=0.5), tmp_path)
    chosen = gray.aug_params["grayscale"][0]
    assert 0 < int(chosen.sum()) < N
    equal_channels = (gray.views[0][:, :1] - gray.views[0]).abs().amax(dim=(1, 2, 3)) < 1e-6
    assert torch.equal(equal_channels, chosen)
    solar = first_batch(backend, replace(PLAIN, solarize_p=0.5), tmp_path)
    chosen = solar.aug_params["solarize"][0]
    assert 0 < int(chosen.sum()) < N
    inverted = torch.where(reference >= 0.5, 1.0 - reference, reference)
    expected = torch.where(chosen[:, None, None, None], inverted, reference)
    torch.testing.assert_close(solar.views[0], expected, atol=1.5 / 255, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_recorded_brightness_factors_explain_the_pixels(backend: str, plain, tmp_path) -> None:
    reference = plain(backend).views[0]
    batch = first_batch(backend, replace(PLAIN, jitter=(0.4, 0.0, 0.0, 0.0), jitter_p=0.5), tmp_path)
    jitter = batch.aug_params["jitter"][0]
    applied = jitter[:, 0] != 1
    assert 0 < int(applied.sum()) < N and bool(((jitter[:, 0] >= 0.6) & (jitter[:, 0] <= 1.4)).all())
    assert bool((jitter[:, 1:] == torch.tensor([1.0, 1, 0])).all())
    expected = (reference * jitter[:, 0, None, None, None]).clamp(0, 1)
    torch.testing.assert_close(batch.views[0], expected, atol=1.5 / 255, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_recorded_blur_sigmas_are_drawn_where_blurred_and_zero_elsewhere(backend: str, plain, tmp_path) -> None:
    reference = plain(backend).views[0]
    batch = first_batch(backend, replace(PLAIN, blur_p=0.5, blur_sigma=(0.5, 2.0)), tmp_path)
    sigma = batch.aug_params["blur_sigma"][0]
    blurred = sigma > 0
    assert 0 < int(blurred.sum()) < N and bool(((sigma[blurred] >= 0.5) & (sigma[blurred] <= 2.0)).all())
    changed = (batch.views[0] - reference).abs().amax(dim=(1, 2, 3)) > 1e-6
    assert torch.equal(changed, blurred)
