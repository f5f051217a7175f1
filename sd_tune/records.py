"""The trial record: the plain dict the search hands to the report, and how its values are read.

A record is JSON-serialisable::

    {"trial_id": "a1b2c3d4", "status": "completed",  # or stopped_early, failed, running,
                                                      # pending, missing (its folder is gone),
                                                      # abandoned (Tune no longer lists it)
     "params": {"stochastic_depth.drop_rate": 0.23, "model.depth": 20},  # the searched values
     "config": {...},           # optional: the full flat config
     "final": {"val_acc": 0.91, "train_time_s": 120.3, "test_acc": 0.90, ...},  # last report
     "history": [{"epoch": 1, "val_acc": ..., "train_time_s": ...}, ...],       # every report
     "error": None or "FloatingPointError: ...", "logdir": "..."}                # optional

Metrics that are missing, not numbers, or not finite (NaN, inf) count as missing everywhere
(:func:`number`). ``sd_tune.report`` (the analysis, the files, the figures and the
TensorBoard entries) reads records through this module. Nothing here imports Ray or torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sd_tune.config import EPOCH_METRICS, FINAL_METRICS, Objective

STATUSES = ("completed", "stopped_early", "failed", "running", "pending", "missing", "abandoned")

Record = dict[str, Any]


def number(value: Any) -> float | None:
    """``value`` as a finite float, else ``None`` (bools, strings, NaN and inf are not metrics).

    >>> number(3), number(0.5), number(True), number(float("nan")), number("1")
    (3.0, 0.5, None, None, None)
    """
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()  # numpy / torch scalars
        except (TypeError, ValueError):
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def record_final(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    """The record's last report (``{}`` when it has none).

    >>> record_final({"trial_id": "a", "final": {"val_acc": 0.9}}), record_final({})
    ({'val_acc': 0.9}, {})
    """
    final = rec.get("final")
    return final if isinstance(final, Mapping) else {}


def record_params(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    """The record's searched values (``{}`` when it has none).

    >>> record_params({"params": {"model.depth": 20}})
    {'model.depth': 20}
    """
    params = rec.get("params")
    return params if isinstance(params, Mapping) else {}


def record_setting(rec: Mapping[str, Any], key: str) -> Any:
    """The record's value of setting ``key`` (``section.key``): searched, else from its
    full config, else None.

    >>> rec = {"params": {"model.depth": 20}, "config": {"stochastic_depth.drop_rate": 0.1}}
    >>> record_setting(rec, "model.depth"), record_setting(rec, "stochastic_depth.drop_rate")
    (20, 0.1)
    """
    params = record_params(rec)
    if key in params:
        return params[key]
    config = rec.get("config")
    return config.get(key) if isinstance(config, Mapping) else None


def check_records(records: Iterable[Any]) -> list[Record]:
    """``records`` as a list, each checked to be a dict with a unique, non-empty ``trial_id``.

    >>> check_records([{"trial_id": "a"}, {"trial_id": "a"}])
    Traceback (most recent call last):
    ...
    ValueError: trial ids must be unique, but 'a' appears twice
    """
    out, seen = [], set()
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise ValueError(f"trial record {i} must be a dict, but got {type(rec).__name__}")
        if not isinstance(rec.get("trial_id"), str) or not rec["trial_id"]:
            raise ValueError(
                f"trial record {i} needs a non-empty string 'trial_id', but got "
                f"{rec.get('trial_id')!r}"
            )
        if rec["trial_id"] in seen:
            raise ValueError(f"trial ids must be unique, but {rec['trial_id']!r} appears twice")
        seen.add(rec["trial_id"])
        out.append(rec)  # type: ignore[arg-type]
    return out


def metric_keys(records: Iterable[Mapping[str, Any]], objectives: Sequence[Objective]) -> list[str]:
    """Every final metric seen: objectives first, then the reported order, then the rest.

    >>> metric_keys([{"final": {"zeta": 1, "test_acc": 0.8, "val_acc": 0.9}}],
    ...             [Objective("val_acc", "max")])
    ['val_acc', 'test_acc', 'zeta']
    """
    seen: dict[str, None] = {}
    for rec in records:
        seen.update(dict.fromkeys(record_final(rec)))
    order = [o.metric for o in objectives] + list(EPOCH_METRICS) + list(FINAL_METRICS)
    known = [k for k in dict.fromkeys(order) if k in seen]
    return known + sorted(k for k in seen if k not in known)


def jsonable(value: Any) -> Any:
    """A strict-JSON copy: non-finite floats become ``None``, tuples lists, the rest ``str``.

    >>> jsonable({"a": (1, float("inf")), 2: {3}})
    {'a': [1, None], '2': '{3}'}
    """
    if hasattr(value, "item") and not isinstance(value, (str, bytes, Mapping, list, tuple)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def format_value(value: Any, width: int | None = None) -> str:
    """A short text form: floats to 4 significant digits, ``-`` for missing; text longer than
    ``width`` is cut and marked ``~``.

    >>> format_value(0.123456), format_value(None), format_value("train_trial_1234", 8)
    ('0.1235', '-', 'train_t~')
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        text = "-" if value is None else str(value)
    elif isinstance(value, (bool, int, str)):
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.0f}" if abs(value) >= 1e5 else f"{value:.4g}"
    else:
        text = json.dumps(jsonable(value))
    if width is not None and len(text) > width:
        text = text[: width - 1] + "~"
    return text
