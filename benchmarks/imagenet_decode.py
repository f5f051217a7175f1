"""How fast one CPU core runs sd-tune's ImageNet training transform (PIL JPEG decode,
RandomResizedCrop(224), flip, ToTensor, normalise): the rate each data-loader process gives,
for the cost estimate in the README. No ImageNet here, so the images are synthetic 500x375
JPEGs (ImageNet's typical size) at quality 90, about 90 KB each (ImageNet's average is ~110 KB).

Prints images/s per core for a few rounds, and the throughput ``--loaders`` processes would
give next to a GPU rate (NVIDIA's published 16,621 images/s for ResNet-50 on 8 x A100).

    python benchmarks/imagenet_decode.py
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import torch
from PIL import Image

from sd_tune.data import _imagenet_transforms

GPU_RATE = 16621.0  # ResNet-50, 8 x A100 80GB, AMP + DALI (NVIDIA DeepLearningExamples)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per round")
    parser.add_argument("--loaders", type=int, default=64,
                        help="loader processes of one trial (imagenet.yaml: 8 x 8)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = synthetic_jpegs(32)
    print(f"mean JPEG size {sum(map(len, files)) / len(files) / 1024:.0f} KB")
    transform, _ = _imagenet_transforms(224)
    rates = []
    for r in range(args.rounds):
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < args.seconds:
            for data in files:
                transform(Image.open(io.BytesIO(data)).convert("RGB"))
                n += 1
        rates.append(n / (time.perf_counter() - start))
        print(f"round {r}: {rates[-1]:.0f} images/s on one core")
    rate = statistics.median(rates)
    print(f"median {rate:.0f} images/s per core; {args.loaders} loaders on as many cores: "
          f"{rate * args.loaders:.0f} images/s = {rate * args.loaders / GPU_RATE:.2f} x the "
          f"published 8 x A100 ResNet-50 rate ({GPU_RATE:.0f} images/s)")


if __name__ == "__main__":
    main()
