"""Training-step time of stochastic depth, as a ratio to the plain model measured in the same run.

Times full steps (forward, backward, SGD) of every configuration, interleaved round by round
in one process so that machine noise hits all of them alike, and prints each configuration's
median step time divided by the plain model's, the same for the (10% trimmed) mean, which is
what a random drop costs on average, images/s and (on CUDA) peak memory.
Every run includes the anchor: torchvision's ``ops.stochastic_depth`` (row mode, linear rates)
patched into the same blocks, which is what timm and Composer do. Writes the numbers as JSON.

One command covers both machines: ``--preset auto`` (the default) takes the GPU settings where
CUDA is available, else the CPU ones. Needs only torch, torchvision and ``sd_tune/``.

    python benchmarks/sd_step.py                       # CPU: ResNet-50 64px b32, cifar_resnet110
    python benchmarks/sd_step.py --preset gpu          # ResNet-50 224px b256 bf16 channels_last,
                                                       # eager then torch.compile; CIFAR ResNets
    python benchmarks/sd_step.py --models resnet50 --configs plain block_0.5 --floor
    python benchmarks/sd_step.py --device cuda --bf16 --channels-last --compile \
        --models resnet50_224

``--floor`` adds what ``block`` could reach: the step time with each block dropped alone,
from which the expected time of ``block`` at its rates follows (dropping is additive).
On CUDA the ``*_torchops`` configurations run the fused ops' plain-torch fallback instead of
the Triton kernels, for an A/B in the same run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import MethodType
from typing import Any

import torch
import torchvision
from torch import nn

# Run from a bare copy of the repository; SD_STEP_ROOT points at another checkout of sd_tune (an
# older commit, for a before/after through this same harness).
sys.path.insert(0, os.environ.get("SD_STEP_ROOT") or str(Path(__file__).resolve().parents[1]))

from sd_tune import apply_stochastic_depth, build_model, drop_rates, stochastic_blocks
from sd_tune.models import CifarBasicBlock

try:
    from sd_tune import residual_kernels
except ImportError:  # an sd_tune from before the fused kernels
    residual_kernels = None

# name -> (arch, image size, batch size, input channels)
MODELS: dict[str, tuple[str, int, int, int]] = {
    "resnet50": ("resnet50", 64, 32, 3),
    "resnet50_128": ("resnet50", 128, 32, 3),
    "resnet50_224": ("resnet50", 224, 256, 3),
    "cifar_resnet110": ("cifar_resnet110", 32, 64, 3),
    "cifar_resnet110_b128": ("cifar_resnet110", 32, 128, 3),
    "cifar_resnet20_fmnist": ("cifar_resnet20", 28, 128, 1),
}
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "device": "cpu",
        "models": ["resnet50", "cifar_resnet110"],
        "bf16": False,
        "channels_last": False,
        "compile": [False],
        "steps_per_round": 2,
        "rounds": 12,
    },
    "gpu": {
        "device": "cuda",
        "models": ["resnet50_224", "cifar_resnet110_b128", "cifar_resnet20_fmnist"],
        "bf16": True,
        "channels_last": True,
        "compile": [False, True],
        "steps_per_round": 5,
        "rounds": 10,
    },
}
# name -> how to build it: None is the plain model; "anchor" torchvision's op; else the
# apply_stochastic_depth arguments. "warmup": rates change every step (drop warmup).
CONFIGS: dict[str, dict[str, Any] | None] = {
    "plain": None,
    "torchvision_0.1": {"anchor": 0.1},
    "sample_mask_0.1": {"stochastic_method": "sample", "sample_impl": "mask", "drop_rate": 0.1},
    "sample_mask_0.1_warmup": {
        "stochastic_method": "sample",
        "sample_impl": "mask",
        "drop_rate": 0.1,
        "warmup": True,
    },
    "sample_mask_0.5": {"stochastic_method": "sample", "sample_impl": "mask", "drop_rate": 0.5},
    "sample_subset_0.5": {"stochastic_method": "sample", "sample_impl": "subset", "drop_rate": 0.5},
    "block_0.5": {"stochastic_method": "block", "drop_rate": 0.5},
    "sample_mask_0.1_torchops": {
        "stochastic_method": "sample",
        "sample_impl": "mask",
        "drop_rate": 0.1,
        "torchops": True,
    },
    "sample_subset_0.5_torchops": {
        "stochastic_method": "sample",
        "sample_impl": "subset",
        "drop_rate": 0.5,
        "torchops": True,
    },
    "block_0.5_torchops": {"stochastic_method": "block", "drop_rate": 0.5, "torchops": True},
}
DEFAULT_CONFIGS = [c for c in CONFIGS if not c.endswith("_torchops")]
# (configuration, compiled) -> the goal for the ratio to plain (ResNet-50 only)
TARGETS = {
    "cpu": {
        ("sample_mask_0.1", False): 1.02,
        ("sample_subset_0.5", False): 0.85,
        ("block_0.5", False): 0.80,
    },
    "cuda": {
        ("sample_mask_0.1", False): 1.05,
        ("sample_subset_0.5", False): 0.85,
        ("block_0.5", False): 0.80,
        ("sample_mask_0.1", True): 1.02,
        ("sample_mask_0.1_warmup", True): 1.02,
    },
}


# ------------------------------------------------------------------------- the anchor


def _anchor_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision (or CIFAR) block with torchvision.ops.stochastic_depth on its branch."""
    if isinstance(block, CifarBasicBlock):
        out, identity = block.residual_branch(x), block.shortcut(x)
    else:
        identity = x if block.downsample is None else block.downsample(x)
        out = block.relu(block.bn1(block.conv1(x)))
        if isinstance(block, torchvision.models.resnet.Bottleneck):
            out = block.relu(block.bn2(block.conv2(out)))
            out = block.bn3(block.conv3(out))
        else:
            out = block.bn2(block.conv2(out))
    out = torchvision.ops.stochastic_depth(out, block.sd_rate, "row", block.training)
    out += identity
    return block.relu(out)


