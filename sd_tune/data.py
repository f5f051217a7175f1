"""Datasets and loaders: Fashion-MNIST, CIFAR-10/100, an ImageNet folder and synthetic images.

Small datasets live in memory as uint8 ``N x C x H x W`` tensors and are batched, augmented
and normalised directly on the target device (:class:`InMemoryLoader`). ImageNet is decoded
on a CUDA device (``sd_tune.jpeg``: nvJPEG, batched) and with PIL in DataLoader workers on a
CPU (:class:`TorchLoader`). Both yield ``(x, y)`` on the device, x float32
and normalised, y int64, and shard every epoch across DDP ranks.

Splits: the validation split is held out of the training set (stratified by class, seeded,
a pure function of the labels and ``split_seed``); the test split is the real test set.

This module uses only torch, torchvision, PIL and numpy.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from sd_tune.vocab import DATASETS

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "DatasetInfo",
    "ImageFolderSubset",
    "InMemoryLoader",
    "InMemorySplit",
    "Loader",
    "ShardSampler",
    "Splits",
    "TorchLoader",
    "dataset_info",
    "find_fashion_mnist",
    "load_splits",
    "make_loaders",
    "read_idx",
    "stratified_split",
    "stratified_subset",
]


#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: System folders searched for Fashion-MNIST after ``root`` and ``$SD_TUNE_DATA``.
FASHION_MNIST_SYSTEM_DIRS: tuple[Path, ...] = (DEBIAN_FASHION_MNIST,)
#: Environment variable naming the data folder.
DATA_ENV = "SD_TUNE_DATA"

FASHION_MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_FASHION_MNIST_SUBDIRS: tuple[str, ...] = ("", "fashion-mnist", "FashionMNIST/raw")

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# Seed stream tags: every seeded choice draws from its own stream of ``split_seed``.
_TAG_VAL, _TAG_TRAIN_SUBSET, _TAG_VAL_SUBSET, _TAG_TEST_SUBSET, _TAG_SYNTHETIC = range(5)


# --------------------------------------------------------------------------- descriptions


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int  # height (= width) of the evaluation images
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class InMemorySplit:
    """One split held in memory: ``x`` uint8 ``N x C x H x W``, ``y`` int64 ``N``."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(
                "`x` must be a uint8 tensor of shape N x C x H x W, but got "
                f"{self.x.dtype} of shape {tuple(self.x.shape)}"
            )
        self.y = torch.as_tensor(self.y, dtype=torch.int64)
        if self.y.dim() != 1 or len(self.y) != len(self.x):
            raise ValueError(
                f"`y` must be a 1-D tensor with one label per image ({len(self.x)}), but got "
                f"shape {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray | torch.Tensor) -> InMemorySplit:
        """The samples at ``indices`` (a copy)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        return InMemorySplit(self.x[idx], self.y[idx])


Split = InMemorySplit | Dataset


@dataclass
class Splits:
    """Train, validation and test splits of one dataset.

    ``train_indices`` / ``val_indices`` index the original training set (sorted); the
    validation split is held out of it, the test split is the dataset's real test set.
    """

    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    train_indices: np.ndarray | None = None
    val_indices: np.ndarray | None = None


def dataset_info(
    name: str,
    *,
    image_size: int | None = None,
    synthetic_shape: tuple[int, int, int] = (3, 32, 32),
    synthetic_classes: int = 10,
) -> DatasetInfo:
    """The :class:`DatasetInfo` of dataset ``name`` (ImageNet's class count is fixed at 1000
    here; :func:`load_splits` reports the number of class folders found)."""
    _check_name(name)
    if name == "fashion_mnist":
        return DatasetInfo(name, 10, 1, 28, (0.2860,), (0.3530,))
    if name == "cifar10":
        return DatasetInfo(name, 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    if name == "cifar100":
        return DatasetInfo(name, 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    if name == "imagenet":
        return DatasetInfo(name, 1000, 3, image_size or 224, _IMAGENET_MEAN, _IMAGENET_STD)
    c, h, _ = synthetic_shape
    # Images are the mean of a class template and noise, both uniform uint8.
    return DatasetInfo(name, synthetic_classes, c, h, (0.5,) * c, (0.2041,) * c)


def _default_augmentation(info: DatasetInfo) -> tuple[int, bool]:
    """(crop padding, horizontal flip) used for training batches by default."""
    if info.name == "cifar10" or info.name == "cifar100":
        return 4, True
    if info.name == "fashion_mnist":
        return 2, True
    if info.name == "synthetic":
        return max(1, round(info.image_size / 8)), False
    return 0, False


# --------------------------------------------------------------------------- stratified splits


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder)."""
    exact = counts * (total / counts.sum())
    alloc = np.floor(exact).astype(np.int64)
    rest = total - int(alloc.sum())
    if rest > 0:
        order = np.argsort(-(exact - alloc), kind="stable")
        alloc[order[:rest]] += 1
    return np.minimum(alloc, counts)


def stratified_subset(
    labels: np.ndarray | torch.Tensor, n: int, seed: Sequence[int] | int
) -> np.ndarray:
    """Sorted indices of ``n`` samples drawn per class in proportion to the class sizes.

    A pure function of ``labels``, ``n`` and ``seed`` (no global RNG).
    """
    labels = np.asarray(labels)
    if n <= 0 or len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    if n >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    alloc = _allocate(counts, n)
    order = np.argsort(inverse, kind="stable")  # indices grouped by class, ascending within
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng(seed)
    chosen = [
        rng.permutation(order[start : start + count])[:k]
        for start, count, k in zip(starts, counts, alloc)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_split(
    labels: np.ndarray | torch.Tensor, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sorted indices; ``round(fraction * N)`` held out, stratified by class."""
    labels = np.asarray(labels)
    held = stratified_subset(labels, math.floor(fraction * len(labels) + 0.5), [seed, _TAG_VAL])
    mask = np.ones(len(labels), dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask).astype(np.int64), held


# --------------------------------------------------------------------------- Fashion-MNIST / IDX


def _open_maybe_gz(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def read_idx(path: str | Path, kind: str) -> torch.Tensor:
    """Read an IDX file (plain or gzipped): ``kind="images"`` gives uint8 ``N x 1 x H x W``,
    ``kind="labels"`` gives int64 ``N``. Magic numbers and sizes are checked."""
    path = Path(path)
    try:
        data = _open_maybe_gz(path)
    except (OSError, EOFError) as exc:
        raise ValueError(f"Cannot read IDX file {path}: {exc}. Replace the file.") from exc
    magic = _IDX_IMAGES_MAGIC if kind == "images" else _IDX_LABELS_MAGIC
    header = 16 if kind == "images" else 8
    if len(data) < header:
        raise ValueError(
            f"{path} is not an IDX {kind} file: {len(data)} bytes is shorter than its "
            f"{header}-byte header. Replace the file."
        )
    got = int.from_bytes(data[0:4], "big")
    if got != magic:
        raise ValueError(
            f"{path} is not an IDX {kind} file: magic number must be {magic}, but got {got}. "
            "Check that the file is not swapped with another one, or replace it."
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range((header - 4) // 4)]
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: its header says {' x '.join(map(str, dims))} "
            f"({expected} bytes with the header) but it holds {len(data)} bytes. "
            "Replace the file."
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).copy()
    if kind == "images":
        n, h, w = dims
        return torch.from_numpy(array.reshape(n, 1, h, w))
    return torch.from_numpy(array.astype(np.int64))


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fashion_mnist_candidates(root: str | Path | None) -> list[tuple[Path, str]]:
    """(folder, where it came from) for every place searched, in order."""
    bases: list[tuple[Path, str]] = []
    if root is not None:
        bases.append((Path(root), "root argument"))
    env = os.environ.get(DATA_ENV)
    if env:
        bases.append((Path(env), f"${DATA_ENV}"))
    for system in FASHION_MNIST_SYSTEM_DIRS:
        bases.append((system, "Debian package dataset-fashion-mnist"))
    return [
        (base / sub if sub else base, origin)
        for base, origin in bases
        for sub in _FASHION_MNIST_SUBDIRS
    ]


def find_fashion_mnist(root: str | Path | None = None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files (plain or ``.gz``).

    Looks, in order, in ``root``, ``$SD_TUNE_DATA`` and Debian's
    ``/usr/share/datasets/fashion-mnist``; in each, in the folder itself, ``fashion-mnist/``
    and ``FashionMNIST/raw/`` (torchvision's layout). Raises ``FileNotFoundError`` listing
    every place looked at.
    """
    looked: list[str] = []
    for folder, origin in _fashion_mnist_candidates(root):
        found = [name for name in FASHION_MNIST_FILES if _idx_file(folder, name) is not None]
        if len(found) == len(FASHION_MNIST_FILES):
            return folder
        missing = [n for n in FASHION_MNIST_FILES if n not in found]
        note = f"; has some files but misses {', '.join(missing)}" if found else ""
        looked.append(f"  - {folder} ({origin}{note})")
    if not os.environ.get(DATA_ENV):
        looked.append(f"  - ${DATA_ENV} is not set")
    raise FileNotFoundError(
        "Fashion-MNIST not found. Looked for "
        + ", ".join(FASHION_MNIST_FILES)
        + " (each plain or .gz) in:\n"
        + "\n".join(looked)
        + "\nFix: run `sudo apt-get install dataset-fashion-mnist`, or set "
        f"{DATA_ENV} to a folder holding these files, or pass download=True to fetch them "
        "with torchvision."
    )


def _load_fashion_mnist(
    root: str | Path | None, download: bool
) -> tuple[InMemorySplit, InMemorySplit]:
    try:
        folder = find_fashion_mnist(root)
    except FileNotFoundError:
        if not download:
            raise
        from torchvision.datasets import FashionMNIST

        target = _download_dir(root)
        for train in (True, False):
            FashionMNIST(str(target), train=train, download=True)
        folder = find_fashion_mnist(target)
    parts = []
    for prefix in ("train", "t10k"):
        images_path = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
        labels_path = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
        assert images_path is not None and labels_path is not None
        x = read_idx(images_path, "images")
        y = read_idx(labels_path, "labels")
        if len(x) != len(y):
            raise ValueError(
                f"{images_path} holds {len(x)} images but {labels_path} holds {len(y)} labels; "
                "the two files must come from the same release. Replace them."
            )
        parts.append(InMemorySplit(x, y))
    return parts[0], parts[1]


# --------------------------------------------------------------------------- CIFAR


def _data_root(name: str, root: str | Path | None, download: bool, needs: str) -> Path:
    if root is not None:
        return Path(root)
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    if download:
        return _download_dir(None)
    raise FileNotFoundError(
        f"{name} needs a data folder, but no `root` was given and ${DATA_ENV} is not set. "
        f"Pass root=<folder holding {needs}>, set {DATA_ENV} to it, or pass download=True."
    )


def _download_dir(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else Path.home() / ".cache" / "sd-tune" / "data"


def _unpickle(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        raw = pickle.load(f, encoding="bytes")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _read_cifar_files(paths: list[Path], label_key: str) -> InMemorySplit:
    xs, ys = [], []
    for path in paths:
        entry = _unpickle(path)
        if "data" not in entry or label_key not in entry:
            raise ValueError(
                f"{path} is not a CIFAR python batch: it must hold the keys 'data' and "
                f"'{label_key}', but has {sorted(entry)}. Replace the file."
            )
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise ValueError(
                f"{path} is corrupt: 'data' must be N x 3072 with N labels, but got data of "
                f"shape {data.shape} and {len(labels)} labels. Replace the file."
            )
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return InMemorySplit(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))


def _load_cifar(
    name: str, root: str | Path | None, download: bool
) -> tuple[InMemorySplit, InMemorySplit]:
    if name == "cifar10":
        folder, train_files, test_files, key = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            "labels",
        )
    else:
        folder, train_files, test_files = "cifar-100-python", ["train"], ["test"]
        key = "fine_labels"
    base = _data_root(name, root, download, f"{folder}/")
    paths = [base / folder / f for f in train_files + test_files]
    missing = [p for p in paths if not p.is_file()]
    if missing and download:
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if name == "cifar10" else CIFAR100
        for train in (True, False):
            cls(str(base), train=train, download=True)
        missing = [p for p in paths if not p.is_file()]
    if missing:
        archive = "cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz"
        raise FileNotFoundError(
            f"{name} not found: missing " + ", ".join(str(p) for p in missing) + ". "
            f"Fix: extract {archive} (it unpacks to {folder}/) into {base}, point root or "
            f"{DATA_ENV} at the folder that holds {folder}/, or pass download=True."
        )
    n_train = len(train_files)
    return _read_cifar_files(paths[:n_train], key), _read_cifar_files(paths[n_train:], key)


# --------------------------------------------------------------------------- synthetic


def _make_synthetic(
    shape: tuple[int, int, int], num_classes: int, num_samples: int, seed: int
) -> tuple[InMemorySplit, InMemorySplit]:
    """Noise around one random template per class (learnable, for benchmarks and tests).

    ``num_samples`` training images and ``max(1, num_samples // 4)`` test images.
    """
    rng = np.random.default_rng([seed, _TAG_SYNTHETIC])
    templates = rng.integers(0, 256, size=(num_classes, *shape), dtype=np.uint16)
    parts = []
    for n in (num_samples, max(1, num_samples // 4)):
        y = rng.permutation(np.arange(n) % num_classes)
        noise = rng.integers(0, 256, size=(n, *shape), dtype=np.uint16)
        x = ((templates[y] + noise) // 2).astype(np.uint8)
        parts.append(InMemorySplit(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))))
    return parts[0], parts[1]


# --------------------------------------------------------------------------- ImageNet folder


class ImageFolderSubset(Dataset):
    """Some samples of an ImageFolder scan, decoded with ``transform`` (picklable)."""

    def __init__(self, samples: Sequence[tuple[str, int]], indices: Sequence[int], transform: Any):
        self.samples = [samples[i] for i in indices]
        self.targets = [target for _, target in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import default_loader

        path, target = self.samples[index]
        return self.transform(default_loader(path)), target


def _imagenet_root(root: str | Path | None) -> Path:
    base = _data_root("imagenet", root, False, "train/ and val/")
    looked = [base, base / "imagenet"]
    for candidate in looked:
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return candidate
    raise FileNotFoundError(
        "imagenet not found: looked for train/ and val/ (one sub-folder of images per class) "
        "in " + " and ".join(str(p) for p in looked) + ". "
        f"Fix: pass root=<folder holding train/ and val/> or set {DATA_ENV} to it."
    )


def _imagenet_transforms(image_size: int) -> tuple[Any, Any]:
    from torchvision import transforms as T

    normalize = T.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)
    train = T.Compose(
        [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize]
    )
    evaluate = T.Compose(
        [
            T.Resize(round(256 * image_size / 224)),
            T.CenterCrop(image_size),
            T.ToTensor(),
            normalize,
        ]
    )
    return train, evaluate


# --------------------------------------------------------------------------- load_splits


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"`name` must be one of {', '.join(DATASETS)}, but got {name!r}")


def _check_optional_count(value: int | None, arg: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"`{arg}` must be a positive integer or None, but got {value!r}")


def _check_load_args(
    name: str,
    val_fraction: float,
    train_fraction: float,
    max_train_samples: int | None,
    max_eval_samples: int | None,
    image_size: int | None,
    synthetic_shape: tuple[int, int, int],
    synthetic_classes: int,
    synthetic_samples: int,
) -> None:
    _check_name(name)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"`val_fraction` must be in [0, 1), but got {val_fraction}")
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"`train_fraction` must be in (0, 1], but got {train_fraction}")
    _check_optional_count(max_train_samples, "max_train_samples")
    _check_optional_count(max_eval_samples, "max_eval_samples")
    _check_optional_count(image_size, "image_size")
    if name == "synthetic":
        if len(synthetic_shape) != 3 or any(int(s) < 1 for s in synthetic_shape):
            raise ValueError(
                "`synthetic_shape` must be three positive integers (C, H, W), but got "
                f"{synthetic_shape!r}"
            )
        if synthetic_classes < 1:
            raise ValueError(f"`synthetic_classes` must be >= 1, but got {synthetic_classes}")
        if synthetic_samples < 1:
            raise ValueError(f"`synthetic_samples` must be >= 1, but got {synthetic_samples}")
    if image_size is not None and name not in ("imagenet", "synthetic"):
        native = dataset_info(name).image_size
        if image_size != native:
            raise ValueError(
                f"`image_size` can only be changed for imagenet: {name} images are "
                f"{native}x{native}, but got image_size={image_size}. Leave it unset."
            )
    if image_size is not None and name == "synthetic" and image_size != synthetic_shape[1]:
        raise ValueError(
            f"`image_size` must match synthetic_shape's height {synthetic_shape[1]} for "
            f"synthetic data, but got {image_size}. Set synthetic_shape instead."
        )


def _labels(split: Split) -> np.ndarray:
    if isinstance(split, InMemorySplit):
        return split.y.numpy()
    return np.asarray(split.targets, dtype=np.int64)  # type: ignore[attr-defined]


def load_splits(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    max_train_samples: int | None = None,
    train_fraction: float = 1.0,
    max_eval_samples: int | None = None,
    image_size: int | None = None,
    synthetic_shape: tuple[int, int, int] = (3, 32, 32),
    synthetic_classes: int = 10,
    synthetic_samples: int = 2048,
) -> Splits:
    """Load dataset ``name`` and split it into train / val / test.

    The validation split (``val_fraction`` of the training set, stratified by class, seeded by
    ``split_seed``) is held out of the training set. ``train_fraction`` and
    ``max_train_samples`` then shrink the training part, ``max_eval_samples`` caps val and
    test (both stratified and seeded). The result is the same on every call and every rank.
    ``split_seed`` also seeds the synthetic images.
    """
    synthetic_shape = tuple(int(s) for s in synthetic_shape)  # type: ignore[assignment]
    _check_load_args(
        name,
        val_fraction,
        train_fraction,
        max_train_samples,
        max_eval_samples,
        image_size,
        synthetic_shape,
        synthetic_classes,
        synthetic_samples,
    )
    info = dataset_info(
        name,
        image_size=image_size,
        synthetic_shape=synthetic_shape,
        synthetic_classes=synthetic_classes,
    )
    full_train: Any
    test: Any
    if name == "fashion_mnist":
        full_train, test = _load_fashion_mnist(root, download)
    elif name in ("cifar10", "cifar100"):
        full_train, test = _load_cifar(name, root, download)
    elif name == "synthetic":
        full_train, test = _make_synthetic(
            synthetic_shape, synthetic_classes, synthetic_samples, split_seed
        )
    else:
        full_train, test, info = _scan_imagenet(root, info)

    labels = _labels(full_train)
    for split, what in ((full_train, "training"), (test, "test")):
        split_labels = _labels(split)
        if len(split_labels) and (split_labels.min() < 0 or split_labels.max() >= info.num_classes):
            raise ValueError(
                f"{name} {what} labels must be in [0, {info.num_classes}), but got values from "
                f"{split_labels.min()} to {split_labels.max()}. The data files are corrupt."
            )
    train_idx, val_idx = stratified_split(labels, val_fraction, split_seed)
    n_train = math.floor(train_fraction * len(train_idx) + 0.5)
    if max_train_samples is not None:
        n_train = min(n_train, max_train_samples)
    if n_train < 1:
        raise ValueError(
            f"No training samples left: {len(labels)} samples, val_fraction={val_fraction}, "
            f"train_fraction={train_fraction}, max_train_samples={max_train_samples}. "
            "Lower val_fraction or raise train_fraction / max_train_samples."
        )
    if n_train < len(train_idx):
        keep = stratified_subset(labels[train_idx], n_train, [split_seed, _TAG_TRAIN_SUBSET])
        train_idx = train_idx[keep]
    test_idx = np.arange(len(_labels(test)), dtype=np.int64)
    if max_eval_samples is not None:
        val_idx = val_idx[
            stratified_subset(labels[val_idx], max_eval_samples, [split_seed, _TAG_VAL_SUBSET])
        ]
        test_idx = stratified_subset(
            _labels(test), max_eval_samples, [split_seed, _TAG_TEST_SUBSET]
        )

    if isinstance(full_train, InMemorySplit):
        train_split: Split = full_train.subset(train_idx)
        val_split: Split = full_train.subset(val_idx)
        test_split: Split = test if len(test_idx) == len(test) else test.subset(test_idx)
    else:
        train_tf, eval_tf = _imagenet_transforms(info.image_size)
        train_split = ImageFolderSubset(full_train.samples, train_idx, train_tf)
        val_split = ImageFolderSubset(full_train.samples, val_idx, eval_tf)
        test_split = ImageFolderSubset(test.samples, test_idx, eval_tf)
    return Splits(info, train_split, val_split, test_split, train_idx, val_idx)


def _scan_imagenet(root: str | Path | None, info: DatasetInfo) -> tuple[Any, Any, DatasetInfo]:
    from torchvision.datasets import ImageFolder

    base = _imagenet_root(root)
    train = ImageFolder(str(base / "train"))
    test = ImageFolder(str(base / "val"))
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))[:5]
        only_val = sorted(set(test.classes) - set(train.classes))[:5]
        raise ValueError(
            f"{base}/train and {base}/val must hold the same class folders, but "
            f"{len(train.classes)} and {len(test.classes)} differ (only in train: {only_train}, "
            f"only in val: {only_val}). Make both hold one folder per class."
        )
    info = DatasetInfo(info.name, len(train.classes), 3, info.image_size, info.mean, info.std)
    return train, test, info


