"""A search's configurations: the seeds of one configuration (``search.repeats``: records that
share a ``config_id``) as one entry, each metric the mean over the seeds that completed, each
objective's spread over them (``sd_tune.stats``). A record without a ``config_id`` (one seed
per configuration, or an experiment written before seeds existed) is a configuration of its
own, n = 1. The entries look like trial records, so the front and the tables take either."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sd_tune import storage as store
from sd_tune.config import Objective
from sd_tune.records import Record, number, record_final, record_params
from sd_tune.stats import spread

SPREAD_EXTRA = ("test_acc",)  # spread kept beside the objectives'
TOLD_FILE = "sd_tune_told.json"  # in an experiment: what Optuna was told, per configuration
MAX_TOLD_BYTES = 16 * 2**20


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
        "completed_seeds": [r.get("trial_id") for r in done],
        "history": [],
    }
    errors = [r.get("error") for r in seeds if r.get("error")]
    if not done and errors:
        entry["error"] = errors[0]
    return entry


def disagreements(
    entries: Iterable[Mapping[str, Any]],
    told: Mapping[str, Any],
    objectives: Sequence[Objective],
) -> list[str]:
    """A line for each configuration whose mean Optuna was told (``told``: the searcher's
    :data:`TOLD_FILE`) is not the report's: other seeds, or other values. That happens when
    Tune's state was restored from an earlier copy, or a seed ran again after Optuna was told.

    >>> entry = {"config_id": "c0", "completed_seeds": ["a", "b"], "final": {"val_acc": 0.8}}
    >>> disagreements([entry], {"c0": {"seeds": ["a"], "means": {"val_acc": 0.9}}},
    ...               [Objective("val_acc", "max")])[0][:72]
    'configuration c0: Optuna was told val_acc 0.9 (mean of 1 seed), the repo'
    """
    out = []
    for entry in entries:
        config_id = entry.get("config_id")
        said = told.get(config_id) if isinstance(config_id, str) else None
        if not isinstance(said, Mapping):
            continue
        seeds = said.get("seeds") if isinstance(said.get("seeds"), list) else []
        means = said.get("means") if isinstance(said.get("means"), Mapping) else {}
        final = record_final(entry)
        same = sorted(map(str, seeds)) == sorted(map(str, entry.get("completed_seeds") or []))
        for o in objectives:
            a, b = number(means.get(o.metric)), number(final.get(o.metric))
            if a is not None and b is not None and not math.isclose(a, b, rel_tol=1e-9):
                same = False
        if same:
            continue
        metric = objectives[0].metric
        a, b = number(means.get(metric)), number(final.get(metric))
        n_told, n = len(seeds), len(entry.get("completed_seeds") or [])
        out.append(
            f"configuration {config_id}: Optuna was told {metric} "
            f"{'-' if a is None else f'{a:.4g}'} (mean of {n_told} seed{'s' * (n_told != 1)}), "
            f"the report's is {'-' if b is None else f'{b:.4g}'} (of {n}): Tune's state was "
            "restored from an earlier copy, or a seed ran again after Optuna was told, and "
            "the search went on from what Optuna was told"
        )
    return out


def read_told(exp_dir: str) -> dict[str, Any]:
    """The experiment's :data:`TOLD_FILE` (a folder or a URI), read as JSON; {} when it has
    none (no seeds per configuration, or an experiment written before) or it cannot be read."""
    try:
        told = json.loads(store.read_bytes(store.join(exp_dir, TOLD_FILE), MAX_TOLD_BYTES))
    except (OSError, ValueError):  # ValueError: TooLarge, or not JSON
        return {}
    return told if isinstance(told, dict) else {}
