"""Augmentation statistics, per-sample randomness, determinism, and backend agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auxssl.data import ArrayDataset, Recipe, ViewSpec, build_loader, digits, get_recipe
from auxssl.data.loaders import ffcv_available, kornia_augmentation, torchvision_transform
from auxssl.data.recipes import RECIPES, swav_multicrop

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
NOTHING = ViewSpec(size=32, scale=None, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)


def coordinate_images(n: int, side: int = 64) -> torch.Tensor:
    """Channel 0 holds the column, channel 1 the row (both in [0, 1]): a crop's extent can be read back."""
    ramp = torch.linspace(0, 1, side)
    image = torch.stack([ramp.expand(side, side), ramp[:, None].expand(side, side), torch.full((side, side), 0.5)])
    return image.expand(n, -1, -1, -1).clone()


def crop_areas(views: torch.Tensor) -> torch.Tensor:
    width = views[:, 0].amax(dim=(1, 2)) - views[:, 0].amin(dim=(1, 2))
    height = views[:, 1].amax(dim=(1, 2)) - views[:, 1].amin(dim=(1, 2))
    return width * height


# Crop boxes are whole source pixels (64 px side): rounding can add or remove a pixel per side, and the read-back
# extent (max - min coordinate) loses up to one more; these bounds allow exactly that.
LOW = 0.2 * (1 - 2 / 63) ** 2
HIGH = 0.6 * (1 + 2 / 64) ** 2


