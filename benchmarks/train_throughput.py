"""Training throughput of one trial three ways: a plain PyTorch process (sd-tune's training loop,
no Ray, no DDP), sd-tune's Ray Train trial with 1 worker, and with 2 workers.

Images/s is taken from the epochs after the first (warm caches, started workers), so it is the
throughput "once started"; Ray's start-up cost per trial (worker group, process group, data
loading in the workers: everything in `fit()` outside the trial's own wall clock) is reported
separately. Prints ratios against the plain loop of the same run and writes JSON.

    python benchmarks/train_throughput.py                      # Fashion-MNIST, cifar_resnet20
    python benchmarks/train_throughput.py --dataset synthetic --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sd_tune.config import space_from_dict


def trial_config(args: argparse.Namespace, workers: int, cpus: float):
    return space_from_dict({
        "dataset": {"name": args.dataset, "max_train_samples": args.samples,
                    "max_eval_samples": 1000},
        "model": {"family": "cifar_resnet", "depth": args.depth},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size // workers,
                  "warmup_epochs": 0.5},
        "stochastic_depth": {"method": "sample", "drop_rate": 0.1},
        "resources": {"num_workers": workers, "cpus_per_worker": cpus},
    }).trial


def steady_rate(history: list[dict[str, Any]]) -> float:
    later = history[1:] or history
    return statistics.median(m["images_per_s"] for m in later)


def run_plain(args: argparse.Namespace) -> dict[str, Any]:
    from sd_tune.train import run_trial

    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    run_trial(trial_config(args, 1, os.cpu_count() or 1),
              lambda m, ckpt: history.append(dict(m)), log=lambda line: None)
    total = time.perf_counter() - start
    return {"images_per_s": steady_rate(history), "total_s": total,
            "trial_wall_s": history[-1]["wall_time_s"], "startup_s": 0.0}


def run_ray(args: argparse.Namespace, workers: int, storage: str) -> dict[str, Any]:
    from sd_tune import ray_train

    cpus = (os.cpu_count() or 2) / workers
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    ray_train.fit_trial(trial_config(args, workers, cpus), storage=storage,
                        name=f"throughput_{workers}w_{time.time_ns()}", emit=history.append)
    total = time.perf_counter() - start
    return {"images_per_s": steady_rate(history), "total_s": total,
            "trial_wall_s": history[-1]["wall_time_s"],
            "startup_s": total - history[-1]["wall_time_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist",
                        choices=["fashion_mnist", "synthetic"])
    parser.add_argument("--depth", type=int, default=20, help="cifar_resnet depth (default 20)")
    parser.add_argument("--samples", type=int, default=6144, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch size")
    parser.add_argument("--out", type=Path,
                        default=Path("results/benchmarks/train_throughput.json"))
    args = parser.parse_args()

    from sd_tune import ray_train

    results: dict[str, Any] = {}
    print("plain PyTorch loop ...", flush=True)
    results["plain"] = run_plain(args)
    ray_train.init_ray()
    with tempfile.TemporaryDirectory() as storage:
        for workers in (1, 2):
            print(f"Ray Train trial, {workers} worker(s) ...", flush=True)
            results[f"ray_{workers}w"] = run_ray(args, workers, storage)
    base = results["plain"]["images_per_s"]
    print(f"\n{'way':<10} {'images/s':>9} {'ratio':>6} {'start-up s':>11} {'total s':>8}")
    for way, r in results.items():
        r["ratio"] = r["images_per_s"] / base
        print(f"{way:<10} {r['images_per_s']:>9.0f} {r['ratio']:>6.3f} {r['startup_s']:>11.1f} "
              f"{r['total_s']:>8.1f}")
    print("target: ray_1w ratio >= 0.95")
    report = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "cpus": os.cpu_count()},
              "settings": vars(args) | {"out": str(args.out)}, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
