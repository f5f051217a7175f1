"""sd_tune.data.device_decode: ImageNet batches decoded on the training device, run here on
the CPU (the same code that decodes with nvJPEG on a GPU: torchvision's decode_jpeg with a list
of images) over small JPEGs the tests write, with the odd files ImageNet holds (grayscale, CMYK,
progressive, a PNG named .JPEG)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sd_tune.data import TorchLoader, load_splits, make_loaders
from sd_tune.data.device_decode import (
    DeviceDecodeLoader,
    EncodedImages,
    crop_params,
    decode_on,
    eval_view,
    jpeg_header,
)


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colour field with grain (JPEG-friendly, like a photo)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    arr = np.asarray(small.resize((w, h), Image.BICUBIC)).astype(np.int16)
    return (arr + rng.integers(-8, 8, arr.shape)).clip(0, 255).astype(np.uint8)


def jpeg_bytes(arr: np.ndarray, mode: str = "RGB", **save: object) -> bytes:
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, **save)
    return buf.getvalue()


KINDS = ("rgb", "gray", "cmyk", "progressive", "png")


def write_folder(root: Path, classes: int = 2, per_class: int = 5) -> None:
    """train/ and val/ with one class folder per class; images of different sizes, each kind
    of file ImageNet has, all named .JPEG."""
    k = 0
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = photo(40 + 7 * (k % 5), 48 + 5 * (k % 3), k)
                kind = KINDS[k % len(KINDS)]
                if kind == "png":
                    buf = io.BytesIO()
                    Image.fromarray(arr).save(buf, "PNG")
                    data = buf.getvalue()
                else:
                    data = jpeg_bytes(
                        arr,
                        {"gray": "L", "cmyk": "CMYK"}.get(kind, "RGB"),
                        progressive=kind == "progressive",
                    )
                (d / f"img_{i}.JPEG").write_bytes(data)
                k += 1


def test_jpeg_header_reads_size_and_channels() -> None:
    arr = photo(30, 44, 0)
    assert jpeg_header(jpeg_bytes(arr)) == (30, 44, 3)
    assert jpeg_header(jpeg_bytes(arr, "L")) == (30, 44, 1)
    assert jpeg_header(jpeg_bytes(arr, "CMYK")) == (30, 44, 4)
    assert jpeg_header(jpeg_bytes(arr, progressive=True)) == (30, 44, 3)
    assert jpeg_header(jpeg_bytes(arr)[:4]) is None
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    assert jpeg_header(buf.getvalue()) is None


def test_encoded_images_send_jpeg_bytes_and_decode_the_rest(tmp_path: Path) -> None:
    write_folder(tmp_path, classes=1, per_class=5)
    files = sorted((tmp_path / "train" / "n00000000").iterdir())
    items = [EncodedImages([(str(f), 0)])[0] for f in files]
    kinds = [KINDS[i] for i in range(5)]
    for (data, _, is_jpeg), kind in zip(items, kinds):
        if kind in ("cmyk", "png"):
            assert not is_jpeg and data.dtype == torch.uint8 and data.shape[0] == 3
        else:
            assert is_jpeg and data.dim() == 1
    # the device decoder: one batched call; a file it refuses (here: a PNG) goes to PIL
    png = torch.frombuffer(bytearray(files[4].read_bytes()), dtype=torch.uint8)
    decoded = decode_on(torch.device("cpu"), [items[0][0], png, items[1][0]])
    assert [tuple(d.shape) for d in decoded] == [(3, 40, 48), (3, 68, 53), (3, 47, 53)]
    assert all(d.dtype == torch.uint8 for d in decoded)


def test_crop_params_follow_random_resized_crop() -> None:
    """Within the image, and distributed as torchvision's own RandomResizedCrop draws."""
    from torchvision.transforms import RandomResizedCrop

    gen = torch.Generator().manual_seed(0)
    ours, theirs = [], []
    torch.manual_seed(0)
    image = torch.zeros(1, 60, 80)
    for _ in range(3000):
        top, left, h, w = crop_params(60, 80, gen)
        assert top >= 0 and top + h <= 60 and left >= 0 and left + w <= 80 and h > 0 and w > 0
        ours.append(h * w / (60 * 80))
        _, _, h2, w2 = RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))
        theirs.append(h2 * w2 / (60 * 80))
    assert abs(np.mean(ours) - np.mean(theirs)) < 0.02
    assert abs(np.quantile(ours, 0.9) - np.quantile(theirs, 0.9)) < 0.04
    assert min(ours) < 0.1 and max(ours) == 1.0
    # a very wide image falls back to the centre crop at ratio 4/3
    assert crop_params(10, 1000, torch.Generator().manual_seed(0)) == (0, 493, 10, 13)


