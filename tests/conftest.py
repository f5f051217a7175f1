"""Shared fixtures: one real Ray instance per test session (started only by tests that ask)."""

from __future__ import annotations

import os
from collections.abc import Iterator

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
