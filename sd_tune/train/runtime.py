"""Where a trial runs: its rank and device, the all-reduce of metrics, seeding, deterministic mode,
and whether and how long ``torch.compile`` runs. Imports torch, never Ray."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, else ``(0, 1)``.

    >>> dist_info()
    (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def default_device() -> torch.device:
    """``cuda:<local rank>`` when CUDA is available, else ``cpu``.

    The local rank comes from ``$LOCAL_RANK``, else the global rank modulo the GPU count.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = os.environ.get("LOCAL_RANK")
    index = int(local) if local is not None else dist_info()[0] % torch.cuda.device_count()
    return torch.device("cuda", index)


def _rank_seed(seed: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, rank, 7]).generate_state(1)[0])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _all_reduce(values: list[float | Tensor], device: torch.device, world_size: int) -> list[float]:
    """Sum a few numbers over ranks in one collective; returns Python floats."""
    t = torch.stack(
        [torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values]
    )
    if world_size > 1:
        dist.all_reduce(t)
    return t.tolist()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms (warn only) for the trial; the previous setting comes back."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


def _broadcast_buffers(model: nn.Module, world_size: int) -> None:
    """Give every rank rank 0's BatchNorm statistics (those the checkpoint holds)."""
    if world_size > 1:
        for buf in model.buffers():
            dist.broadcast(buf, 0)


def compiles(setting: bool | str, device: torch.device) -> bool:
    """Whether ``train.compile`` compiles on ``device``: ``"auto"`` compiles on CUDA only.

    >>> compiles("auto", torch.device("cpu")), compiles(True, torch.device("cpu"))
    (False, True)
    """
    return device.type == "cuda" if setting == "auto" else bool(setting)


def compile_seconds() -> float:
    """Seconds this process has spent in torch.compile so far (dynamo's own account, forward
    and backward graphs); 0 where this torch does not keep one."""
    try:
        from torch._dynamo.utils import calculate_time_spent
    except ImportError:  # pragma: no cover - every torch we support has it
        return 0.0
    spent = calculate_time_spent()
    if "total_wall_time" in spent:
        return float(spent["total_wall_time"])
    return float(spent.get("entire_frame_compile", 0.0) + spent.get("entire_backward_compile", 0.0))