def test_eval_view_matches_pil(tmp_path: Path) -> None:
    """Resize + centre crop on float pixels against torchvision's PIL pipeline."""
    from torchvision import transforms as T

    arr = photo(75, 100, 3)
    pil = T.Compose([T.Resize(73), T.CenterCrop(64), T.PILToTensor()])(Image.fromarray(arr))
    ours = eval_view(torch.from_numpy(arr).permute(2, 0, 1).contiguous(), 64)[0]
    assert ours.shape == pil.shape == (3, 64, 64)
    assert (ours - pil.float()).abs().mean() < 1.5  # of 255: rounding of PIL's 8-bit steps


def test_device_loaders_on_cpu(tmp_path: Path) -> None:
    write_folder(tmp_path)
    splits = load_splits("imagenet", root=tmp_path, image_size=32, val_fraction=0.2)
    train, val, test = make_loaders(
        splits, batch_size=4, decode="device", num_workers=1, channels_last=True
    )
    assert all(isinstance(x, DeviceDecodeLoader) for x in (train, val, test))
    assert len(train) == 2 and train.num_samples == 8 and test.num_samples == 10
    batches = list(train)
    x, y = batches[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(x).all() and float(x.min()) > -2.2 and float(x.max()) < 2.7
    # the same epoch gives the same batches; another epoch other crops and order
    again = list(train)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    train.set_epoch(1)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, list(train)))
    # evaluation: every test image once, in order, close to what the PIL path gives
    pil = make_loaders(splits, batch_size=4, decode="pil", num_workers=0)[2]
    assert isinstance(pil, TorchLoader)
    ours = torch.cat([xb for xb, _ in test])
    theirs = torch.cat([xb for xb, _ in pil])
    assert [int(v) for _, yb in test for v in yb] == [0] * 5 + [1] * 5
    assert ours.shape == theirs.shape == (10, 3, 32, 32)
    assert (ours - theirs).abs().mean() < 0.015  # normalised units (1/255 / std ~ 0.017)


def test_two_ranks_share_the_data(tmp_path: Path) -> None:
    write_folder(tmp_path)
    splits = load_splits("imagenet", root=tmp_path, image_size=24, val_fraction=0.2)
    ranks = [
        make_loaders(splits, batch_size=2, decode="device", rank=r, world_size=2, num_workers=0)
        for r in (0, 1)
    ]
    assert len(ranks[0][0]) == len(ranks[1][0]) == 2
    seen = sorted(i for r in ranks for i in r[2].sampler)
    assert seen == list(range(10))


def test_decoder_choice(tmp_path: Path) -> None:
    write_folder(tmp_path, per_class=3)
    splits = load_splits("imagenet", root=tmp_path, image_size=24, val_fraction=0.3)
    auto = make_loaders(splits, batch_size=2, num_workers=0)  # CPU: PIL
    assert all(isinstance(x, TorchLoader) for x in auto)
    with pytest.raises(
        ValueError, match=re.escape("`decode` must be one of auto, pil, device, but got 'nvjpeg'")
    ):
        make_loaders(splits, batch_size=2, num_workers=0, decode="nvjpeg")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)")
def test_device_loader_on_cuda(tmp_path: Path) -> None:
    write_folder(tmp_path)
    splits = load_splits("imagenet", root=tmp_path, image_size=32, val_fraction=0.2)
    train, _, test = make_loaders(splits, batch_size=4, device="cuda", num_workers=1)
    assert isinstance(train, DeviceDecodeLoader)
    x, y = next(iter(train))
    assert x.is_cuda and y.is_cuda and x.shape == (4, 3, 32, 32)
    cpu = make_loaders(splits, batch_size=4, decode="device", num_workers=0)[2]
    on_gpu = torch.cat([xb.cpu() for xb, _ in test])
    on_cpu = torch.cat([xb for xb, _ in cpu])
    assert (on_gpu - on_cpu).abs().mean() < 0.05  # nvJPEG's IDCT differs from libjpeg's
