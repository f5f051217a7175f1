"""The spread of one configuration's results over its seeds: mean, sample standard deviation
(ddof 1), count, and a confidence interval for the mean from Student's t (scipy.stats).

With one seed there is no interval, and it says so: never ``± 0``. The intervals are t
intervals, not ``1.96 × std / √n``: at n = 3 that normal interval with the population std
(ddof 0) is 2.7 times too narrow, and covers the mean ~70% of the time instead of 95%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Spread:
    """Mean, sample std and CI of ``n`` values; ``std``, ``low`` and ``high`` are None when
    n = 1."""

    mean: float
    std: float | None
    n: int
    low: float | None
    high: float | None
    confidence: float = 0.95

    @property
    def half_width(self) -> float | None:
        """Half the interval's width (the ``±`` of ``mean ± half_width``), or None."""
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain data for JSON (pareto.json, trials.json)."""
        return {
            "mean": self.mean,
            "std": self.std,
            "n": self.n,
            "ci_low": self.low,
            "ci_high": self.high,
            "confidence": self.confidence,
        }


def spread(values: Sequence[float], confidence: float = 0.95) -> Spread:
    """The mean of ``values`` with its sample std and its ``confidence`` t interval.

    >>> s = spread([0.843, 0.818, 0.849, 0.874])
    >>> round(s.mean, 4), round(s.std, 4), s.n, round(s.half_width, 4)
    (0.846, 0.023, 4, 0.0366)
    >>> spread([0.9]).low is None
    True
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("no values: a spread needs at least one finished seed")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"values must be finite, but got {xs}")
    if not 0 < confidence < 1:
        raise ValueError(f"`0 < confidence < 1` must hold, but got confidence={confidence!r}")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return Spread(mean, None, 1, None, None, confidence)
    if min(xs) == max(xs):  # every seed gave the same number: the interval is that number
        return Spread(mean, 0.0, n, mean, mean, confidence)
    std = float(stats.tstd(xs))  # ddof 1
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=float(stats.sem(xs)))
    return Spread(mean, std, n, float(low), float(high), confidence)


def describe(s: Spread, digits: int = 3) -> str:
    """``mean ± half-width`` with the count, for the terminal and summary.md.

    >>> describe(spread([0.843, 0.818, 0.849, 0.874]))
    '0.846 ± 0.037 (95% CI, n = 4)'
    >>> describe(spread([0.9]))
    '0.900 (n = 1: no interval)'
    """
    if s.half_width is None:
        return f"{s.mean:.{digits}f} (n = {s.n}: no interval)"
    return f"{s.mean:.{digits}f} ± {s.half_width:.{digits}f} ({s.confidence:.0%} CI, n = {s.n})"
