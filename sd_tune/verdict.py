"""One plain sentence per depth on what the baseline comparison (``sd_tune.comparison``)
supports, and never more: the terminal's last lines, summary.md and TensorBoard's summary text
all print these. A difference counts as shown when test accuracy's 95% Welch interval
excludes 0 and its p (Holm-adjusted across the depths) is below 0.05; otherwise the sentence
says there is no evidence. Nothing here imports Ray or torch."""

from __future__ import annotations

from sd_tune.comparison import Comparison, Difference

ALPHA = 0.05


def label(c: Comparison) -> str:
    """``depth 20, drop rate 0.2 linear``: which configuration was compared."""
    parts = []
    if c.depth is not None:
        parts.append(f"depth {c.depth}")
    if c.drop_rate is not None:
        rate = f"drop rate {c.drop_rate:.3g}"
        parts.append(f"{rate} {c.distribution}" if c.distribution else rate)
    return ", ".join(parts) or f"configuration {c.config_id}"


def _signed(x: float, digits: int = 1) -> str:
    return f"{x:+.{digits}f}".replace("-", "\u2212")


def _p(d: Difference, family: int) -> str:
    p = d.p_holm if d.p_holm is not None else d.p
    text = "p < 0.001" if p is not None and p < 0.001 else f"p = {p:.2g}"
    return f"{text}, Holm" if family > 1 else text


def _seeds(c: Comparison) -> str:
    a, b = c.n
    return f"{a} seeds each" if a == b else f"{a} and {b} seeds"


def _time(c: Comparison) -> str:
    d = c.differences.get("train_time_s")
    if d is None or d.relative is None:
        return ""
    if d.low is None or d.high is None:
        return ""  # no interval: no claim about time
    if d.high < 0 or d.low > 0:
        return f", {abs(d.relative):.0%} {'less' if d.delta < 0 else 'more'} training time"
    spread = (d.half_width or 0.0) / d.base.mean
    return (
        f", no clear difference in training time ({_signed(100 * d.relative, 0)}% ± {spread:.0%})"
    )


def shown(d: Difference) -> bool:
    """Whether ``d`` is a difference the seeds support (interval off 0, adjusted p < 0.05)."""
    p = d.p_holm if d.p_holm is not None else d.p
    if p is None or d.low is None or d.high is None:
        return False
    return p < ALPHA and (d.low > 0 or d.high < 0)


def sentence(c: Comparison) -> str:
    """What the comparison ``c`` supports, in one sentence."""
    head = label(c)
    d = c.differences.get("test_acc")
    a, b = c.n
    if d is None:
        if a and not b:
            what = "the baseline finished no seed"
        elif b and not a:
            what = "the stochastic-depth configuration finished no seed"
        else:
            what = "neither arm finished a seed"
        return (
            f"{head}: no comparison possible: {what} with a test accuracy "
            f"({a} stochastic-depth seed{'s' * (a != 1)}, {b} baseline seed{'s' * (b != 1)})"
        )
    if d.p is None:
        return (
            f"{head}: no comparison possible: {_signed(100 * d.delta)} points test accuracy "
            f"from {a} stochastic-depth and {b} baseline seed{'s' * (b != 1)}, but an interval "
            "needs at least 2 finished seeds in each arm (search.repeats 2 or more)"
        )
    numbers = f"{_signed(100 * d.delta)} ± {100 * (d.half_width or 0.0):.1f} points test accuracy"
    why = f"({_p(d, c.holm_family)}; {_seeds(c)})"
    if shown(d) and d.delta > 0:
        return f"{head}: {numbers} over no stochastic depth {why}{_time(c)}"
    if shown(d):
        return (
            f"{head}: stochastic depth did worse: {numbers} against no stochastic depth "
            f"{why}{_time(c)}"
        )
    return (
        f"{head}: no evidence that stochastic depth helps at this budget: {numbers} {why}{_time(c)}"
    )


def val_line(c: Comparison) -> str | None:
    """Δval_acc, labelled as the metric the configuration was chosen on (biased in its
    favour), or None without an interval."""
    d = c.differences.get("val_acc")
    if d is None or d.half_width is None:
        return None
    return (
        f"{label(c)}: {_signed(100 * d.delta)} ± {100 * d.half_width:.1f} points val_acc "
        "(the metric this configuration was chosen on, so biased in its favour)"
    )


def _cell(d: Difference | None, scale: float = 100.0, unit: str = "") -> str:
    if d is None:
        return "-"
    if d.half_width is None:
        return f"{_signed(scale * d.delta, 2)}{unit} (no interval)"
    return f"{_signed(scale * d.delta, 2)} ± {scale * d.half_width:.2f}{unit}"


def markdown(comparisons: list[Comparison]) -> list[str]:
    """summary.md's section (also TensorBoard's summary text): the sentences, then a table
    of every difference with its interval, p and seeds per arm."""
    if not comparisons:
        return []
    lines = [
        "## Against no stochastic depth",
        "",
        "Each depth's best configuration (highest mean val_acc) trained again with drop rate "
        "0 and the same seeds, every other setting unchanged. test_acc was not used to choose "
        "it and is the fair comparison; val_acc was, so its difference is biased in the "
        "configuration's favour. Differences are stochastic depth minus baseline with Welch "
        "95% intervals; test_acc's p is Holm-adjusted across the depths.",
        "",
        *(f"- {sentence(c)}." for c in comparisons),
        "",
        "| depth | configuration | seeds (SD / baseline) | Δtest_acc (points) | p | p (Holm) "
        "| Δval_acc (points, chosen on) | Δtrain_time_s | Δtrain_time_s (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        test, time = c.differences.get("test_acc"), c.differences.get("train_time_s")
        p = "-" if test is None or test.p is None else f"{test.p:.3g}"
        ph = "-" if test is None or test.p_holm is None else f"{test.p_holm:.3g}"
        rel = "-"
        if time is not None and time.relative is not None:
            rel = _signed(100 * time.relative, 1) + "%"
        lines.append(
            f"| {'-' if c.depth is None else c.depth} | `{c.config_id}` | {c.n[0]} / {c.n[1]} "
            f"| {_cell(test)} | {p} | {ph} | {_cell(c.differences.get('val_acc'))} "
            f"| {_cell(time, 1.0, ' s')} | {rel} |"
        )
    return [*lines, ""]
