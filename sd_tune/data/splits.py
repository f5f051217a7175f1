"""The train / validation / test split of a dataset, the same on every call and every rank.

The validation split is held out of the training set (stratified by class, seeded, a pure
function of the labels and ``split_seed``); the test split is the dataset's real test set.
``train_fraction``, ``max_train_samples`` and ``max_eval_samples`` then shrink the splits,
again stratified and seeded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sd_tune.data.formats import (
    DatasetInfo,
    ImageFolderSubset,
    InMemorySplit,
    Split,
    _check_name,
    _imagenet_transforms,
    _load_cifar,
    _load_fashion_mnist,
    _make_synthetic,
    _scan_imagenet,
    dataset_info,
)
from sd_tune.data.samplers import TAG_TEST_SUBSET, TAG_TRAIN_SUBSET, TAG_VAL, TAG_VAL_SUBSET

if TYPE_CHECKING:
    from sd_tune.config import DatasetConfig


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

    >>> labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    >>> picked = stratified_subset(labels, 6, seed=0)
    >>> again = stratified_subset(labels, 6, seed=0)
    >>> np.bincount(labels[picked]).tolist(), np.array_equal(picked, again)
    ([4, 2], True)
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
    """(kept, held-out) sorted indices; ``round(fraction * N)`` held out, stratified by class.

    >>> kept, held = stratified_split(np.array([0] * 8 + [1] * 2), 0.5, seed=0)
    >>> len(kept), len(held), sorted(set(kept) | set(held)) == list(range(10))
    (5, 5, True)
    """
    labels = np.asarray(labels)
    held = stratified_subset(labels, math.floor(fraction * len(labels) + 0.5), [seed, TAG_VAL])
    mask = np.ones(len(labels), dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask).astype(np.int64), held


# --------------------------------------------------------------------------- load_splits


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

    The result is the same on every call and every rank. Small datasets come back in memory
    (:class:`InMemorySplit`), ImageNet as :class:`ImageFolderSubset` file lists.

    Args:
        name: the dataset, one of ``sd_tune.vocab.DATASETS``.
        root: the folder holding the data files; None: ``$SD_TUNE_DATA``, and for
            Fashion-MNIST then Debian's ``/usr/share/datasets/fashion-mnist``.
        download: fetch a dataset that is not found with torchvision (not ImageNet).
        val_fraction: the share of the training set held out as the validation split, in
            [0, 1), stratified by class and seeded by ``split_seed``.
        split_seed: seeds every choice of samples, and the synthetic images.
        max_train_samples: at most this many training samples (stratified, seeded), applied
            after ``train_fraction``; None keeps them all.
        train_fraction: the share of the training samples left after the hold-out that is
            kept, in (0, 1] (stratified, seeded).
        max_eval_samples: at most this many validation and this many test samples
            (stratified, seeded); None keeps them all.
        image_size: the image size; only ImageNet's can change (default 224), the other
            datasets accept their own size or None.
        synthetic_shape: ``(C, H, W)`` of the synthetic images.
        synthetic_classes: the number of synthetic classes.
        synthetic_samples: the number of synthetic training images (and a quarter as many
            test images).

    Returns:
        The dataset's :class:`Splits`, with the training set indices of the train and
        validation splits.

    Raises:
        ValueError: an argument out of range, data files that are corrupt, or no training
            sample left.
        FileNotFoundError: the data is not there; the message lists where it looked.

    >>> splits = load_splits("synthetic", val_fraction=0.25, synthetic_samples=200)
    >>> len(splits.train), len(splits.val), len(splits.test), splits.info.num_classes
    (150, 50, 50, 10)
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
        keep = stratified_subset(labels[train_idx], n_train, [split_seed, TAG_TRAIN_SUBSET])
        train_idx = train_idx[keep]
    test_idx = np.arange(len(_labels(test)), dtype=np.int64)
    if max_eval_samples is not None:
        val_idx = val_idx[
            stratified_subset(labels[val_idx], max_eval_samples, [split_seed, TAG_VAL_SUBSET])
        ]
        test_idx = stratified_subset(_labels(test), max_eval_samples, [split_seed, TAG_TEST_SUBSET])

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


def load_dataset(config: DatasetConfig) -> Splits:
    """The splits a trial's ``dataset`` section asks for: :func:`load_splits` with its settings.

    >>> from sd_tune.config import DatasetConfig
    >>> splits = load_dataset(DatasetConfig(name="synthetic", max_train_samples=100))
    >>> len(splits.train), splits.info.name
    (100, 'synthetic')
    """
    return load_splits(
        config.name,
        root=config.root,
        download=config.download,
        val_fraction=config.val_fraction,
        split_seed=config.split_seed,
        max_train_samples=config.max_train_samples,
        train_fraction=config.train_fraction,
        max_eval_samples=config.max_eval_samples,
        image_size=config.image_size,
    )
