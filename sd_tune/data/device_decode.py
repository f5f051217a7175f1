"""ImageNet input decoded on the training device: the DataLoader workers only read the files'
bytes, and the batch is decoded where the model runs (``torchvision.io.decode_jpeg`` with a
list of images: nvJPEG, batched, on a CUDA device; libjpeg-turbo on a CPU), then cropped,
resized, flipped and normalised there.

One GPU at the compiled ResNet-50 rate measured on an H200 (~6,800 images/s) needs about 16
cores of PIL decoding (``benchmarks/imagenet_decode.py``); here the loader processes only read
bytes and parse a JPEG header. The recipe is the PIL path's (``sd_tune.data.formats``):
RandomResizedCrop(size, scale (0.08, 1), ratio (3/4, 4/3)) and a horizontal flip for
training; resize of the short side to ``round(256 * size / 224)`` and a centre crop for
evaluation; bilinear resampling with antialiasing on float pixels (PIL works on 8-bit pixels,
so values differ by rounding).

Files that are not 1- or 3-channel JPEGs (ImageNet has a few CMYK JPEGs and a PNG named
.JPEG) are decoded with PIL in the loader process and sent as pixels; an image the device
decoder refuses is decoded on the CPU instead.

Imports only torch, torchvision, PIL and numpy.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sd_tune.data.formats import normalization
from sd_tune.data.samplers import ShardSampler, rank_sampler
from sd_tune.seeds import seed_from

DECODERS: tuple[str, ...] = ("auto", "pil", "device")

_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, channels) from a JPEG's start-of-frame marker, or None when ``data`` is
    not a JPEG (or its header is cut short).

    >>> import io; from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (40, 30)).save(buf, "JPEG")
    >>> jpeg_header(buf.getvalue()), jpeg_header(b"\\x89PNG\\r\\n")
    ((30, 40, 3), None)
    """
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF:
            if i + 10 > len(data):
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return height, width, data[i + 9]
        i += 2 + length
    return None


def _pil_pixels(data: bytes) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        array = np.asarray(img.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class EncodedImages(Dataset):
    """The files of ``samples`` (path, label) as read from disk: ``(bytes, label, True)`` for
    a 1- or 3-channel JPEG (a 1-D uint8 tensor, decoded later on the device), else
    ``(pixels, label, False)`` decoded here with PIL (uint8 RGB, C x H x W)."""

    def __init__(self, samples: Sequence[tuple[str, int]]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        path, target = self.samples[index]
        data = Path(path).read_bytes()
        header = jpeg_header(data)
        if header is not None and header[2] in (1, 3):
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), target, True
        return _pil_pixels(data), target, False


def collate_encoded(
    batch: list[tuple[torch.Tensor, int, bool]],
) -> tuple[list[torch.Tensor], list[bool], torch.Tensor]:
    """Keep the images as a list (each has its own size): (images, is_jpeg, labels).

    >>> batch = [(torch.zeros(5), 3, True), (torch.zeros(9), 1, True)]
    >>> images, is_jpeg, labels = collate_encoded(batch)
    >>> [len(i) for i in images], labels.tolist()
    ([5, 9], [3, 1])
    """
    return (
        [b[0] for b in batch],
        [b[2] for b in batch],
        torch.tensor([b[1] for b in batch], dtype=torch.int64),
    )


def decode_on(device: torch.device, datas: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Decode JPEG bytes (1-D uint8 CPU tensors) to RGB uint8 images on ``device``: one batched
    call; if the batch fails, image by image, and an image the device refuses on the CPU.

    >>> import io; from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (40, 30)).save(buf, "JPEG")
    >>> data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    >>> [tuple(img.shape) for img in decode_on(torch.device("cpu"), [data, data])]
    [(3, 30, 40), (3, 30, 40)]
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        try:
            out = decode_jpeg(list(datas), mode=ImageReadMode.RGB, device=device)
            return list(out)
        except RuntimeError:
            pass
        images = []
        for data in datas:
            try:
                images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                images.append(_pil_pixels(data.numpy().tobytes()).to(device))
        return images


def crop_params(
    height: int,
    width: int,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop: torchvision's RandomResizedCrop rule (ten
    tries at a random area and aspect ratio, else the centre crop within the ratio), drawn
    from ``gen``.

    >>> crop_params(100, 100, torch.Generator().manual_seed(0)) == crop_params(
    ...     100, 100, torch.Generator().manual_seed(0))
    True
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=gen).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 or float C x H x W -> float 1 x C x h x w in [0, 255], bilinear, antialiased."""
    return F.interpolate(
        img[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
    ).clamp_(0, 255)


def train_view(img: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """A random resized crop of ``img`` (C x H x W) to ``size`` x ``size``, flipped with
    probability 1/2; float 1 x C x size x size in [0, 255].

    >>> img = torch.zeros(3, 300, 400, dtype=torch.uint8)
    >>> tuple(train_view(img, 224, torch.Generator().manual_seed(0)).shape)
    (1, 3, 224, 224)
    """
    top, left, h, w = crop_params(img.shape[-2], img.shape[-1], gen)
    out = _resize(img[:, top : top + h, left : left + w], (size, size))
    if bool(torch.rand(1, generator=gen) < 0.5):
        out = out.flip(-1)
    return out


def eval_view(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side to ``round(256 * size / 224)`` (torchvision's Resize rule for the
    long side) and crop the centre ``size`` x ``size``; float 1 x C x size x size.

    >>> tuple(eval_view(torch.zeros(3, 300, 400, dtype=torch.uint8), 224).shape)
    (1, 3, 224, 224)
    """
    short = round(256 * size / 224)
    h, w = img.shape[-2], img.shape[-1]
    new = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    out = _resize(img, new)
    top = round((new[0] - size) / 2.0)
    left = round((new[1] - size) / 2.0)
    return out[..., top : top + size, left : left + size]


