"""How each dataset is stored and read: Fashion-MNIST's IDX files, CIFAR's python pickles, an
ImageNet folder tree (torchvision's ImageFolder) and synthetic images.

Each reader returns the dataset's training and test sets: small datasets as
:class:`InMemorySplit` (uint8 ``N x C x H x W`` images and int64 labels), ImageNet as the
file list of an ImageFolder scan, decoded later by a loader. :func:`dataset_info` says what a
model needs to know about each dataset. Where the files are looked for: ``root``, then
``$SD_TUNE_DATA``, then (Fashion-MNIST only) Debian's ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sd_tune.data.samplers import TAG_SYNTHETIC
from sd_tune.vocab import DATASETS

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


def normalization(
    mean: Sequence[float], std: Sequence[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, each ``1 x C x 1 x 1`` on ``device``, such that
    ``pixels * scale + shift`` is ``(pixels / 255 - mean) / std`` for uint8 pixels.

    >>> scale, shift = normalization([0.5], [0.25], torch.device("cpu"))
    >>> (torch.tensor([0.0, 255.0]).view(1, 1, 1, 2) * scale + shift).flatten().tolist()
    [-2.0, 2.0]
    """
    std_t = torch.tensor(list(std), dtype=torch.float32)
    mean_t = torch.tensor(list(mean), dtype=torch.float32)
    scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(device)
    return scale, (-mean_t / std_t).view(1, -1, 1, 1).to(device)


@dataclass
class InMemorySplit:
    """One split held in memory: ``x`` uint8 ``N x C x H x W``, ``y`` int64 ``N``.

    >>> split = InMemorySplit(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), [0, 1, 0, 1])
    >>> len(split), split.subset([1, 3]).y.tolist()
    (4, [1, 1])
    """

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


def dataset_info(
    name: str,
    *,
    image_size: int | None = None,
    synthetic_shape: tuple[int, int, int] = (3, 32, 32),
    synthetic_classes: int = 10,
) -> DatasetInfo:
    """The :class:`DatasetInfo` of dataset ``name`` (ImageNet's class count is fixed at 1000
    here; ``load_splits`` reports the number of class folders found).

    >>> info = dataset_info("fashion_mnist")
    >>> info.num_classes, info.in_channels, info.image_size
    (10, 1, 28)
    >>> dataset_info("imagenet", image_size=160).image_size
    160
    """
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


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"`name` must be one of {', '.join(DATASETS)}, but got {name!r}")


# --------------------------------------------------------------------------- Fashion-MNIST / IDX


def _open_maybe_gz(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def read_idx(path: str | Path, kind: str) -> torch.Tensor:
    """Read an IDX file (plain or gzipped): ``kind="images"`` gives uint8 ``N x 1 x H x W``,
    ``kind="labels"`` gives int64 ``N``. Magic numbers and sizes are checked.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder, "labels-idx1-ubyte")  # magic 2049, 3 labels, the labels
    ...     _ = path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9]))
    ...     read_idx(path, "labels").tolist()
    [7, 0, 9]
    """
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

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     for name in FASHION_MNIST_FILES:
    ...         Path(folder, f"{name}.gz").touch()
    ...     find_fashion_mnist(folder) == Path(folder)
    True
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
    rng = np.random.default_rng([seed, TAG_SYNTHETIC])
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
