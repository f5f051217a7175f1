"""Seeds derived from seeds: one independent stream per (seed, epoch, rank) or (seed, repeat).

numpy only, so the driver's commands (``sd_tune.repeats``) derive a repeat's seed without
importing torch; the data loaders derive their streams with the same function."""

from __future__ import annotations

import numpy as np


def seed_from(*parts: int) -> int:
    """A non-negative 63-bit seed derived from ``parts`` (numpy's ``SeedSequence``): one
    independent stream per (seed, epoch, rank).

    >>> seed_from(0, 1, 2) == seed_from(0, 1, 2), seed_from(0, 1, 2) == seed_from(0, 1, 3)
    (True, False)
    """
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)
