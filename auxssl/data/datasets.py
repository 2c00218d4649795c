"""Image datasets with label-aware access: folders, torchvision datasets, the shared CIFAR-10 archive, digits.

Every dataset here is an `ImageDataset`: ``dataset[i] -> (PIL RGB image, label)``, ``dataset.labels`` (int64,
-1 where unknown), ``dataset.classes``, normalisation statistics ``mean``/``std``, and `to_uint8` to decode
everything once into one ``(N, 3, H, W)`` uint8 tensor for the in-memory loader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from auxssl.errors import InputError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}


class CorruptImageError(RuntimeError):
    """An image file that cannot be decoded."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"cannot decode image {path}: {reason}")
        self.path = str(path)


def default_cache_dir() -> Path:
    """``$AUXSSL_CACHE``, else ``~/.cache/auxssl``: where archives are extracted and decoded arrays cached."""
    return Path(os.environ.get("AUXSSL_CACHE", Path.home() / ".cache" / "auxssl"))


class ImageDataset(Dataset):
    """Base class: images with labels (``-1`` = unknown) and dataset statistics."""

    classes: list[str]
    labels: np.ndarray
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    name: str = "images"

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> Image.Image:
        """The RGB image ``i``; raises `CorruptImageError` if it cannot be decoded."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return self.load(i), int(self.labels[i])

    @property
    def labelled(self) -> bool:
        return bool((self.labels >= 0).any())

    @property
    def source(self) -> ImageDataset:
        """The dataset this one was drawn from (itself; a subset's source is its parent's source)."""
        return self

    def source_indices(self) -> np.ndarray:
        """The index in `source` of every image of this dataset."""
        return np.arange(len(self))

    #: Whether the images are already held in memory (evaluation then reads them directly rather than streaming).
    in_memory: bool = False

    def fingerprint(self) -> str:
        """A digest of the dataset's content, to key caches built from it (default: its name and size)."""
        return hashlib.sha1(f"{self.name}|{len(self)}".encode()).hexdigest()

    def uniform_size(self) -> tuple[int, int] | None:
        """``(height, width)`` shared by every image, or None when sizes differ (default: the first image's)."""
        width, height = self.load(0).size
        return height, width

    def storage_size(self, image_size: int) -> int | None:
        """The side at which an in-memory backend stores the images: as they are when they share one size
        (None), else resized to ``image_size`` (mixed sizes cannot be stacked)."""
        return None if self.uniform_size() is not None else image_size

    def decoded_bytes(self, image_size: int) -> int:
        """Bytes of the whole dataset decoded as uint8 at its storage size (see `storage_size`)."""
        shared = self.uniform_size()
        height, width = shared if shared is not None else (image_size, image_size)
        return len(self) * 3 * height * width

    def to_uint8(self, size: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """Decode every image (in threads: PIL releases the GIL) into one ``(N', 3, H, W)`` uint8 tensor.

        Returns the tensor and the dataset indices of its rows; images that cannot be decoded are skipped with
        a warning (N' < N). All images must share one size unless ``size`` resizes them.
        """

        def decode(i: int) -> np.ndarray | None:
            try:
                return _as_array(self.load(i), size)
            except CorruptImageError as err:
                warnings.warn(f"skipping {err}", stacklevel=3)
                return None

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            arrays = list(pool.map(decode, range(len(self))))
        kept = np.array([i for i, a in enumerate(arrays) if a is not None], dtype=np.int64)
        return _stack([arrays[i] for i in kept], size), kept


def _as_array(image: Image.Image, size: int | None) -> np.ndarray:
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _stack(images: Sequence[np.ndarray], size: int | None) -> torch.Tensor:
    if not images:
        raise InputError("no decodable image in the dataset")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise InputError(f"images have different sizes {sorted(shapes)[:3]}…; pass size= to resize them")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


class ArrayDataset(ImageDataset):
    """Images held in memory as a uint8 array ``(N, H, W, 3)``."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        classes: Sequence[str],
        name: str = "array",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise InputError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise InputError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.name, self.mean, self.std = name, mean, std

    in_memory = True

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def fingerprint(self) -> str:
        digest = hashlib.sha1(np.ascontiguousarray(self.images).data)
        digest.update(self.labels.tobytes())
        return digest.hexdigest()

    def uniform_size(self) -> tuple[int, int] | None:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def to_uint8(self, size: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        tensor = torch.from_numpy(self.images).permute(0, 3, 1, 2).contiguous()
        if size is not None and tensor.shape[-1] != size:
            tensor = torch.nn.functional.interpolate(tensor.float(), size=(size, size), mode="bilinear", antialias=True)
            tensor = tensor.round().clamp(0, 255).to(torch.uint8)
        return tensor, np.arange(len(self), dtype=np.int64)


class FolderDataset(ImageDataset):
    """Images under a folder: ImageFolder layout (``root/<class>/<image>``, labelled) or any tree (unlabelled).

    Args:
        root: the folder.
        labelled: True for the ImageFolder layout (class = first-level folder name), False to ignore folders
            and give every image label -1. Default: labelled iff every image sits exactly one level below root.
        mean, std: normalisation statistics (default ImageNet's).

    Corrupt files are found when loaded: `load` raises `CorruptImageError`, the loaders skip the sample with a
    warning and count it (``skipped``), and labels are never shifted.
    """

    def __init__(
        self,
        root: str | Path,
        labelled: bool | None = None,
        name: str | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")
        depths = {len(p.relative_to(self.root).parts) for p in files}
        if labelled is None:
            labelled = depths == {2}
        if labelled:
            if depths != {2}:
                raise InputError(f"ImageFolder layout needs every image in {self.root}/<class>/; found other depths")
            self.classes = sorted({p.parent.name for p in files})
            to_label = {c: k for k, c in enumerate(self.classes)}
            self.labels = np.array([to_label[p.parent.name] for p in files], dtype=np.int64)
        else:
            self.classes = []
            self.labels = np.full(len(files), -1, dtype=np.int64)
        self.files = files
        self.name = name or self.root.name
        self.mean, self.std = mean, std
        self.skipped: list[str] = []
        self._fingerprint: str | None = None
        self._sizes: list | None = None  # the distinct (width, height) of the images, read from their headers

    def load(self, i: int) -> Image.Image:
        path = self.files[i]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise CorruptImageError(path, str(err) or type(err).__name__) from err

    def to_uint8(self, size: int | None = None, cache: bool = True) -> tuple[torch.Tensor, np.ndarray]:
        """`ImageDataset.to_uint8`, cached as ``.npz`` in `default_cache_dir`; unreadable files go to ``skipped``."""
        cache_file = self._cache_file(size) if cache else None
        if cache_file is not None and cache_file.exists():
            stored = np.load(cache_file)
            self.skipped = [str(self.files[i]) for i in stored["skipped"]]
            return torch.from_numpy(stored["images"]), stored["kept"]
        tensor, kept = super().to_uint8(size)
        skipped = np.setdiff1d(np.arange(len(self)), kept)
        self.skipped = [str(self.files[i]) for i in skipped]
        if len(skipped):
            logger.warning("skipped %d unreadable images under %s", len(skipped), self.root)
        if cache_file is not None:
            _atomic_savez(cache_file, images=tensor.numpy(), kept=kept, skipped=skipped)
        return tensor, kept

    def fingerprint(self) -> str:
        """Digest of every file's path, size and modification time (computed once)."""
        if self._fingerprint is None:
            digest = hashlib.sha1()
            for path in self.files:
                stat = path.stat()
                digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def uniform_size(self) -> tuple[int, int] | None:
        """From the image headers (no decoding), cached in `default_cache_dir` by `fingerprint`; unreadable files
        are left to `load` to report."""
        if self._sizes is None:
            cache = default_cache_dir() / "sizes" / f"{self.name}-{self.fingerprint()[:16]}.json"
            if cache.exists():
                self._sizes = json.loads(cache.read_text())
            else:
                self._sizes = sorted({size for size in map(_header_size, self.files) if size is not None})
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(self._sizes))
        if len(self._sizes) != 1:
            return None
        width, height = self._sizes[0]
        return int(height), int(width)

    def _cache_file(self, size: int | None) -> Path:
        return default_cache_dir() / "decoded" / f"{self.name}-{self.fingerprint()[:16]}-{size}.npz"


def _header_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from an image file's header, None when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ImageSubset(ImageDataset):
    """The images of ``dataset`` at ``indices`` (labels, classes and statistics follow)."""

    def __init__(self, dataset: ImageDataset, indices: Sequence[int] | np.ndarray) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(dataset.labels)[self.indices]
        self.classes, self.mean, self.std = dataset.classes, dataset.mean, dataset.std
        self.name = f"{dataset.name}-subset{len(self.indices)}"

    @property
    def source(self) -> ImageDataset:
        return self.dataset.source

    @property
    def in_memory(self) -> bool:  # type: ignore[override]
        return self.dataset.in_memory

    def source_indices(self) -> np.ndarray:
        return self.dataset.source_indices()[self.indices]

    def fingerprint(self) -> str:
        return hashlib.sha1(f"{self.dataset.fingerprint()}|".encode() + self.indices.tobytes()).hexdigest()

    def uniform_size(self) -> tuple[int, int] | None:
        return self.dataset.uniform_size()

    def load(self, i: int) -> Image.Image:
        return self.dataset.load(int(self.indices[i]))

    def to_uint8(self, size: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        images, rows = self.dataset.to_uint8(size)
        position = {int(r): k for k, r in enumerate(rows)}
        keep = [(i, position[int(idx)]) for i, idx in enumerate(self.indices) if int(idx) in position]
        return images[[k for _, k in keep]], np.array([i for i, _ in keep], dtype=np.int64)


# ----------------------------------------------------------------------------------------- named datasets
def torchvision_dataset(name: str, root: str | Path, split: str = "train", download: bool = False) -> ArrayDataset:
    """CIFAR-10, CIFAR-100 or STL-10 through torchvision, as an in-memory `ArrayDataset`.

    ``split``: ``"train"``/``"test"`` (STL-10 also ``"unlabeled"`` and ``"train+unlabeled"``). With
    ``download=False`` (the default, for offline machines) a missing dataset raises `FileNotFoundError` saying
    where to put the files.
    """
    from torchvision import datasets

    root = Path(root)
    expected = {
        "cifar10": "cifar-10-batches-py/ (from cifar-10-python.tar.gz)",
        "cifar100": "cifar-100-python/ (from cifar-100-python.tar.gz)",
        "stl10": "stl10_binary/ (from stl10_binary.tar.gz)",
    }
    if name not in expected:
        raise InputError(f"unknown torchvision dataset {name!r}; choose one of {sorted(expected)}")
    try:
        if name == "stl10":
            ds = datasets.STL10(str(root), split=split, download=download)
            images, labels = ds.data.transpose(0, 2, 3, 1), ds.labels
        else:
            if split not in ("train", "test"):
                raise InputError(f"{name} has splits 'train' and 'test', not {split!r}")
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            ds = cls(str(root), train=split == "train", download=download)
            images, labels = ds.data, ds.targets
    except RuntimeError as err:
        if "not found" not in str(err).lower() and "download" not in str(err).lower():
            raise
        raise FileNotFoundError(
            f"{name} not found under {root}: put {expected[name]} there, or pass download=True "
            "(--set data.download=true) where the network allows"
        ) from err
    mean, std = STATS[name]
    return ArrayDataset(np.ascontiguousarray(images), np.asarray(labels), ds.classes, name, mean, std)


def find_shared_cifar10_archive() -> Path | None:
    """``$AUXSSL_CIFAR10_JPG``, else ``../shared/data/cifar10-jpg.tar.gz`` from the working directory or the repo."""
    candidates = [os.environ.get("AUXSSL_CIFAR10_JPG")]
    relative = Path("..") / "shared" / "data" / "cifar10-jpg.tar.gz"
    candidates += [str(Path.cwd() / relative), str(Path(__file__).resolve().parents[2] / relative)]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def extract_archive(archive: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Extract a ``.tar.gz`` once into ``cache_dir/<archive stem>`` (atomically, via a temporary folder)."""
    archive = Path(archive)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    target = Path(cache_dir or default_cache_dir()) / archive.name.removesuffix(".tar.gz").removesuffix(".tgz")
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise
    return target


def cifar10_jpg(split: str = "train", archive: str | Path | None = None, cache_dir: str | Path | None = None) -> FolderDataset:
    """The real CIFAR-10 as JPEGs in ImageFolder layout (the project's shared archive), extracted once."""
    if split not in ("train", "test"):
        raise InputError(f"cifar10_jpg has splits 'train' and 'test', not {split!r}")
    archive = Path(archive) if archive else find_shared_cifar10_archive()
    if archive is None:
        raise FileNotFoundError(
            "CIFAR-10 JPEG archive not found: set AUXSSL_CIFAR10_JPG or put cifar10-jpg.tar.gz in ../shared/data/"
        )
    root = extract_archive(archive, cache_dir) / split
    mean, std = STATS["cifar10"]
    return FolderDataset(root, labelled=True, name=f"cifar10_jpg-{split}", mean=mean, std=std)


def digits(split: str = "train", size: int = 32, test_fraction: float = 0.2) -> ArrayDataset:
    """scikit-learn's handwritten digits (1,797 real 8×8 images, 10 classes) as ``size``² RGB images.

    Needs no network and no shared files (the data ships with scikit-learn): the offline dataset of the
    quickstart and the tests. The train/test split is stratified and fixed (seed 0).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise InputError(f"digits has splits 'train' and 'test', not {split!r}")
    bunch = load_digits()
    pixels = torch.from_numpy(bunch.images).float()[:, None] * (255.0 / 16.0)
    pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    images = pixels.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=test_fraction, stratify=bunch.target, random_state=0
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    rgb = images[idx].astype(np.float64) / 255.0
    mean = tuple(float(m) for m in rgb.mean(axis=(0, 1, 2)))
    std = tuple(float(s) for s in rgb.std(axis=(0, 1, 2)))
    return ArrayDataset(np.ascontiguousarray(images[idx]), bunch.target[idx], [str(d) for d in range(10)], "digits", mean, std)


DATASETS = ("cifar10", "cifar100", "stl10", "cifar10_jpg", "digits", "folder")


def get_dataset(
    name: str, split: str = "train", root: str | Path | None = None, download: bool = False
) -> ImageDataset:
    """A dataset by name: one of `DATASETS` (``folder`` needs ``root``: ``root/<split>`` if it exists)."""
    if name in ("cifar10", "cifar100", "stl10"):
        return torchvision_dataset(name, root or default_cache_dir() / name, split, download)
    if name == "cifar10_jpg":
        return cifar10_jpg(split, archive=root)
    if name == "digits":
        return digits(split)
    if name == "folder":
        if root is None:
            raise InputError("the folder dataset needs root=<path to the images>")
        split_root = Path(root) / split
        return FolderDataset(split_root if split_root.is_dir() else root)
    raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
