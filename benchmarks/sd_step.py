"""Training-step time of stochastic depth, as a ratio to the plain model measured in the same run.

Times full steps (forward, backward, SGD) of every configuration, interleaved round by round
in one process so that machine noise hits all of them alike, and prints each configuration's
median step time divided by the plain model's. Writes the numbers as JSON too.

    python benchmarks/sd_step.py          # ResNet-50 64x64 b32, cifar_resnet110 32x32 b64
    python benchmarks/sd_step.py --models resnet50 --rounds 10 --out /tmp/sd_step.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from sd_tune import apply_stochastic_depth, build_model

# name -> (arch, image size, batch size)
MODELS = {"resnet50": ("resnet50", 64, 32), "cifar_resnet110": ("cifar_resnet110", 32, 64),
          "resnet50_128": ("resnet50", 128, 32)}
DEFAULT_MODELS = ["resnet50", "cifar_resnet110"]
# name -> apply_stochastic_depth keyword arguments (None: the plain model)
CONFIGS: dict[str, dict | None] = {
    "plain": None,
    "sample_mask_0.1": dict(stochastic_method="sample", sample_impl="mask", drop_rate=0.1),
    "sample_mask_0.5": dict(stochastic_method="sample", sample_impl="mask", drop_rate=0.5),
    "sample_subset_0.5": dict(stochastic_method="sample", sample_impl="subset", drop_rate=0.5),
    "block_0.5": dict(stochastic_method="block", drop_rate=0.5),
}
TARGETS = {"sample_mask_0.1": 1.02, "sample_subset_0.5": 0.85, "block_0.5": 0.80}


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        return time.perf_counter() - start

    return step


def bench_model(name: str, rounds: int, warmup: int, steps_per_round: int) -> dict:
    arch, size, batch = MODELS[name]
    torch.manual_seed(0)
    base = build_model(arch, num_classes=10)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    steps = {}
    for cfg, kwargs in CONFIGS.items():
        model = copy.deepcopy(base)
        if kwargs is not None:
            apply_stochastic_depth(model, "auto", drop_distribution="linear", **kwargs)
        steps[cfg] = make_step(model.train(), x, y)
    times: dict[str, list[float]] = {cfg: [] for cfg in CONFIGS}
    for r in range(warmup + rounds):
        for cfg, step in steps.items():
            t = [step() for _ in range(steps_per_round)]
            if r >= warmup:
                times[cfg].extend(t)
        print(f"  {name}: round {r + 1}/{warmup + rounds}", flush=True)
    plain = statistics.median(times["plain"])
    result = {"arch": arch, "image_size": size, "batch_size": batch, "configs": {}}
    for cfg, t in times.items():
        med = statistics.median(t)
        result["configs"][cfg] = {"median_s": med, "ratio": med / plain, "n": len(t)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS),
                        help="default: resnet50 cifar_resnet110 (resnet50_128: ResNet-50 at "
                             "128x128, where layer3/4 convs are less weight-bound)")
    parser.add_argument("--rounds", type=int, default=12, help="measured rounds (default 12)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds (default 2)")
    parser.add_argument("--steps-per-round", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/sd_step.json"))
    args = parser.parse_args()

    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "targets": TARGETS,
        "models": {},
    }
    for name in args.models:
        report["models"][name] = bench_model(name, args.rounds, args.warmup, args.steps_per_round)
    print(f"\n{'model':<16} {'configuration':<20} {'median step':>12} {'ratio':>7} {'target':>7}")
    for name, res in report["models"].items():
        for cfg, r in res["configs"].items():
            target = f"<={TARGETS[cfg]:.2f}" if cfg in TARGETS and name == "resnet50" else ""
            print(f"{name:<16} {cfg:<20} {r['median_s'] * 1000:>10.1f}ms {r['ratio']:>7.3f} "
                  f"{target:>7}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