# --------------------------------------------------------------------------- loaders


class Loader(Protocol):
    """What every loader offers: batches ``(x, y)`` on the device, sharded per rank."""

    num_samples: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


def _seed_int(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


class InMemoryLoader:
    """Batches an :class:`InMemorySplit` on ``device``, augmenting training batches there.

    Training (``train=True``): each epoch a permutation seeded with ``seed + epoch`` (the same
    on every rank) is cut to a multiple of ``world_size``; rank r takes every world_size-th
    index from r; the remainder and the last partial batch are dropped, so every rank gets
    ``len(self)`` batches. Augmentation (``crop_padding``, ``flip``) runs vectorised on the
    device, with offsets drawn from ``(seed, epoch, rank)``.

    Evaluation (``train=False``): rank r takes samples r, r + world_size, ... in order, no
    padding, last batch kept; the shards of all ranks cover every sample exactly once.
    """

    def __init__(
        self,
        split: InMemorySplit,
        info: DatasetInfo,
        *,
        batch_size: int,
        train: bool,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        crop_padding: int = 0,
        flip: bool = False,
        channels_last: bool = False,
    ):
        _check_loader_args(batch_size, rank, world_size)
        if crop_padding < 0:
            raise ValueError(f"`crop_padding` must be >= 0, but got {crop_padding}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.crop_padding = crop_padding
        self.flip = flip
        self.channels_last = channels_last
        self.epoch = 0
        n = len(split)
        if train:
            self._per_rank = n // world_size
            self._batches = self._per_rank // batch_size
            self.num_samples = self._batches * batch_size
            self._x = split.x.to(self.device)
            self._y = split.y.to(self.device)
        else:
            shard = torch.arange(rank, n, world_size)
            self.num_samples = len(shard)
            self._batches = math.ceil(self.num_samples / batch_size)
            self._x = split.x[shard].to(self.device)
            self._y = split.y[shard].to(self.device)
        channels = split.x.shape[1]
        std = torch.tensor(info.std, dtype=torch.float32)
        mean = torch.tensor(info.mean, dtype=torch.float32)
        if len(std) != channels or len(mean) != channels:
            raise ValueError(
                f"DatasetInfo mean/std must have one value per channel ({channels}), but got "
                f"{len(mean)} and {len(std)}"
            )
        self._scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(self.device)
        self._shift = (-mean / std).view(1, -1, 1, 1).to(self.device)

    def __len__(self) -> int:
        return self._batches

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch: training order and augmentation depend on it."""
        self.epoch = int(epoch)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        out = x.float().mul_(self._scale).add_(self._shift)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _augment(
        self, x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flips: torch.Tensor
    ) -> torch.Tensor:
        """Random crop from the zero-padded image and horizontal flip, in one gather."""
        b, c, h, w = x.shape
        p = self.crop_padding
        if p:
            x = F.pad(x, (p, p, p, p))
        rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = torch.arange(w, device=x.device).expand(b, w)
        cols = torch.where(flips[:, None], w - 1 - cols, cols) + dx[:, None]  # (B, W)
        return x[
            torch.arange(b, device=x.device)[:, None, None, None],
            torch.arange(c, device=x.device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs = self.batch_size
        if not self.train:
            for i in range(self._batches):
                sl = slice(i * bs, (i + 1) * bs)
                yield self._normalize(self._x[sl]), self._y[sl]
            return
        order = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self._y), generator=order)
        mine = perm[: self._per_rank * self.world_size][self.rank :: self.world_size]
        mine = mine[: self.num_samples].to(self.device)
        augment = self.crop_padding > 0 or self.flip
        if augment:
            gen = torch.Generator().manual_seed(_seed_int(self.seed, self.epoch, self.rank))
            high = 2 * self.crop_padding + 1
            shifts = torch.randint(0, high, (2, self.num_samples), generator=gen)
            flips = torch.rand(self.num_samples, generator=gen) < 0.5
            if not self.flip:
                flips.zero_()
            shifts, flips = shifts.to(self.device), flips.to(self.device)
        for i in range(self._batches):
            sl = slice(i * bs, (i + 1) * bs)
            idx = mine[sl]
            x = self._x[idx]
            if augment:
                x = self._augment(x, shifts[0, sl], shifts[1, sl], flips[sl])
            yield self._normalize(x), self._y[idx]


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` below ``n``: the shards cover each index once."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def set_epoch(self, epoch: int) -> None:
        """No-op: the order is fixed."""


class TorchLoader:
    """A DataLoader over a Dataset split whose batches are moved to ``device``.

    Training uses a ``DistributedSampler`` (shuffle, ``seed``, drop_last) and drops the last
    partial batch; evaluation uses :class:`ShardSampler` (each sample once over all ranks).
    Augmentation is the dataset's own transform.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        train: bool,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        num_workers: int = 8,
        channels_last: bool = False,
    ):
        _check_loader_args(batch_size, rank, world_size)
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, but got {num_workers}")
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.sampler: DistributedSampler | ShardSampler
        if train:
            self.sampler = DistributedSampler(
                dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
            )
        else:
            self.sampler = ShardSampler(len(dataset), rank, world_size)  # type: ignore[arg-type]
        self._pin = self.device.type == "cuda"
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=self._pin,
            drop_last=train,
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(_seed_int(seed, rank)),
        )
        self.num_samples = len(self.loader) * batch_size if train else len(self.sampler)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the training order with ``seed + epoch`` (no-op for evaluation)."""
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=self._pin)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=self._pin)


def _check_loader_args(batch_size: int, rank: int, world_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, but got {batch_size!r}")
    if world_size < 1:
        raise ValueError(f"`world_size` must be >= 1, but got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(
            f"`rank` must be in [0, {world_size}) for world_size={world_size}, but got {rank}"
        )


def make_loaders(
    splits: Splits,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    augment: bool = True,
    num_workers: int = 8,
    channels_last: bool = False,
    eval_batch_size: int | None = None,
    crop_padding: int | None = None,
    flip: bool | None = None,
    decode: str = "auto",
) -> tuple[Loader, Loader, Loader]:
    """(train, val, test) loaders for this rank; ``batch_size`` is per rank.

    In-memory splits get :class:`InMemoryLoader` (``crop_padding`` / ``flip`` default to the
    dataset's: 4 / flip for CIFAR, 2 / flip for Fashion-MNIST, H/8 / no flip for synthetic;
    ``augment=False`` turns both off). ImageFolder splits (ImageNet) are decoded where
    ``decode`` says: ``"device"`` gets :class:`sd_tune.jpeg.DeviceDecodeLoader` (the loader
    processes read bytes, the batch is decoded and augmented on ``device``: nvJPEG on a GPU),
    ``"pil"`` gets :class:`TorchLoader` (PIL decoding and the split's transform in
    ``num_workers`` processes), ``"auto"`` (default) the first on a CUDA device and the second
    on a CPU. Eval shards are uneven in length across ranks: sum metrics per rank and
    all-reduce the sums.
    """
    from sd_tune.jpeg import DeviceDecodeLoader, pick_decoder

    decoder = pick_decoder(decode, torch.device(device))
    _check_loader_args(batch_size, rank, world_size)
    eval_bs = batch_size if eval_batch_size is None else eval_batch_size
    _check_loader_args(eval_bs, rank, world_size)
    default_pad, default_flip = _default_augmentation(splits.info)
    pad = (default_pad if crop_padding is None else crop_padding) if augment else 0
    do_flip = (default_flip if flip is None else flip) if augment else False
    loaders: list[Loader] = []
    for split, train in ((splits.train, True), (splits.val, False), (splits.test, False)):
        bs = batch_size if train else eval_bs
        if isinstance(split, InMemorySplit):
            loader: Loader = InMemoryLoader(
                split,
                splits.info,
                batch_size=bs,
                train=train,
                device=device,
                rank=rank,
                world_size=world_size,
                seed=seed,
                crop_padding=pad if train else 0,
                flip=do_flip if train else False,
                channels_last=channels_last,
            )
        elif decoder == "device" and isinstance(split, ImageFolderSubset):
            loader = DeviceDecodeLoader(
                split.samples,
                batch_size=bs,
                train=train,
                image_size=splits.info.image_size,
                mean=splits.info.mean,
                std=splits.info.std,
                device=device,
                rank=rank,
                world_size=world_size,
                seed=seed,
                num_workers=num_workers,
                channels_last=channels_last,
            )
        else:
            loader = TorchLoader(
                split,
                batch_size=bs,
                train=train,
                device=device,
                rank=rank,
                world_size=world_size,
                seed=seed,
                num_workers=num_workers,
                channels_last=channels_last,
            )
        if train and len(loader) == 0:
            raise ValueError(
                f"The training split has {len(split)} samples, fewer than batch_size="  # type: ignore[arg-type]
                f"{batch_size} per rank x world_size={world_size}, so no full batch is left. "
                "Lower batch_size or use more training data."
            )
        loaders.append(loader)
    return loaders[0], loaders[1], loaders[2]
