"""How fast one CPU core prepares ImageNet training images, three ways, interleaved in one
process (same images, same load):

- ``pil``: sd-tune's PIL path (decode, RandomResizedCrop(224), flip, ToTensor, normalise), the
  work of one DataLoader process on a CPU trial, and before sd_tune.data.device_decode on GPU
  trials too;
- ``loader``: what a DataLoader process still does when the batch is decoded on the GPU
  (sd_tune.data.device_decode.EncodedImages: read the file, here from the page cache, parse
  the JPEG header, hand over a tensor);
- ``cpu-decode``: sd_tune.data.device_decode's device path run with the CPU as the device
  (decode_jpeg on a list of 32 images with libjpeg-turbo, the crop and resize with torch ops).
  On a GPU the same call decodes with nvJPEG; this machine has none, so that rate is not
  measured here.

No ImageNet here, so the images are synthetic 500x375 JPEGs (ImageNet's typical size) at
quality 90, about 90 KB each (ImageNet's average is ~110 KB). Prints images/s per core for
each round and the cores one GPU at a given rate needs for each path.

    python benchmarks/imagenet_decode.py [--gpu-rate 6800]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sd_tune.data.device_decode import EncodedImages, decode_on, train_view
from sd_tune.data.formats import _imagenet_transforms

GPU_RATE = 6800.0  # compiled ResNet-50 on one H200, as measured for the issue (images/s)


def synthetic_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs: smooth colour fields plus grain, 500x375."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = Image.fromarray(rng.integers(0, 255, (47, 63, 3), dtype=np.uint8))
        arr = np.asarray(base.resize((500, 375), Image.BICUBIC)).astype(np.int16)
        arr = (arr + rng.integers(-20, 20, arr.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def paths(files: list[bytes], folder: Path) -> dict[str, Callable[[], int]]:
    """Each path as a function that processes every file once and returns the count."""
    transform, _ = _imagenet_transforms(224)
    names = []
    for i, data in enumerate(files):
        (folder / f"{i}.JPEG").write_bytes(data)
        names.append((str(folder / f"{i}.JPEG"), 0))
    encoded = EncodedImages(names)
    gen = torch.Generator().manual_seed(0)
    cpu = torch.device("cpu")

    def pil() -> int:
        for data in files:
            transform(Image.open(io.BytesIO(data)).convert("RGB"))
        return len(files)

    def loader() -> int:
        for i in range(len(encoded)):
            encoded[i]
        return len(files)

    def cpu_decode() -> int:
        datas = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in files]
        images = decode_on(cpu, datas)
        torch.cat([train_view(img, 224, gen) for img in images])
        return len(files)

    return {"pil": pil, "loader": loader, "cpu-decode": cpu_decode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per path and round")
    parser.add_argument(
        "--gpu-rate",
        type=float,
        default=GPU_RATE,
        help="images/s of one GPU, for the cores it needs (default 6800)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = synthetic_jpegs(32)
    print(f"mean JPEG size {sum(map(len, files)) / len(files) / 1024:.0f} KB, one thread")
    tmp = tempfile.TemporaryDirectory(prefix="imagenet-decode-")
    fns = paths(files, Path(tmp.name))
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(args.rounds):
        for name, fn in fns.items():
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds:
                n += fn()
            rates[name].append(n / (time.perf_counter() - start))
        print(
            f"round {r}: "
            + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items())
            + " images/s per core"
        )
    for name, values in rates.items():
        rate = statistics.median(values)
        print(
            f"{name:>10}: median {rate:8.0f} images/s per core; one GPU at "
            f"{args.gpu_rate:.0f} images/s needs {args.gpu_rate / rate:6.2f} cores"
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
