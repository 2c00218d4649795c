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
from collections.abc import Callable, Sequence
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
    #: How the images and their labels were read (a folder's layout, a held-out split), for run records.
    description: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> Image.Image:
        """The RGB image ``i``; raises `CorruptImageError` if it cannot be decoded."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return self.load(i), int(self.labels[i])

    def note_skipped(self, indices: Sequence[int] | np.ndarray) -> None:
        """Record that the images at ``indices`` failed to decode (a folder lists them in ``skipped``)."""

    def has_decoded(self, size: int | None) -> bool:
        """Whether `to_uint8` at ``size`` is cheap (images in memory, or decoded before and cached)."""
        return self.in_memory

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

        Returns the tensor and the dataset indices of its rows; images that cannot be decoded are left out
        (N' < N; `FolderDataset` lists them in ``skipped``). All images must share one size unless ``size``
        resizes them.
        """

        def decode(i: int) -> np.ndarray | None:
            try:
                return _as_array(self.load(i), size)
            except CorruptImageError:
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


def image_files(root: Path) -> list[Path]:
    """Every image file under ``root``, sorted, following symbolic links (each real folder once, so a link cycle
    ends); hidden files and folders (``.name``) are left out."""
    files: list[Path] = []
    seen: set[str] = set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        files += [Path(folder) / n for n in names
                  if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files)


def read_layout(root: Path, files: Sequence[Path]) -> tuple[bool, str]:
    """Whether ``files`` under ``root`` form a labelled ImageFolder tree, and why (one sentence).

    Labelled: every image lies inside a top-level folder and there are at least two of them; the top-level folder
    is the class, also for images in nested sub-folders (``root/<class>/<any>/<image>``)."""
    parts = [f.relative_to(root).parts for f in files]
    loose = sum(len(p) == 1 for p in parts)
    classes = sorted({p[0] for p in parts if len(p) > 1})
    if loose:
        return False, (f"unlabelled: {_count(loose, 'image')} directly in {root} (a labelled folder keeps every image "
                       "inside a class folder, root/<class>/…)")
    if len(classes) < 2:
        return False, (f"unlabelled: every image is in the single folder {root / classes[0]} "
                       "(labels need 2+ class folders)")
    nested = sum(len(p) > 2 for p in parts)
    text = f"labelled: {len(classes)} classes (the folders in {root})"
    if nested:
        text += f"; {_count(nested, 'image')} in nested sub-folders labelled by their class folder"
    return True, text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class FolderDataset(ImageDataset):
    """Images under a folder: ImageFolder layout (``root/<class>/…/<image>``, labelled) or any tree (unlabelled).

    Args:
        root: the folder; symbolic links are followed.
        labelled: True for the ImageFolder layout (class = top-level folder name, also for images in nested
            sub-folders), False to give every image label -1. Default: labelled iff every image lies inside a
            top-level folder and there are at least two (`read_layout`; ``description`` says which and why).
        mean, std: normalisation statistics (default ImageNet's).

    Files whose header cannot be read are left out when the dataset is built and listed in ``skipped``; files
    that fail later, when decoded, are skipped by the loaders and added to ``skipped``. Labels never shift.
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
        files = image_files(self.root)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")
        self.name = name or self.root.name
        self.mean, self.std = mean, std
        self.skipped: list[str] = []
        self._fingerprint: str | None = None
        self.files = files
        sizes = self._header_sizes()
        readable = [i for i, size in enumerate(sizes) if size is not None]
        if not readable:
            raise InputError(f"none of the {len(files)} image files under {self.root} can be read")
        if len(readable) < len(files):
            self.skipped = [str(files[i]) for i in range(len(files)) if sizes[i] is None]
            files = [files[i] for i in readable]
            self.files, self._fingerprint = files, None
        self._sizes = sorted({tuple(sizes[i]) for i in readable})  # the distinct (width, height) of the images
        layout_labelled, self.description = read_layout(self.root, files)
        if labelled is None:
            labelled = layout_labelled
        elif labelled and not layout_labelled:
            raise InputError(f"{self.root} is not an ImageFolder tree: {self.description}")
        elif not labelled:
            self.description = "unlabelled (as asked)"
        if labelled:
            self.classes = sorted({f.relative_to(self.root).parts[0] for f in files})
            to_label = {c: k for k, c in enumerate(self.classes)}
            self.labels = np.array([to_label[f.relative_to(self.root).parts[0]] for f in files], dtype=np.int64)
        else:
            self.classes = []
            self.labels = np.full(len(files), -1, dtype=np.int64)

    def _header_sizes(self) -> list[list[int] | None]:
        """``[width, height]`` of every file from its header (no decoding; None when unreadable), in threads,
        cached in `default_cache_dir` by `fingerprint`."""
        cache = default_cache_dir() / "headers" / f"{self.name}-{self.fingerprint()[:16]}.json"
        if cache.exists():
            return json.loads(cache.read_text())
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            sizes = [None if size is None else list(size) for size in pool.map(_header_size, self.files)]
        cache.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(cache, json.dumps(sizes))
        return sizes

    def load(self, i: int) -> Image.Image:
        path = self.files[i]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise CorruptImageError(path, str(err) or type(err).__name__) from err

    def to_uint8(self, size: int | None = None, cache: bool = True) -> tuple[torch.Tensor, np.ndarray]:
        """`ImageDataset.to_uint8`, cached as ``.npz`` in `default_cache_dir`; unreadable files go to ``skipped``."""
        return cached_uint8(self, size, cache, lambda: ImageDataset.to_uint8(self, size))

    def has_decoded(self, size: int | None) -> bool:
        return self._cache_file(size).exists()

    def note_skipped(self, indices: Sequence[int] | np.ndarray) -> None:
        """Add the files at ``indices`` (which failed to decode) to ``skipped``, once each."""
        for i in indices:
            path = str(self.files[int(i)])
            if path not in self.skipped:
                self.skipped.append(path)

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
        """From the image headers (read when the dataset was built)."""
        if len(self._sizes) != 1:
            return None
        width, height = self._sizes[0]
        return int(height), int(width)

    def _cache_file(self, size: int | None) -> Path:
        return decoded_cache_file(self, size)


def decoded_cache_file(dataset: ImageDataset, size: int | None) -> Path:
    """Where `cached_uint8` keeps a dataset's decoded images: keyed by name, content fingerprint and size."""
    return default_cache_dir() / "decoded" / f"{dataset.name}-{dataset.fingerprint()[:16]}-{size}.npz"


