"""Shared fixtures: one real Ray instance per test session (started only by tests that ask)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray with this machine's CPUs, shared by every test that uses it."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(
        num_cpus=max(2, os.cpu_count() or 2),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        logging_level="WARNING",
        configure_logging=True,
    )
    try:
        yield
    finally:
        ray.shutdown()


def _run_two_ranks(target: Callable[..., None], *args: object) -> None:
    """``target(rank, *args)`` in two spawned processes (rank 0 and 1); fails if either hangs
    for 120 s or exits non-zero."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(rank, *args)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a DDP process hung"
    assert [p.exitcode for p in procs] == [0, 0]


@pytest.fixture
def run_two_ranks() -> Callable[..., None]:
    """Runs a module-level function as two DDP ranks (see ``_run_two_ranks``)."""
    return _run_two_ranks


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``tmpfs(size="1m", options="")`` mounts a new tmpfs of that size (read-only with
    ``options="ro"``) under ``tmp_path`` and returns its folder; unmounted afterwards. Skips
    the test where this process may not mount (it needs root or CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(size: str = "1m", options: str = "") -> Path:
        path = tmp_path / f"tmpfs{len(mounted)}"
        path.mkdir()
        opts = ",".join(o for o in (f"size={size}", options) if o)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "none", str(path)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