class DeviceDecodeLoader:
    """Batches of an ImageFolder split decoded and augmented on ``device`` (see the module
    docstring); the same sharding as ``sd_tune.data.loaders.TorchLoader``: training uses a
    ``DistributedSampler`` (shuffle with ``seed + epoch``, drop_last), evaluation each sample
    once over all ranks. Crops and flips are drawn from ``(seed, epoch, rank)``."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        *,
        batch_size: int,
        train: bool,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        num_workers: int = 8,
        channels_last: bool = False,
    ):
        self.device = torch.device(device)
        self.train = train
        self.image_size = image_size
        self.seed, self.rank, self.epoch = seed, rank, 0
        self.channels_last = channels_last
        dataset = EncodedImages(samples)
        self.sampler: DistributedSampler | ShardSampler = rank_sampler(
            dataset, train=train, rank=rank, world_size=world_size, seed=seed
        )
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate_encoded,
            drop_last=train,
            persistent_workers=num_workers > 0,
        )
        self.num_samples = len(self.loader) * batch_size if train else len(self.sampler)
        self._scale, self._shift = normalization(mean, std, self.device)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the training order and redraw the crops for ``epoch``."""
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def _images(self, items: list[torch.Tensor], is_jpeg: list[bool]) -> list[torch.Tensor]:
        jpegs = [d for d, j in zip(items, is_jpeg) if j]
        decoded = iter(decode_on(self.device, jpegs))
        return [next(decoded) if j else d.to(self.device) for d, j in zip(items, is_jpeg)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed_from(self.seed, self.epoch, self.rank))
        size = self.image_size
        for items, is_jpeg, y in self.loader:
            images = self._images(items, is_jpeg)
            views = [
                train_view(img, size, gen) if self.train else eval_view(img, size) for img in images
            ]
            x = torch.cat(views).mul_(self._scale).add_(self._shift)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device)


def pick_decoder(decode: str, device: torch.device) -> str:
    """``"device"`` or ``"pil"``: ``auto`` decodes on a CUDA device and with PIL on a CPU.

    >>> pick_decoder("auto", torch.device("cpu")), pick_decoder("auto", torch.device("cuda"))
    ('pil', 'device')
    """
    if decode not in DECODERS:
        raise ValueError(f"`decode` must be one of {', '.join(DECODERS)}, but got {decode!r}")
    if decode == "auto":
        return "device" if device.type == "cuda" else "pil"
    return decode
