"""sd_tune.stats: the numbers against published values and scipy, and the interval's coverage
measured on simulated seeds (fixed seed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sd_tune.stats import describe, spread

# Student's t, two-sided 95%, from the printed tables (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262}


@pytest.mark.parametrize("df", sorted(T_975))
def test_interval_uses_the_t_quantile_of_the_tables(df: int) -> None:
    values = [float(v) for v in range(df + 1)]  # 0, 1, ..., df: a known std
    s = spread(values)
    std = math.sqrt(sum((v - s.mean) ** 2 for v in values) / df)  # ddof 1, by hand
    assert s.std == pytest.approx(std)
    assert s.half_width == pytest.approx(T_975[df] * std / math.sqrt(df + 1), rel=2e-4)
    assert s.low == pytest.approx(s.mean - s.half_width) and s.n == df + 1


def test_matches_scipy_on_fixed_numbers() -> None:
    values = [0.843, 0.818, 0.849, 0.874, 0.861]
    s = spread(values, confidence=0.9)
    assert s.mean == pytest.approx(np.mean(values))
    assert s.std == pytest.approx(np.std(values, ddof=1))
    ci = stats.ttest_1samp(values, 0.0).confidence_interval(0.9)
    assert (s.low, s.high) == pytest.approx((ci.low, ci.high))
    assert s.to_dict() == {
        "mean": s.mean, "std": s.std, "n": 5, "ci_low": s.low, "ci_high": s.high,
        "confidence": 0.9,
    }  # fmt: skip


def test_one_seed_has_no_interval_and_says_so() -> None:
    s = spread([0.874])
    assert (s.mean, s.std, s.n, s.low, s.high, s.half_width) == (0.874, None, 1, None, None, None)
    assert describe(s) == "0.874 (n = 1: no interval)"
    assert "±" not in describe(s)


def test_equal_seeds_give_an_interval_of_no_width() -> None:
    s = spread([0.5, 0.5, 0.5])
    assert (s.std, s.low, s.high) == (0.0, 0.5, 0.5)


@pytest.mark.parametrize("values", [[], [0.5, float("nan")], [float("inf")]])
def test_no_or_non_finite_values_are_refused(values: list[float]) -> None:
    with pytest.raises(ValueError, match=r"finished seed|finite"):
        spread(values)


def test_95_percent_interval_covers_the_mean_95_percent_of_the_time() -> None:
    """3 seeds of a normal metric (mean 0.85, std 0.02), 4,000 times: the t interval covers
    the true mean in 95% of them (binomial 99.9% band: ±1.1 points); the normal interval
    with the population std (1.96 × std / √n, ddof 0) would cover ~74%."""
    rng = np.random.default_rng(0)
    runs = rng.normal(0.85, 0.02, size=(4000, 3))
    covered = sum(s.low <= 0.85 <= s.high for s in map(spread, runs.tolist()))
    assert abs(covered / len(runs) - 0.95) < 0.011, covered / len(runs)
    narrow = np.abs(runs.mean(axis=1) - 0.85) <= 1.96 * runs.std(axis=1) / math.sqrt(3)
    assert narrow.mean() < 0.80  # the interval this module does not use