def test_kornia_crop_area_within_configured_scale() -> None:
    torch.manual_seed(0)
    spec = ViewSpec(size=32, scale=(0.2, 0.6), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    out = kornia_augmentation(spec, **IDENTITY)(coordinate_images(500))
    areas = crop_areas(out)
    assert areas.min() >= LOW - 1e-3 and areas.max() <= HIGH + 1e-3
    assert areas.std() > 0.05  # drawn per sample, spread over the range


def test_torchvision_crop_area_within_configured_scale() -> None:
    torch.manual_seed(0)
    spec = ViewSpec(size=32, scale=(0.2, 0.6), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    transform = torchvision_transform(spec, **IDENTITY)
    images = coordinate_images(1)[0]
    from torchvision.transforms.v2.functional import to_pil_image

    pil = to_pil_image(images)
    out = torch.stack([transform(pil) for _ in range(200)])
    areas = crop_areas(out)
    # plus 8-bit quantisation of the coordinate image (~1/255 per side)
    assert areas.min() >= LOW - 0.01 and areas.max() <= HIGH + 0.01


def binomial_ok(successes: int, n: int, p: float) -> bool:
    return abs(successes - n * p) <= 5 * np.sqrt(n * p * (1 - p))


def colourful(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 8, 8, generator=g) * torch.tensor([1.0, 0.5, 0.2])[:, None, None]


def test_grayscale_probability() -> None:
    spec = ViewSpec(size=8, scale=None, flip_p=0.0, jitter_p=0.0, grayscale_p=0.2)
    out = kornia_augmentation(spec, **IDENTITY)(colourful(4000))
    gray = ((out[:, 0] - out[:, 1]).abs().amax(dim=(1, 2)) < 1e-5).sum().item()
    assert binomial_ok(gray, 4000, 0.2), gray


def test_colour_jitter_probability() -> None:
    spec = ViewSpec(size=8, scale=None, flip_p=0.0, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.0)
    images = colourful(4000)
    out = kornia_augmentation(spec, **IDENTITY)(images)
    changed = ((out - images).abs().amax(dim=(1, 2, 3)) > 1e-4).sum().item()
    assert binomial_ok(changed, 4000, 0.8), changed


def test_parameters_are_drawn_per_sample_and_per_view() -> None:
    columns = np.arange(32, dtype=np.uint8)[None, None, :, None] * 8
    dataset = ArrayDataset(np.full((64, 32, 32, 3), 0, np.uint8) + columns,
                           np.zeros(64), ["x"])
    batch = next(iter(build_loader("tensor", dataset, get_recipe("byol"), 64)))
    first, second = batch.views
    # identical source images: every sample got its own crop/jitter, and the two views differ
    distinct = {tuple(v.flatten()[:64].tolist()) for v in first}
    assert len(distinct) > 60
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("backend", ["tensor", "torchvision"])
def test_fixed_seed_gives_identical_batches(backend: str) -> None:
    dataset = digits("test")
    recipe = get_recipe("simclr")

    def first(seed: int, workers: int = 0):
        return next(iter(build_loader(backend, dataset, recipe, 32, seed=seed, num_workers=workers)))

    a, b, c = first(0), first(0, workers=1), first(1)
    assert torch.equal(a.index, b.index) and all(torch.equal(x, y) for x, y in zip(a.views, b.views))
    assert not torch.equal(a.index, c.index)


@pytest.mark.parametrize("backend", ["tensor", "torchvision"])
def test_loading_in_the_training_process_leaves_its_random_stream_alone(backend: str) -> None:
    """With ``num_workers=0`` the loader runs in the training process: its seeded per-sample draws must not
    reseed the process's own stream (rotation labels are drawn from it), which made a resumed run's ranks look
    right only by accident (the stream was reset by the last sample's seed)."""
    loader = build_loader(backend, digits("test"), get_recipe("simclr"), 32, seed=0, num_workers=0)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    next(iter(loader))
    assert torch.equal(torch.rand(4), expected)


def test_epochs_differ_and_cover_the_dataset() -> None:
    dataset = digits("test")
    loader = build_loader("tensor", dataset, get_recipe("simclr"), 40)
    epoch0 = torch.cat([b.index for b in loader])
    loader.set_epoch(1)
    epoch1 = torch.cat([b.index for b in loader])
    assert len(epoch0) == 360 and len(set(epoch0.tolist())) == 360
    assert not torch.equal(epoch0, epoch1)


BACKENDS = ["torchvision", "tensor"] + (["ffcv"] if ffcv_available() else [])


# FFCV compiles its pipelines with numba (~10 s per loader): exercised with the two-view recipe only
@pytest.mark.parametrize(
    ("recipe", "backends"),
    [(get_recipe("byol"), BACKENDS), (swav_multicrop(32, num_local=2), ["torchvision", "tensor"])],
    ids=["byol", "swav_multicrop"],
)
def test_backends_agree_on_shape_dtype_and_range(recipe: Recipe, backends: list[str], tmp_path) -> None:
    dataset = digits("test")
    summaries = {}
    for backend in backends:
        loader = build_loader(backend, dataset, recipe, 64, labels=dataset.labels, num_workers=1,
                              beton_path=tmp_path / "digits.beton")
        batch = next(iter(loader))
        assert torch.equal(batch.label.cpu(), torch.from_numpy(dataset.labels)[batch.index.cpu()])
        lo = (0 - np.array(dataset.mean)) / np.array(dataset.std)
        hi = (1 - np.array(dataset.mean)) / np.array(dataset.std)
        for view in batch.views:
            assert view.min() >= lo.min() - 1e-4 and view.max() <= hi.max() + 1e-4
        summaries[backend] = [(tuple(v.shape), v.dtype) for v in batch.views]
        assert batch.num_global == recipe.num_global
    assert len({tuple(s) for s in summaries.values()}) == 1, summaries


@pytest.mark.skipif(not ffcv_available(), reason="ffcv not installed")
def test_ffcv_loader_leaves_torch_threads_alone(tmp_path) -> None:
    threads = torch.get_num_threads()
    loader = build_loader("ffcv", digits("test"), get_recipe("simclr"), 64, num_workers=1,
                          beton_path=tmp_path / "d.beton")
    next(iter(loader))
    assert torch.get_num_threads() == threads


def test_recipes_are_complete_and_documented() -> None:
    for build in RECIPES.values():
        recipe = build(32)
        assert isinstance(recipe, Recipe) and recipe.description
    byol = get_recipe("byol", 32)  # CIFAR: solo-learn's asymmetric.yaml, no blur
    assert (byol.views[0].blur_p, byol.views[1].blur_p) == (0.0, 0.0)
    assert (byol.views[0].solarize_p, byol.views[1].solarize_p) == (0.0, 0.2)
    assert byol.views[0].jitter == (0.4, 0.4, 0.2, 0.1) and byol.views[0].jitter_p == 0.8
    byol = get_recipe("byol", 224)  # ImageNet: BYOL table 6
    assert (byol.views[0].blur_p, byol.views[1].blur_p) == (1.0, 0.1)
    assert (byol.views[0].solarize_p, byol.views[1].solarize_p) == (0.0, 0.2)
    swav = get_recipe("swav_multicrop", 224)
    assert [v.size for v in swav.views] == [224, 224] + [96] * 6 and swav.num_global == 2
    assert get_recipe("simclr").views[0].jitter == (0.4, 0.4, 0.4, 0.1)
    assert ViewSpec(size=224).blur_kernel == 23 and ViewSpec(size=32).blur_kernel == 3


@pytest.mark.parametrize("side, size", [(32, 32), (256, 96)])  # CIFAR's upscaled crops; downscaled larger images
def test_the_batched_crop_gives_the_per_image_crops_pixels(side: int, size: int) -> None:
    """On a GPU the tensor loader crops the whole batch in one warp (kornia's resample mode) instead of one crop
    and resize per image: from the same crop boxes the pixels agree with the per-image crop to within 1e-4, and
    the loader picks the batched crop only for CUDA."""
    from auxssl.data.loaders.tensor_loader import KorniaViews

    spec = ViewSpec(size=size, scale=(0.08, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    per_image, batched = (kornia_augmentation(spec, **IDENTITY, batched_crop=b)[0] for b in (False, True))
    assert (per_image.flags["cropping_mode"], batched.flags["cropping_mode"]) == ("slice", "resample")
    images = torch.rand(32, 3, side, side, generator=torch.Generator().manual_seed(0))
    params = per_image.forward_parameters(images.shape)
    expected, got = per_image(images, params=params), batched(images, params=params)
    assert (got - expected).abs().max() < 1e-4 and (got - expected).abs().max() > 0  # two code paths, one result
    views = KorniaViews(get_recipe("simclr", 32), (0.5,) * 3, (0.25,) * 3, torch.device("cpu"))
    assert views.augmentations[0][0].flags["cropping_mode"] == "slice"
