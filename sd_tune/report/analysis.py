"""The analysis of a search's records: the Pareto front (of trials, or of configurations'
means over their seeds) and the time-to-accuracy front. Only completed trials enter a Pareto
front: a stopped-early, failed or running trial's last values are partial. Nothing here
imports Ray or torch."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sd_tune.comparison import is_baseline
from sd_tune.config import Objective
from sd_tune.configurations import configurations
from sd_tune.records import (
    Record,
    check_records,
    number,
    record_final,
)

DEFAULT_OBJECTIVES = (Objective("val_acc", "max"), Objective("train_time_s", "min"))
MODES = ("max", "min")


def as_objectives(objectives: Iterable[Any] | None) -> list[Objective]:
    """Objectives from ``Objective``s, ``{"metric", "mode"}`` dicts or ``(metric, mode)`` pairs."""
    if objectives is None:
        return [Objective(o.metric, o.mode) for o in DEFAULT_OBJECTIVES]
    out = []
    for obj in objectives:
        if isinstance(obj, Mapping):
            metric, mode = obj.get("metric"), obj.get("mode")
        elif isinstance(obj, (tuple, list)) and len(obj) == 2:
            metric, mode = obj
        else:
            metric, mode = getattr(obj, "metric", None), getattr(obj, "mode", None)
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"objective metric must be a non-empty string, but got {obj!r}")
        if mode not in MODES:
            raise ValueError(
                f"objective mode must be one of 'max', 'min', but got {mode!r} "
                f"for metric {metric!r}"
            )
        out.append(Objective(metric, mode))
    if not out:
        raise ValueError("objectives must not be empty")
    return out


def _vector(rec: Mapping[str, Any], objectives: Sequence[Objective]) -> list[float] | None:
    """The objective values of a record, each oriented so that smaller is better."""
    final = record_final(rec)
    out = []
    for obj in objectives:
        value = number(final.get(obj.metric))
        if value is None:
            return None
        out.append(-value if obj.mode == "max" else value)
    return out


# --------------------------------------------------------------------------- fronts


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether vector ``a`` dominates ``b`` when smaller is better in every coordinate.

    >>> dominates([1, 2], [1, 3]), dominates([1, 2], [1, 2]), dominates([0, 3], [1, 2])
    (True, False, False)
    """
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(
    records: Iterable[Mapping[str, Any]], objectives: Iterable[Any] | None = None
) -> list[Record]:
    """The non-dominated completed trials, best first by the first objective.

    Only ``status == "completed"`` trials with a finite value for every objective take part;
    trials with identical objective values are all kept. Ties on the first objective are
    ordered by the next objectives, then by trial id. Default objectives: max ``val_acc``,
    min ``train_time_s``.

    >>> def rec(trial_id, status, acc, secs):
    ...     return {"trial_id": trial_id, "status": status,
    ...             "final": {"val_acc": acc, "train_time_s": secs}}
    >>> recs = [rec("a", "completed", .9, 90), rec("b", "completed", .8, 50),
    ...         rec("c", "completed", .8, 60), rec("d", "failed", .99, 1)]
    >>> [r["trial_id"] for r in pareto_front(recs)]
    ['a', 'b']
    """
    objs = as_objectives(objectives)
    cands = [
        (v, rec)
        for rec in check_records(records)
        if rec.get("status") == "completed" and (v := _vector(rec, objs)) is not None
    ]
    front = [(v, rec) for v, rec in cands if not any(dominates(w, v) for w, _ in cands)]
    front.sort(key=lambda item: (item[0], item[1]["trial_id"]))
    return [rec for _, rec in front]


def configuration_front(
    records: Iterable[Mapping[str, Any]], objectives: Iterable[Any] | None = None
) -> list[Record]:
    """The Pareto front of the configurations (``sd_tune.configurations``): the seeds of a
    configuration enter as one point, each objective the mean over its completed seeds. The
    baseline's seeds (``search.baseline``) are no configuration of the search's: left out."""
    objs = as_objectives(objectives)
    searched = [r for r in check_records(records) if not is_baseline(r)]
    return pareto_front(configurations(searched, objs), objs)


def time_to_accuracy(
    records: Iterable[Mapping[str, Any]],
    metric: str = "val_acc",
    time_key: str = "train_time_s",
    *,
    mode: str = "max",
) -> list[dict[str, Any]]:
    """The best ``metric`` reachable within each budget of ``time_key`` seconds.

    Every epoch report of every trial counts, whatever the trial's status: the seconds a
    stopped-early or failed trial spent before it stopped were really spent, and what it had
    reached by then was really reached. (A record without ``history`` contributes its
    ``final`` report.) Returns the step function as points ``{"time_s", metric, "trial_id",
    "epoch"}`` sorted by time, each strictly better than every point before it; of reports at
    the same time the better one is kept. ``mode="min"`` is for metrics such as a loss.

    >>> recs = [{"trial_id": "a", "history": [{"epoch": 1, "val_acc": .5, "train_time_s": 10},
    ...                                       {"epoch": 2, "val_acc": .7, "train_time_s": 20}]},
    ...         {"trial_id": "b", "history": [{"epoch": 1, "val_acc": .6, "train_time_s": 15}]}]
    >>> [(p["time_s"], p["val_acc"], p["trial_id"]) for p in time_to_accuracy(recs)]
    [(10.0, 0.5, 'a'), (15.0, 0.6, 'b'), (20.0, 0.7, 'a')]
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of 'max', 'min', but got {mode!r}")
    sign = -1.0 if mode == "max" else 1.0
    reports = []
    for rec in check_records(records):
        history = rec.get("history") or ([record_final(rec)] if record_final(rec) else [])
        for report in history:
            if not isinstance(report, Mapping):
                continue
            t, value = number(report.get(time_key)), number(report.get(metric))
            if t is not None and value is not None:
                reports.append((t, sign * value, rec["trial_id"], report.get("epoch"), value))
    reports.sort(key=lambda r: (r[0], r[1], r[2], number(r[3]) or 0.0))
    points: list[dict[str, Any]] = []
    best = math.inf
    for t, key, trial_id, epoch, value in reports:
        if key < best:
            best = key
            points.append({"time_s": t, metric: value, "trial_id": trial_id, "epoch": epoch})
    return points