def cached_uint8(dataset: ImageDataset, size: int | None, cache: bool,
                 decode: Callable[[], tuple[torch.Tensor, np.ndarray]]) -> tuple[torch.Tensor, np.ndarray]:
    """``decode()`` (images and the rows that decoded), read from or written to `decoded_cache_file` when
    ``cache``; the rows that did not decode are noted in the dataset (`ImageDataset.note_skipped`)."""
    cache_file = decoded_cache_file(dataset, size) if cache else None
    if cache_file is not None and cache_file.exists():
        stored = np.load(cache_file)
        dataset.note_skipped(stored["skipped"])
        return torch.from_numpy(stored["images"]), stored["kept"]
    tensor, kept = decode()
    skipped = np.setdiff1d(np.arange(len(dataset)), kept)
    dataset.note_skipped(skipped)
    if cache_file is not None:
        _atomic_savez(cache_file, images=tensor.numpy(), kept=kept, skipped=skipped)
    return tensor, kept


def _header_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from an image file's header, None when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

    def __init__(self, dataset: ImageDataset, indices: Sequence[int] | np.ndarray, name: str | None = None,
                 description: str | None = None) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(dataset.labels)[self.indices]
        self.classes, self.mean, self.std = dataset.classes, dataset.mean, dataset.std
        self.name = name or f"{dataset.name}-subset{len(self.indices)}"
        self.description = dataset.description if description is None else description

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

    def note_skipped(self, indices: Sequence[int] | np.ndarray) -> None:
        self.dataset.note_skipped(self.indices[np.asarray(indices, dtype=np.int64)])

    def has_decoded(self, size: int | None) -> bool:
        return self.dataset.has_decoded(size) or decoded_cache_file(self, size).exists()

    def to_uint8(self, size: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """The subset's rows of the parent's decoded images when those are cheap (in memory or cached), else only
        the subset's own images decoded (a 1/W shard under torch.distributed decodes 1/W of the files) and
        cached under the subset's fingerprint."""
        if not self.dataset.has_decoded(size):
            return cached_uint8(self, size, not self.source.in_memory, lambda: ImageDataset.to_uint8(self, size))
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
    except OSError as err:  # URLError, socket errors, DNS failures: no network
        if not download:
            raise
        offline = " or data.dataset=cifar10_jpg (the JPEG archive, see AUXSSL_CIFAR10_JPG)" if name == "cifar10" else ""
        raise FileNotFoundError(
            f"{name} could not be downloaded ({getattr(err, 'reason', None) or err}): offline, put {expected[name]} "
            f"under {root} and set data.download=false{offline}"
        ) from None
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


def cifar10_jpg(split: str = "train", archive: str | Path | None = None,
                cache_dir: str | Path | None = None) -> FolderDataset:
    """The real CIFAR-10 as JPEGs in ImageFolder layout (the project's shared archive), extracted once."""
    if split not in ("train", "test"):
        raise InputError(f"cifar10_jpg has splits 'train' and 'test', not {split!r}")
    archive = Path(archive) if archive else find_shared_cifar10_archive()
    if archive is None:
        raise FileNotFoundError(
            "CIFAR-10 JPEG archive not found: set AUXSSL_CIFAR10_JPG or put cifar10-jpg.tar.gz in ../shared/data/; "
            "build one from torchvision's CIFAR-10 with `auxssl make-cifar10-jpg cifar10-jpg.tar.gz --download`, "
            "or train on torchvision's CIFAR-10 directly (data.dataset=cifar10)"
        )
    root = extract_archive(archive, cache_dir) / split
    mean, std = STATS["cifar10"]
    return FolderDataset(root, labelled=True, name=f"cifar10_jpg-{split}", mean=mean, std=std)


def write_cifar10_jpg(out: str | Path, root: str | Path | None = None, download: bool = False,
                      quality: int = 95) -> Path:
    """Write torchvision's CIFAR-10 as the ``cifar10_jpg`` archive: ``train/<class>/NNNN.jpg`` and
    ``test/<class>/NNNN.jpg`` in a ``.tar.gz`` (written to a temporary file, then renamed). JPEG is lossy: accuracies
    on it are comparable to, not identical with, the pickled arrays'."""
    import io

    out = Path(out)
    root = Path(root) if root else default_cache_dir() / "cifar10"
    fd, tmp = tempfile.mkstemp(dir=out.parent if out.parent.exists() else None, suffix=".tar.gz.tmp")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for split in ("train", "test"):
                data = torchvision_dataset("cifar10", root, split, download)
                counts: dict[int, int] = {}
                for image, label in zip(data.images, data.labels):
                    k = counts[int(label)] = counts.get(int(label), -1) + 1
                    buffer = io.BytesIO()
                    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
                    info = tarfile.TarInfo(f"{split}/{data.classes[int(label)]}/{k:04d}.jpg")
                    info.size = buffer.tell()
                    buffer.seek(0)
                    tar.addfile(info, buffer)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


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
    classes = [str(d) for d in range(10)]
    return ArrayDataset(np.ascontiguousarray(images[idx]), bunch.target[idx], classes, "digits", mean, std)


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
            raise InputError("the folder dataset needs root=<path to the images> (data.root)")
        return folder_split(root, split)
    raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


#: The evaluation split of a labelled folder without one: this fraction of every class, drawn with `HELD_OUT_SEED`.
HELD_OUT_FRACTION = 0.1
HELD_OUT_SEED = 0
#: The folder names read as a folder's splits: ``root/train`` and the first of these for evaluation.
TEST_SPLITS = ("test", "val")


def folder_split(root: str | Path, split: str) -> ImageDataset:
    """``split`` (``train`` or ``test``) of a folder dataset.

    ``root/train`` and ``root/test`` (or ``root/val``, the ImageNet layout) when they exist. A labelled folder
    with no evaluation split (``root`` itself, or ``root/train`` alone) is split in two: `HELD_OUT_FRACTION` of
    every class, drawn with a fixed seed, is the test split and never trained on (the rest is the train split),
    so a kNN never scores the images of its own bank. An unlabelled folder is its own unlabelled train and test
    split (evaluation is then skipped and says why)."""
    if split not in ("train", "test"):
        raise InputError(f"a folder dataset has splits 'train' and 'test', not {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} (data.root) does not exist")
    evaluation = next((root / s for s in TEST_SPLITS if (root / s).is_dir()), None)
    if split == "test" and evaluation is not None:
        return FolderDataset(evaluation, name=f"{root.name}-{evaluation.name}")
    base = root / "train" if (root / "train").is_dir() else root
    full = FolderDataset(base, name=f"{root.name}-train" if base != root else None)
    if evaluation is not None or not full.labelled:
        return full
    held_out = stratified_held_out(full.labels, HELD_OUT_FRACTION, HELD_OUT_SEED)
    rule = (f"no {' or '.join(s + '/' for s in TEST_SPLITS)} folder in {root}: "
            f"{HELD_OUT_FRACTION:.0%} of every class held out for evaluation (seed {HELD_OUT_SEED}), never trained on")
    if split == "test":
        return ImageSubset(full, np.flatnonzero(held_out), name=f"{full.name}-heldout",
                           description=f"{full.description}; {rule}: {int(held_out.sum())} test images")
    return ImageSubset(full, np.flatnonzero(~held_out), name=f"{full.name}-train",
                       description=f"{full.description}; {rule}: {int((~held_out).sum())} training images")


def stratified_held_out(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask holding out ``round(fraction · n_c)`` images of every class ``c`` (at least one of a class
    with two or more images), drawn with ``seed``: the same split for the same labels on every machine."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = max(1, round(fraction * len(members))) if len(members) > 1 else 0
        mask[rng.permutation(members)[:take]] = True
    return mask
