"""The no-stochastic-depth baseline's comparison (issue 27): for each depth, the seeds of the
best stochastic-depth configuration against the same seeds with drop rate 0, every other
setting unchanged, so the difference is the effect of stochastic depth alone.

Each metric's difference is Welch's (``scipy.stats.ttest_ind(equal_var=False)``: the arms
need not share a variance) with its 95% interval (the result's ``confidence_interval()``).
The test accuracy p-values are Holm-adjusted across the depths (:func:`holm`: scipy has only
Benjamini-Hochberg, and statsmodels is not a dependency; Holm is a few lines, tested against
R's ``p.adjust``). test_acc is the fair comparison: the winner was chosen on val_acc, which is
biased in its favour. Nothing here imports Ray or torch."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from scipy import stats

from sd_tune.records import number, record_final, record_setting
from sd_tune.stats import Spread, spread

BASELINE_KEY = "baseline_of"  # a baseline seed's record: the configuration it ablates
COMPARED = ("test_acc", "val_acc", "train_time_s")  # test_acc first: the fair one
COMPARISON_FILE = "comparison.json"


@dataclass(frozen=True)
class Difference:
    """``metric`` of the stochastic-depth arm minus the baseline's: ``delta`` with its Welch
    interval and p; ``low``, ``high`` and ``p`` are None when an arm has fewer than 2 seeds."""

    metric: str
    sd: Spread
    base: Spread
    delta: float
    low: float | None
    high: float | None
    p: float | None
    p_holm: float | None = None
    confidence: float = 0.95

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    @property
    def relative(self) -> float | None:
        """``delta`` as a share of the baseline's mean (None when that is 0)."""
        return self.delta / self.base.mean if self.base.mean else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "stochastic_depth": self.sd.to_dict(),
            "baseline": self.base.to_dict(),
            "delta": self.delta,
            "ci_low": self.low,
            "ci_high": self.high,
            "confidence": self.confidence,
            "relative": self.relative,
            "p": self.p,
            "p_holm": self.p_holm,
        }


def difference(
    metric: str, sd: Sequence[float], base: Sequence[float], confidence: float = 0.95
) -> Difference:
    """Welch's difference of means, ``mean(sd) - mean(base)``.

    >>> d = difference("test_acc", [0.91, 0.92, 0.93], [0.89, 0.90, 0.90])
    >>> round(d.delta, 4), round(d.low, 4), round(d.high, 4), round(d.p, 4)
    (0.0233, 0.0028, 0.0438, 0.0357)
    >>> difference("test_acc", [0.91], [0.89, 0.90]).p is None
    True
    """
    a, b = spread(sd, confidence), spread(base, confidence)
    delta = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Difference(metric, a, b, delta, None, None, None, confidence=confidence)
    if a.std == 0 and b.std == 0:  # no spread in either arm: the difference is exact
        p = 1.0 if delta == 0 else 0.0
        return Difference(metric, a, b, delta, delta, delta, p, confidence=confidence)
    result = stats.ttest_ind(list(map(float, sd)), list(map(float, base)), equal_var=False)
    ci = result.confidence_interval(confidence)
    return Difference(
        metric,
        a,
        b,
        delta,
        float(ci.low),
        float(ci.high),
        float(result.pvalue),
        confidence=confidence,
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``pvalues`` (family-wise error), in their order.

    >>> holm([0.01, 0.04, 0.03, 0.005])  # R: p.adjust(c(.01, .04, .03, .005), "holm")
    [0.03, 0.06, 0.06, 0.02]
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = round(running, 15)
    return adjusted


@dataclass
class Comparison:
    """One depth: the winning configuration's seeds against its baseline's."""

    config_id: str
    depth: int | None
    drop_rate: float | None
    distribution: str | None
    sd_seeds: list[str]
    base_seeds: list[str]
    differences: dict[str, Difference] = field(default_factory=dict)
    holm_family: int = 1  # how many comparisons the Holm adjustment spans

    @property
    def n(self) -> tuple[int, int]:
        """Finished seeds in each arm: (stochastic depth, baseline)."""
        return len(self.sd_seeds), len(self.base_seeds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config_id": self.config_id,
            "depth": self.depth,
            "drop_rate": self.drop_rate,
            "drop_distribution": self.distribution,
            "stochastic_depth_seeds": self.sd_seeds,
            "baseline_seeds": self.base_seeds,
            "n": {"stochastic_depth": self.n[0], "baseline": self.n[1]},
            "holm_family": self.holm_family,
            "differences": {m: d.to_dict() for m, d in self.differences.items()},
        }


def compare(records: Iterable[Mapping[str, Any]], confidence: float = 0.95) -> list[Comparison]:
    """A comparison per baseline in ``records`` (the seeds' records: a baseline seed has
    :data:`BASELINE_KEY`), by depth; test_acc's p Holm-adjusted across them."""
    records = list(records)
    bases: dict[str, list[Mapping[str, Any]]] = {}
    for rec in records:
        of = rec.get(BASELINE_KEY)
        if isinstance(of, str):
            bases.setdefault(of, []).append(rec)
    out = []
    for config_id, base_recs in bases.items():
        sd_recs = [
            r
            for r in records
            if r.get("config_id") == config_id and not isinstance(r.get(BASELINE_KEY), str)
        ]
        sd_done = [r for r in sd_recs if r.get("status") == "completed"]
        base_done = [r for r in base_recs if r.get("status") == "completed"]
        first = sd_recs[0] if sd_recs else base_recs[0]
        depth, rate = (
            record_setting(first, "model.depth"),
            number(record_setting(first, "stochastic_depth.drop_rate")),
        )
        dist = record_setting(first, "stochastic_depth.drop_distribution")
        c = Comparison(
            config_id,
            int(depth) if number(depth) is not None else None,
            rate,
            dist if isinstance(dist, str) else None,
            [str(r.get("trial_id")) for r in sd_done],
            [str(r.get("trial_id")) for r in base_done],
        )
        for metric in COMPARED:
            a = _values(sd_done, metric)
            b = _values(base_done, metric)
            if a and b:
                c.differences[metric] = difference(metric, a, b, confidence)
        out.append(c)
    out.sort(key=lambda c: (c.depth is None, c.depth or 0, c.config_id))
    tested = [c for c in out if (d := c.differences.get("test_acc")) and d.p is not None]
    for c, p in zip(tested, holm([c.differences["test_acc"].p for c in tested]), strict=True):
        c.differences["test_acc"] = replace(c.differences["test_acc"], p_holm=p)
        c.holm_family = len(tested)
    return out


def _values(records: Sequence[Mapping[str, Any]], metric: str) -> list[float]:
    return [v for r in records if (v := number(record_final(r).get(metric))) is not None]


def baseline_seeds_due(records: Iterable[Mapping[str, Any]], repeats: int) -> int:
    """How many baseline seeds a finished search has run: ``repeats`` for each depth where a
    configuration finished a seed (each such depth has a best configuration)."""
    depths = {
        record_setting(r, "model.depth")
        for r in records
        if r.get("status") == "completed" and not is_baseline(r)
    }
    return repeats * len(depths)


def is_baseline(rec: Mapping[str, Any]) -> bool:
    """Whether ``rec`` is a baseline seed's record."""
    return isinstance(rec.get(BASELINE_KEY), str)
