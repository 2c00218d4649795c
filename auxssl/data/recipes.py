"""Named multi-view augmentation recipes, each view described once by a `ViewSpec`.

Both the torchvision (per-sample PIL) and the kornia (batched, on device) backends build their pipelines from
the same `ViewSpec`, in the same order: random resized crop → horizontal flip → colour jitter → grayscale →
Gaussian blur → solarize → (to float) → Gaussian noise → normalise. Random parameters are drawn per sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class ViewSpec:
    """The augmentation of one view. Probabilities are per sample; 0 disables a step.

    Attributes:
        size: output side in pixels.
        scale, ratio: random-resized-crop area fraction and aspect-ratio ranges; ``scale=None`` disables the
            crop (the image is only resized to ``size``).
        flip_p: horizontal flip probability.
        jitter: brightness, contrast, saturation, hue strengths (torchvision's ColorJitter semantics).
        jitter_p: probability of applying the colour jitter.
        grayscale_p: probability of converting to grayscale (3 equal channels).
        blur_p, blur_sigma: Gaussian blur probability and σ range; the kernel covers ~10% of the image side
            (BYOL: 23 px at 224), at least 3 px and odd.
        solarize_p: probability of solarizing (inverting pixels above 50% intensity).
        noise_std: standard deviation of additive Gaussian noise on [0, 1] pixels (0: none).
    """

    size: int = 32
    scale: tuple[float, float] | None = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    noise_std: float = 0.0

    @property
    def blur_kernel(self) -> int:
        k = max(3, int(round(0.1 * self.size)))
        return k if k % 2 == 1 else k + 1


@dataclass(frozen=True)
class Recipe:
    """A named multi-view recipe: the views in order, the first ``num_global`` being global crops, and the
    ``task_views``: further views drawn for the auxiliary tasks alone (``Batch.task_views``; the base method
    never sees them), such as E-SSL's small crop whose four rotations are predicted."""

    name: str
    views: tuple[ViewSpec, ...]
    num_global: int = 2
    description: str = field(default="", compare=False)
    task_views: tuple[ViewSpec, ...] = ()

    @property
    def all_views(self) -> tuple[ViewSpec, ...]:
        """The base method's views, then the task views: what a loader draws, in this order."""
        return self.views + self.task_views


def _local_size(image_size: int) -> int:
    """SwAV's local-crop side relative to the global one (96 for 224), rounded to an even number."""
    return max(8, 2 * round(image_size * 48 / 224))


def simclr(image_size: int = 32) -> Recipe:
    """SimCLR / MoCo v2 on CIFAR (Chen et al. 2020, appendix B.9): crop scale 0.08–1, flip, colour jitter
    0.4/0.4/0.4/0.1 with p=0.8, grayscale p=0.2, no blur (omitted for CIFAR)."""
    view = ViewSpec(size=image_size)
    return Recipe("simclr", (view, view), description=simclr.__doc__ or "")


#: Images smaller than this get the CIFAR variants of recipes (no Gaussian blur).
SMALL_IMAGE_SIZE = 64


def byol_cifar(image_size: int = 32) -> Recipe:
    """BYOL's asymmetric recipe for small images, as solo-learn's CIFAR ``asymmetric.yaml``: crop 0.08–1, flip,
    jitter 0.4/0.4/0.2/0.1 p=0.8, grayscale p=0.2, no blur (SimCLR B.9 drops blur on CIFAR too); solarize
    p=0 / 0.2."""
    base = ViewSpec(size=image_size, jitter=(0.4, 0.4, 0.2, 0.1))
    return Recipe("byol_cifar", (base, replace(base, solarize_p=0.2)), description=byol_cifar.__doc__ or "")


def byol_imagenet(image_size: int = 224) -> Recipe:
    """BYOL's ImageNet recipe (Grill et al. 2020, table 6): crop 0.08–1, flip, jitter 0.4/0.4/0.2/0.1 p=0.8,
    grayscale p=0.2; asymmetric views: blur p=1.0 / 0.1 and solarize p=0 / 0.2."""
    base = ViewSpec(size=image_size, jitter=(0.4, 0.4, 0.2, 0.1))
    return Recipe(
        "byol_imagenet",
        (replace(base, blur_p=1.0, solarize_p=0.0), replace(base, blur_p=0.1, solarize_p=0.2)),
        description=byol_imagenet.__doc__ or "",
    )


def byol(image_size: int = 32) -> Recipe:
    """BYOL's recipe for the image size: `byol_cifar` below ``SMALL_IMAGE_SIZE`` px, else `byol_imagenet`."""
    return byol_cifar(image_size) if image_size < SMALL_IMAGE_SIZE else byol_imagenet(image_size)


def swav_multicrop(image_size: int = 32, num_local: int = 6) -> Recipe:
    """SwAV multi-crop (Caron et al. 2020): 2 global crops (scale 0.14–1) and ``num_local`` local crops at
    ~96/224 of the side (scale 0.05–0.14), each with flip, jitter 0.8/0.8/0.8/0.2 p=0.8 (strength 1.0 scaled
    as in the SwAV code's 0.8·s), grayscale p=0.2, and blur p=0.5."""
    jitter = (0.8, 0.8, 0.8, 0.2)
    global_view = ViewSpec(size=image_size, scale=(0.14, 1.0), jitter=jitter, blur_p=0.5)
    local_view = ViewSpec(size=_local_size(image_size), scale=(0.05, 0.14), jitter=jitter, blur_p=0.5)
    return Recipe(
        "swav_multicrop", (global_view, global_view) + (local_view,) * num_local,
        description=swav_multicrop.__doc__ or "",
    )


def ffcv_crop_grayscale(image_size: int = 32) -> Recipe:
    """FFCV-SSL's weak recipe "crop + grayscale": random resized crop 0.08–1 and grayscale p=0.2 only."""
    view = ViewSpec(size=image_size, flip_p=0.0, jitter_p=0.0, grayscale_p=0.2)
    return Recipe("ffcv_crop_grayscale", (view, view), description=ffcv_crop_grayscale.__doc__ or "")


def ffcv_gaussian_noise(image_size: int = 32, noise_std: float = 0.1) -> Recipe:
    """FFCV-SSL's weakest recipe: no crop, only additive Gaussian noise (σ = ``noise_std`` on [0, 1] pixels)."""
    view = ViewSpec(size=image_size, scale=None, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, noise_std=noise_std)
    return Recipe("ffcv_gaussian_noise", (view, view), description=ffcv_gaussian_noise.__doc__ or "")


def essl(image_size: int = 32) -> Recipe:
    """E-SSL's CIFAR recipe (Dangovski et al., ICLR 2022; rdangovs/essl ``cifar10/main.py``): two views with crop
    0.2–1, flip, jitter 0.4/0.4/0.4/0.1 p=0.8, grayscale p=0.2, no blur, and for the rotation task a separate crop
    at half the side (16 px at 32) with the same steps (``task_views``)."""
    view = ViewSpec(size=image_size, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1))
    return Recipe("essl", (view, view), task_views=(replace(view, size=image_size // 2),),
                  description=essl.__doc__ or "")


def linear_eval(image_size: int = 32) -> Recipe:
    """The augmented linear-probe protocol: random resized crop 0.08–1 and horizontal flip, one view."""
    view = ViewSpec(size=image_size, jitter_p=0.0, grayscale_p=0.0)
    return Recipe("linear_eval", (view,), num_global=1, description=linear_eval.__doc__ or "")


RECIPES = {
    "simclr": simclr,
    "moco": simclr,
    "byol": byol,
    "byol_cifar": byol_cifar,
    "byol_imagenet": byol_imagenet,
    "swav_multicrop": swav_multicrop,
    "essl": essl,
    "ffcv_crop_grayscale": ffcv_crop_grayscale,
    "ffcv_gaussian_noise": ffcv_gaussian_noise,
    "linear_eval": linear_eval,
}


def get_recipe(name: str, image_size: int = 32) -> Recipe:
    """A recipe by name (one of `RECIPES`) for images of side ``image_size``."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name](image_size)
