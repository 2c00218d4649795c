"""Datasets, multi-view augmentation recipes and loader backends."""

from auxssl.data.datasets import (
    DATASETS,
    ArrayDataset,
    CorruptImageError,
    FolderDataset,
    ImageDataset,
    cifar10_jpg,
    digits,
    get_dataset,
    torchvision_dataset,
)
from auxssl.data.labels import balanced_subset, reveal_labels
from auxssl.data.loaders import BACKENDS, MultiViewLoader, build_loader
from auxssl.data.recipes import RECIPES, Recipe, ViewSpec, get_recipe

__all__ = [
    "BACKENDS",
    "DATASETS",
    "RECIPES",
    "ArrayDataset",
    "CorruptImageError",
    "FolderDataset",
    "ImageDataset",
    "MultiViewLoader",
    "Recipe",
    "ViewSpec",
    "balanced_subset",
    "build_loader",
    "cifar10_jpg",
    "digits",
    "get_dataset",
    "get_recipe",
    "reveal_labels",
    "torchvision_dataset",
]
