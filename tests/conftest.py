"""Shared fixtures: one real Ray instance per test session (started only by tests that ask)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray with this machine's CPUs, shared by every test that uses it."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=True,
             dashboard_host="127.0.0.1", logging_level="WARNING", configure_logging=True)
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
