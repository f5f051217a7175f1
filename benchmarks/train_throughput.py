"""Training throughput of one trial, against the bare training step of the same model and data.

On the CPU (the default) four ways: the bare step (forward, backward, SGD on one batch, again
and again), sd-tune's training loop in a plain process (no Ray, no DDP), sd-tune's Ray Train
trial with 1 worker, and with 2 workers. With ``--device cuda`` (no Ray needed: it runs from a
bare copy of the repository) the loop against the bare step for cifar_resnet20 on
Fashion-MNIST at batch 128 and a synthetic ResNet-50 at 224 px, batch 256, both with the GPU
settings of a trial (bf16, channels_last, ``train.compile: auto``).

Images/s is taken from the epochs after the first (warm caches, started workers, compiled
graphs), so it is the throughput "once started"; Ray's start-up cost per trial (worker group,
process group, data loading in the workers: everything in ``fit()`` outside the trial's own
wall clock) is reported separately. Prints ratios and writes JSON.

    python benchmarks/train_throughput.py                      # CPU: Fashion-MNIST, cifar_resnet20
    python benchmarks/train_throughput.py --dataset synthetic --epochs 3
    python benchmarks/train_throughput.py --device cuda        # GPU: loop vs bare step
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a bare copy of the repo

from sd_tune.config import TrialConfig, space_from_dict
from sd_tune.data import Splits, load_splits


def trial_config(args: argparse.Namespace, workers: int, cpus: float):
    return space_from_dict(
        {
            "dataset": {
                "name": args.dataset,
                "max_train_samples": args.samples,
                "max_eval_samples": 1000,
            },
            "model": {"family": "cifar_resnet", "depth": args.depth},
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch_size // workers,
                "warmup_epochs": 0.5,
            },
            "stochastic_depth": {"method": "sample", "drop_rate": 0.1},
            "resources": {"num_workers": workers, "cpus_per_worker": cpus},
        }
    ).trial


def steady_rate(history: list[dict[str, Any]]) -> float:
    later = history[1:] or history
    return statistics.median(m["images_per_s"] for m in later)


def run_plain(
    cfg: TrialConfig, splits: Splits | None = None, device: str | None = None
) -> dict[str, Any]:
    from sd_tune.train import run_trial

    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    run_trial(
        cfg,
        lambda m, ckpt: history.append(dict(m)),
        log=lambda line: None,
        splits=splits,
        device=device,
    )
    total = time.perf_counter() - start
    return {
        "images_per_s": steady_rate(history),
        "total_s": total,
        "trial_wall_s": history[-1]["wall_time_s"],
        "startup_s": 0.0,
        "compile_time_s": history[-1].get("compile_time_s", 0.0),
    }


def run_bare(
    cfg: TrialConfig, splits: Splits | None = None, device: str | None = None, steps: int = 30
) -> dict[str, Any]:
    """The same model, optimizer, batch size and settings as the loop (sd_tune.train's own
    setup), stepping on one batch that is already on the device: the loop's ceiling."""
    import torch.nn.functional as F

    from sd_tune.train import default_device, setup_trial
    from sd_tune.train.runtime import _sync

    trial = setup_trial(
        cfg, device=torch.device(device) if device else default_device(), splits=splits
    )
    x, y = next(iter(trial.train_loader))
    trial.model.train()

    def step() -> None:
        with torch.autocast(trial.device.type, dtype=torch.bfloat16, enabled=trial.bf16):
            logits = trial.train_forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.train.label_smoothing)
        trial.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trial.optimizer.step()

    for _ in range(5):  # warm up (and compile)
        step()
    _sync(trial.device)  # the loop's own wait for the device, as train_one_epoch times it
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(trial.device)
    return {"images_per_s": steps * len(y) / (time.perf_counter() - start)}


def run_ray(args: argparse.Namespace, workers: int, storage: str) -> dict[str, Any]:
    from sd_tune import ray_train

    cpus = (os.cpu_count() or 2) / workers
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    ray_train.fit_trial(
        trial_config(args, workers, cpus),
        storage=storage,
        name=f"throughput_{workers}w_{time.time_ns()}",
        emit=history.append,
    )
    total = time.perf_counter() - start
    return {
        "images_per_s": steady_rate(history),
        "total_s": total,
        "trial_wall_s": history[-1]["wall_time_s"],
        "startup_s": total - history[-1]["wall_time_s"],
    }


def gpu_cases(args: argparse.Namespace) -> dict[str, tuple[TrialConfig, Splits | None]]:
    """The two GPU settings: cifar_resnet20 on Fashion-MNIST (b128), ResNet-50 224 px (b256)."""
    small = trial_config(args, 1, 1.0)
    small.train.batch_size = 128
    big = trial_config(args, 1, 1.0)
    big.model.family, big.model.depth = "resnet", 50
    big.train.batch_size = 256
    splits = load_splits(
        "synthetic",
        synthetic_shape=(3, 224, 224),
        synthetic_classes=1000,
        synthetic_samples=256 * 12,
        max_eval_samples=256,
    )
    return {"cifar_resnet20_fmnist": (small, None), "resnet50_224_synthetic": (big, splits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cpu: bare step, loop and Ray trials; cuda: loop vs bare step",
    )
    parser.add_argument(
        "--dataset", default="fashion_mnist", choices=["fashion_mnist", "synthetic"]
    )
    parser.add_argument("--depth", type=int, default=20, help="cifar_resnet depth (default 20)")
    parser.add_argument("--samples", type=int, default=6144, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch size")
    parser.add_argument(
        "--out", type=Path, default=Path("results/benchmarks/train_throughput.json")
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; leave --device out")

    results: dict[str, Any] = {}
    if args.device == "cuda":
        for name, (cfg, splits) in gpu_cases(args).items():
            print(f"{name}: bare step, then the loop ...", flush=True)
            results[f"{name}_bare"] = run_bare(cfg, splits, "cuda")
            results[f"{name}_loop"] = run_plain(cfg, splits, "cuda")
        bases = {k: results[f"{k.rsplit('_', 1)[0]}_bare"]["images_per_s"] for k in results}
        target = "loop ratio to the bare step >= 0.95"
    else:
        from sd_tune import cluster

        cfg = trial_config(args, 1, os.cpu_count() or 1)
        print("bare step, then the plain PyTorch loop ...", flush=True)
        results["bare"] = run_bare(cfg)
        results["plain"] = run_plain(cfg)
        cluster.init_ray()
        with tempfile.TemporaryDirectory() as storage:
            for workers in (1, 2):
                print(f"Ray Train trial, {workers} worker(s) ...", flush=True)
                results[f"ray_{workers}w"] = run_ray(args, workers, storage)
        bases = {
            k: results["bare" if k in ("bare", "plain") else "plain"]["images_per_s"]
            for k in results
        }
        target = (
            "plain: ratio to the bare step (the loop's own cost); ray_*: ratio to plain, "
            "ray_1w >= 0.95"
        )
    print(f"\n{'way':<30} {'images/s':>9} {'ratio':>6} {'start-up s':>11} {'total s':>8}")
    for way, r in results.items():
        r["ratio"] = r["images_per_s"] / bases[way]
        print(
            f"{way:<30} {r['images_per_s']:>9.0f} {r['ratio']:>6.3f} "
            f"{r.get('startup_s', 0.0):>11.1f} {r.get('total_s', 0.0):>8.1f}"
        )
    print(f"target: {target}")
    machine = {"platform": platform.platform(), "torch": torch.__version__, "cpus": os.cpu_count()}
    if args.device == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
    report = {
        "machine": machine,
        "settings": vars(args) | {"out": str(args.out)},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