def patch_anchor(model: nn.Module, drop_rate: float) -> nn.Module:
    kinds = (
        torchvision.models.resnet.Bottleneck,
        torchvision.models.resnet.BasicBlock,
        CifarBasicBlock,
    )
    blocks = [m for m in model.modules() if isinstance(m, kinds)]
    for block, rate in zip(blocks, drop_rates(len(blocks), drop_rate, "linear"), strict=True):
        block.sd_rate = rate
        block.forward = MethodType(_anchor_forward, block)
    return model


# -------------------------------------------------------------------------- timing


class Case:
    """One configuration of one model, ready to take timed training steps."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        args: argparse.Namespace,
        spec: dict[str, Any] | None,
        compiled: bool,
    ) -> None:
        self.name, self.x, self.y, self.spec = name, x, y, spec or {}
        self.device = x.device
        self.model = model.train()
        self.blocks = stochastic_blocks(model)
        self.torchops = bool(self.spec.get("torchops"))
        self.warmup = bool(self.spec.get("warmup"))
        self.fn = torch.compile(model) if compiled else model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.bf16 = args.bf16
        self.step_no = 0
        self.times: list[float] = []
        self.peak_bytes = 0
        self.first_step_s: float | None = None

    def _set_rates(self) -> None:
        if self.warmup:  # a new rate on every block at every step, as during drop warmup
            frac = 0.5 + 0.5 * ((self.step_no % 1000) / 1000)
            for b in self.blocks:
                b.drop_rate = b.target_drop_rate * frac

    def step(self) -> float:
        if residual_kernels is not None:
            residual_kernels.TRITON_ENABLED = not self.torchops
        self._set_rates()
        self.step_no += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = nn.functional.cross_entropy(self.fn(self.x), self.y)
        loss.backward()
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if residual_kernels is not None:
            residual_kernels.TRITON_ENABLED = True
        if self.first_step_s is None:
            self.first_step_s = elapsed  # includes compilation when compiled
        return elapsed

    def round(self, steps: int, measured: bool) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = [self.step() for _ in range(steps)]
        if measured:
            self.times.extend(times)
            if self.device.type == "cuda":
                self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated())


def build_case(
    name: str,
    base: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    args: argparse.Namespace,
    compiled: bool,
) -> Case:
    spec = CONFIGS.get(name)
    model = copy.deepcopy(base)
    if spec is not None and "anchor" in spec:
        patch_anchor(model, spec["anchor"])
    elif spec is not None:
        kwargs = {k: v for k, v in spec.items() if k not in ("warmup", "torchops")}
        apply_stochastic_depth(
            model,
            "auto",
            drop_distribution="linear",
            drop_warmup=0.5 if spec.get("warmup") else 0.0,
            **kwargs,
        )
        if spec.get("warmup"):
            for b in stochastic_blocks(model):
                b.drop_rate = b.target_drop_rate
    return Case(name, model, x, y, args, spec, compiled)


def floor_cases(
    base: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> list[Case]:
    """One case per block: that block always dropped (``block`` at rate 1), the rest kept."""
    cases = []
    model = apply_stochastic_depth(copy.deepcopy(base), "auto", "block", 0.0)
    for i in range(len(stochastic_blocks(model))):
        m = copy.deepcopy(model)
        stochastic_blocks(m)[i].drop_rate = 1.0
        cases.append(Case(f"drop_block_{i}", m, x, y, args, {}, False))
    return cases


def profile_cases(cases: list[Case], path: Path) -> None:
    """Where each configuration's time goes: torch.profiler over 3 steps, top 25 operators."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    sort = "self_cpu_time_total"
    if cases[0].device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        sort = "self_cuda_time_total"
    parts = []
    for case in cases:
        with profile(activities=activities) as prof:
            for _ in range(3):
                case.step()
        parts.append(f"=== {case.name}\n{prof.key_averages().table(sort_by=sort, row_limit=25)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    print(f"  profile: {path}", flush=True)


def bench_model(
    name: str, configs: list[str], args: argparse.Namespace, compiled: bool, floor: bool
) -> dict[str, Any]:
    arch, size, batch, channels = MODELS[name]
    device = torch.device(args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    base = build_model(arch, num_classes=10, in_channels=channels).to(device)
    base = base.to(memory_format=fmt)
    x = torch.randn(batch, channels, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    if compiled:  # under torch.compile the fused ops are left to the compiler: no A/B
        configs = [c for c in configs if not c.endswith("_torchops")]
    cases = [build_case(c, base, x, y, args, compiled) for c in configs]
    if floor:
        cases += floor_cases(base, x, y, args)
    tag = f"{name}{' compiled' if compiled else ''}"
    for r in range(args.warmup + args.rounds):
        for case in cases:
            case.round(args.steps_per_round, measured=r >= args.warmup)
        print(f"  {tag}: round {r + 1}/{args.warmup + args.rounds}", flush=True)
    if args.profile:
        profile_cases(
            [c for c in cases if not c.name.startswith("drop_block_")],
            args.out.with_suffix(f".{name}{'.compiled' if compiled else ''}.profile.txt"),
        )
    plain_case = next(c for c in cases if c.name == "plain")
    plain, plain_mean = statistics.median(plain_case.times), trimmed_mean(plain_case.times)
    result: dict[str, Any] = {
        "arch": arch,
        "image_size": size,
        "batch_size": batch,
        "in_channels": channels,
        "compiled": compiled,
        "configs": {},
    }
    for case in cases:
        med, mean = statistics.median(case.times), trimmed_mean(case.times)
        result["configs"][case.name] = {
            "median_s": med,
            "ratio": med / plain,
            "mean_s": mean,
            "mean_ratio": mean / plain_mean,
            "images_per_s": batch / mean,
            "n": len(case.times),
            "first_step_s": case.first_step_s,
            "peak_memory_mib": case.peak_bytes / 2**20 if case.peak_bytes else None,
        }
    if floor:
        result["floor"] = block_floor(result["configs"], plain_mean)
    return result


def trimmed_mean(times: list[float], cut: float = 0.1) -> float:
    """The mean without the slowest and fastest ``cut`` of the steps. A random drop makes step
    times spread: the mean is what training pays, the trim keeps machine noise out."""
    ordered = sorted(times)
    k = int(len(ordered) * cut)
    return statistics.fmean(ordered[k : len(ordered) - k] or ordered)


def block_floor(configs: dict[str, Any], plain: float) -> dict[str, Any]:
    """Expected step time of ``block`` at its linear rates, from the one-block-dropped times."""
    savings = [
        plain - configs[f"drop_block_{i}"]["mean_s"]
        for i in range(sum(k.startswith("drop_block_") for k in configs))
    ]
    out = {"saving_per_block_s": savings}
    for rate in (0.1, 0.5):
        rates = drop_rates(len(savings), rate, "linear")
        expected = plain - sum(p * s for p, s in zip(rates, savings, strict=True))
        out[f"block_{rate}_expected_ratio"] = expected / plain
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="default settings for the machine: auto = gpu where CUDA is available, else cpu",
    )
    parser.add_argument("--models", nargs="+", choices=list(MODELS))
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        help="default: all but *_torchops on CPU, all on CUDA",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true", default=None)
    parser.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile every model (the gpu preset runs eager and compiled)",
    )
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile 3 steps of each configuration (torch.profiler) and "
        "write the top operators next to --out",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time each block dropped alone: what `block` could reach",
    )
    parser.add_argument("--rounds", type=int, help="measured rounds")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds (default 2)")
    parser.add_argument("--steps-per-round", type=int)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/sd_step.json"))
    args = parser.parse_args()

    preset = args.preset
    if preset == "auto":
        preset = "gpu" if torch.cuda.is_available() else "cpu"
    settings = dict(PRESETS[preset])
    for key in ("device", "models", "bf16", "channels_last", "rounds", "steps_per_round"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.compile is not None:
        settings["compile"] = [True]
    if args.no_compile:
        settings["compile"] = [False]
    for key in ("device", "bf16", "channels_last", "rounds", "steps_per_round"):
        setattr(args, key, settings[key])
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device cuda: no CUDA device is available (torch.cuda.is_available() "
            "is False); leave --device out to run the CPU settings"
        )
    configs = args.configs or (list(CONFIGS) if args.device == "cuda" else DEFAULT_CONFIGS)
    if "plain" not in configs:
        configs = ["plain", *configs]

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
    }
    if args.device == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
    report: dict[str, Any] = {
        "machine": machine,
        "preset": preset,
        "settings": {
            k: settings[k]
            for k in ("device", "bf16", "channels_last", "compile", "rounds", "steps_per_round")
        },
        "targets": {
            f"{c}{' compiled' if comp else ''}": t for (c, comp), t in TARGETS[args.device].items()
        },
        "runs": {},
    }
    for compiled in settings["compile"]:
        for name in settings["models"]:
            key = f"{name}{' compiled' if compiled else ''}"
            report["runs"][key] = bench_model(
                name, configs, args, compiled, args.floor and not compiled
            )
    print(
        f"\n{'model':<24} {'configuration':<28} {'median':>9} {'ratio':>7} {'mean r.':>7} "
        f"{'img/s':>8} {'peak MiB':>9} {'goal':>7}"
    )
    targets = TARGETS[args.device]
    for key, res in report["runs"].items():
        for cfg, r in res["configs"].items():
            if cfg.startswith("drop_block_"):
                continue
            goal = targets.get((cfg, res["compiled"]))
            goal_text = f"<={goal:.2f}" if goal and res["arch"] == "resnet50" else ""
            peak = f"{r['peak_memory_mib']:.0f}" if r["peak_memory_mib"] else ""
            print(
                f"{key:<24} {cfg:<28} {r['median_s'] * 1000:>7.1f}ms {r['ratio']:>7.3f} "
                f"{r['mean_ratio']:>7.3f} {r['images_per_s']:>8.0f} {peak:>9} {goal_text:>7}"
            )
        if "floor" in res:
            f = res["floor"]
            print(
                f"{key:<24} {'block_0.5 floor (expected)':<28} {'':>9} {'':>7} "
                f"{f['block_0.5_expected_ratio']:>7.3f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
