"""A search's configurations: the seeds of one configuration (``search.repeats``: records that
share a ``config_id``) as one entry, each metric the mean over the seeds that completed, each
objective's spread over them (``sd_tune.stats``). A record without a ``config_id`` (one seed
per configuration, or an experiment written before seeds existed) is a configuration of its
own, n = 1. The entries look like trial records, so the front and the tables take either."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sd_tune.config import Objective
from sd_tune.records import Record, number, record_final, record_params
from sd_tune.stats import spread

SPREAD_EXTRA = ("test_acc",)  # spread kept beside the objectives'


def configurations(
    records: Iterable[Mapping[str, Any]], objectives: Sequence[Objective]
) -> list[Record]:
    """One entry per configuration, in the order of their first record.

    >>> seeds = [{"trial_id": t, "config_id": "c0", "status": "completed",
    ...           "params": {"sd.rate": 0.1, "train.seed": s}, "final": {"val_acc": v}}
    ...          for t, s, v in (("a", 1, 0.8), ("b", 2, 0.9))]
    >>> (c,) = configurations(seeds, [Objective("val_acc", "max")])
    >>> c["trial_id"], c["n"], c["params"], round(c["final"]["val_acc"], 3), c["seeds"]
    ('c0', 2, {'sd.rate': 0.1}, 0.85, ['a', 'b'])
    """
    metrics = list(dict.fromkeys([*(o.metric for o in objectives), *SPREAD_EXTRA]))
    groups: dict[str, list[Mapping[str, Any]]] = {}
    order: list[Mapping[str, Any] | str] = []
    for rec in records:
        config_id = rec.get("config_id")
        if not isinstance(config_id, str):
            order.append(rec)
            continue
        if config_id not in groups:
            groups[config_id] = []
            order.append(config_id)
        groups[config_id].append(rec)
    return [
        _group(item, groups[item], metrics) if isinstance(item, str) else _single(item, metrics)
        for item in order
    ]


def _spreads(finals: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    out = {}
    for m in metrics:
        values = [v for f in finals if (v := number(f.get(m))) is not None and math.isfinite(v)]
        if values:
            out[m] = spread(values).to_dict()
    return out


def _single(rec: Mapping[str, Any], metrics: Sequence[str]) -> Record:
    done = rec.get("status") == "completed"
    entry = dict(rec)
    entry["n"] = 1 if done else 0
    entry["spread"] = _spreads([record_final(rec)], metrics) if done else {}
    return entry


def _group(config_id: str, seeds: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> Record:
    done = [r for r in seeds if r.get("status") == "completed"]
    finals = [record_final(r) for r in done]
    statuses = {r.get("status") for r in seeds}
    if done:
        status = "completed"
    elif statuses & {"running", "pending"}:
        status = "running"
    else:
        status = str(seeds[0].get("status"))
    keys = dict.fromkeys(k for f in finals for k in f)
    final = {}
    for k in keys:
        values = [v for f in finals if (v := number(f.get(k))) is not None]
        if values:
            final[k] = math.fsum(values) / len(values)
    params = {k: v for k, v in record_params(seeds[0]).items() if k != "train.seed"}
    entry: Record = {
        "trial_id": config_id,
        "config_id": config_id,
        "status": status,
        "params": params,
        "final": final,
        "n": len(done),
        "spread": _spreads(finals, metrics),
        "seeds": [r.get("trial_id") for r in seeds],
        "history": [],
    }
    errors = [r.get("error") for r in seeds if r.get("error")]
    if not done and errors:
        entry["error"] = errors[0]
    return entry
