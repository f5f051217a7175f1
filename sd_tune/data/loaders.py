"""Loaders: batches ``(x, y)`` on the training device, sharded across DDP ranks every epoch.

In-memory splits are batched, augmented and normalised directly on the device
(:class:`InMemoryLoader`). ImageFolder splits (ImageNet) are decoded on a CUDA device
(:class:`sd_tune.data.device_decode.DeviceDecodeLoader`: nvJPEG, batched) and with PIL in
DataLoader workers on a CPU (:class:`TorchLoader`). Every loader yields x float32 and
normalised, y int64; :func:`make_loaders` picks them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sd_tune.data.device_decode import DeviceDecodeLoader, pick_decoder
from sd_tune.data.formats import DatasetInfo, ImageFolderSubset, InMemorySplit, normalization
from sd_tune.data.samplers import ShardSampler, rank_sampler
from sd_tune.data.splits import Splits
from sd_tune.seeds import seed_from


class Loader(Protocol):
    """What every loader offers: batches ``(x, y)`` on the device, sharded per rank."""

    num_samples: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


def _default_augmentation(info: DatasetInfo) -> tuple[int, bool]:
    """(crop padding, horizontal flip) used for training batches by default."""
    if info.name == "cifar10" or info.name == "cifar100":
        return 4, True
    if info.name == "fashion_mnist":
        return 2, True
    if info.name == "synthetic":
        return max(1, round(info.image_size / 8)), False
    return 0, False


class InMemoryLoader:
    """Batches an :class:`InMemorySplit` on ``device``, augmenting training batches there.

    Training (``train=True``): each epoch a permutation seeded with ``seed + epoch`` (the same
    on every rank) is cut to a multiple of ``world_size``; rank r takes every world_size-th
    index from r; the remainder and the last partial batch are dropped, so every rank gets
    ``len(self)`` batches. Augmentation (``crop_padding``, ``flip``) runs vectorised on the
    device, with offsets drawn from ``(seed, epoch, rank)``.

    Evaluation (``train=False``): rank r takes samples r, r + world_size, ... in order, no
    padding, last batch kept; the shards of all ranks cover every sample exactly once.

    >>> split = InMemorySplit(torch.zeros(10, 1, 8, 8, dtype=torch.uint8), torch.arange(10))
    >>> info = DatasetInfo("demo", 10, 1, 8, (0.0,), (1.0,))
    >>> loader = InMemoryLoader(split, info, batch_size=2, train=True, rank=1, world_size=2)
    >>> len(loader), next(iter(loader))[0].shape
    (2, torch.Size([2, 1, 8, 8]))
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
        if len(info.std) != channels or len(info.mean) != channels:
            raise ValueError(
                f"DatasetInfo mean/std must have one value per channel ({channels}), but got "
                f"{len(info.mean)} and {len(info.std)}"
            )
        self._scale, self._shift = normalization(info.mean, info.std, self.device)

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
            gen = torch.Generator().manual_seed(seed_from(self.seed, self.epoch, self.rank))
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


class TorchLoader:
    """A DataLoader over a Dataset split whose batches are moved to ``device``.

    Training uses a ``DistributedSampler`` (shuffle, ``seed``, drop_last) and drops the last
    partial batch; evaluation uses :class:`ShardSampler` (each sample once over all ranks).
    Augmentation is the dataset's own transform.

    >>> from torch.utils.data import TensorDataset
    >>> dataset = TensorDataset(torch.zeros(10, 3), torch.arange(10))
    >>> loader = TorchLoader(dataset, batch_size=4, train=False, num_workers=0)
    >>> [y.tolist() for _, y in loader]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
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
        self.sampler: DistributedSampler | ShardSampler = rank_sampler(
            dataset,  # type: ignore[arg-type]
            train=train,
            rank=rank,
            world_size=world_size,
            seed=seed,
        )
        self._pin = self.device.type == "cuda"
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=self._pin,
            drop_last=train,
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(seed_from(seed, rank)),
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
    """(train, val, test) loaders for this rank.

    In-memory splits get :class:`InMemoryLoader`; ImageFolder splits (ImageNet) get
    :class:`~sd_tune.data.device_decode.DeviceDecodeLoader` (the loader processes read bytes,
    the batch is decoded and augmented on ``device``: nvJPEG on a GPU) or :class:`TorchLoader`
    (PIL decoding and the split's transform in ``num_workers`` processes), as ``decode`` says.
    Eval shards are uneven in length across ranks: sum metrics per rank and all-reduce the
    sums.

    Args:
        splits: the dataset's splits, from :func:`load_splits`.
        batch_size: training batch size per rank; the last partial batch is dropped.
        device: where the batches are made and yielded.
        rank: this rank, in ``[0, world_size)``.
        world_size: the number of ranks the splits are sharded over.
        seed: seeds the training order (with the epoch) and the augmentation (with the epoch
            and the rank).
        augment: False turns the in-memory training augmentation off (crop and flip).
        num_workers: loader processes per rank for ImageFolder splits.
        channels_last: yield images in channels-last memory format.
        eval_batch_size: validation and test batch size per rank (default: ``batch_size``).
        crop_padding: in-memory training batches: zero padding of the random crop; None
            takes the dataset's (4 for CIFAR, 2 for Fashion-MNIST, H/8 for synthetic).
        flip: in-memory training batches: random horizontal flips; None takes the
            dataset's (CIFAR and Fashion-MNIST flip, synthetic does not).
        decode: ImageFolder splits: ``"device"`` decodes on ``device``, ``"pil"`` with PIL in
            the loader processes, ``"auto"`` the first on a CUDA device and the second on a
            CPU.

    Returns:
        The training, validation and test loaders of this rank.

    Raises:
        ValueError: an argument out of range, or no full training batch per rank.

    >>> from sd_tune.data import load_splits
    >>> splits = load_splits("synthetic", synthetic_samples=256)
    >>> train, val, test = make_loaders(splits, batch_size=32)
    >>> x, y = next(iter(train))
    >>> x.shape, y.dtype, len(train), len(val)
    (torch.Size([32, 3, 32, 32]), torch.int64, 7, 1)
    """
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
