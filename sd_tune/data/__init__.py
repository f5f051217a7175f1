"""Datasets and loaders: Fashion-MNIST, CIFAR-10/100, an ImageNet folder and synthetic images.

One module per step of the data's way into a trial:

- ``formats``: how each dataset is stored and read (IDX, CIFAR pickles, ImageFolder,
  synthetic), :class:`DatasetInfo` and :class:`InMemorySplit`;
- ``splits``: the seeded, stratified train / validation / test split (:func:`load_splits`,
  :func:`load_dataset`);
- ``samplers``: which samples each DDP rank takes (:class:`ShardSampler`) and the seeds;
- ``loaders``: batches on the device (:class:`InMemoryLoader`, :class:`TorchLoader`,
  :func:`make_loaders`);
- ``device_decode``: ImageNet JPEGs decoded on the training device (nvJPEG on a GPU).

Small datasets live in memory as uint8 ``N x C x H x W`` tensors and are batched, augmented
and normalised directly on the target device. ImageNet is decoded on a CUDA device
(``device_decode``: nvJPEG, batched) and with PIL in DataLoader workers on a CPU. Every loader
yields ``(x, y)`` on the device, x float32 and normalised, y int64, and shards every epoch
across DDP ranks. The validation split is held out of the training set; the test split is the
real test set.

This package uses only torch, torchvision, PIL, numpy and sd-tune's vocabulary, never Ray.
"""

from __future__ import annotations

from sd_tune.data.formats import (
    DATA_ENV,
    DEBIAN_FASHION_MNIST,
    FASHION_MNIST_FILES,
    FASHION_MNIST_SYSTEM_DIRS,
    DatasetInfo,
    ImageFolderSubset,
    InMemorySplit,
    Split,
    dataset_info,
    find_fashion_mnist,
    read_idx,
)
from sd_tune.data.loaders import InMemoryLoader, Loader, TorchLoader, make_loaders
from sd_tune.data.samplers import ShardSampler
from sd_tune.data.splits import (
    Splits,
    load_dataset,
    load_splits,
    stratified_split,
    stratified_subset,
)
from sd_tune.vocab import DATASETS

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "DEBIAN_FASHION_MNIST",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_SYSTEM_DIRS",
    "DatasetInfo",
    "ImageFolderSubset",
    "InMemoryLoader",
    "InMemorySplit",
    "Loader",
    "ShardSampler",
    "Split",
    "Splits",
    "TorchLoader",
    "dataset_info",
    "find_fashion_mnist",
    "load_dataset",
    "load_splits",
    "make_loaders",
    "read_idx",
    "stratified_split",
    "stratified_subset",
]
