"""The report's tables: the terminal's front table, ``trials.csv``, ``pareto.json``'s
entries and ``summary.md``. Nothing here imports Ray or torch."""

from __future__ import annotations

import csv
import io
import json
import shlex
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sd_tune import verdict
from sd_tune.comparison import BASELINE_KEY, Comparison
from sd_tune.config import Objective
from sd_tune.records import (
    STATUSES,
    Record,
    format_value,
    jsonable,
    metric_keys,
    number,
    record_final,
    record_params,
)
from sd_tune.report.analysis import as_objectives
from sd_tune.report.figures import goal
from sd_tune.storage import replace_file

FIXED_COLUMNS = ("trial_id", "status", "error")
PARETO_PNG = "pareto.png"
DROP_RATE_PNG = "drop_rate.png"


def _short_names(keys: Sequence[str]) -> list[str]:
    """Column headers: the last dotted part of each key where that is unambiguous."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    counts = Counter(last)
    return [s if counts[s] == 1 else k for k, s in zip(keys, last)]


def _param_keys(records: Iterable[Mapping[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for rec in records:
        keys.update(dict.fromkeys(record_params(rec)))
    return list(keys)


def _reason(error: Any) -> str:
    """One line for a failure: a traceback's last line, else the message, at most 300 chars."""
    if not error:
        return "(no error message)"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines and lines[0].startswith("Traceback") else " ".join(lines)
    return text if len(text) <= 300 else text[:299] + "…"


def _table_rows(
    front: Sequence[Mapping[str, Any]],
    objectives: Sequence[Objective],
    params: Sequence[str] | None,
) -> tuple[list[str], list[list[Any]]]:
    keys = list(params) if params is not None else _param_keys(front)
    metrics = [o.metric for o in objectives]
    extra = [
        m
        for m in ("test_acc",)
        if m not in metrics and any(number(record_final(r).get(m)) is not None for r in front)
    ]
    seeded = any("config_id" in rec for rec in front)  # search.repeats: means of seeds
    header = (
        ["rank", "configuration" if seeded else "trial"]
        + _short_names(keys)
        + [f"{o.metric} ({o.mode})" for o in objectives]
        + extra
        + (["n"] if seeded else [])
    )
    rows = [
        [i + 1, rec.get("trial_id")]
        + [record_params(rec).get(k) for k in keys]
        + [_mean_cell(rec, m) for m in metrics + extra]
        + ([rec.get("n")] if seeded else [])
        for i, rec in enumerate(front)
    ]
    return header, rows


def _mean_cell(rec: Mapping[str, Any], metric: str) -> Any:
    """A metric's value, or a configuration's mean ± its 95% CI half-width when its seeds
    give one (never ± 0 for one seed).

    >>> _mean_cell({"final": {"val_acc": 0.85}, "spread": {"val_acc": {"mean": 0.85,
    ...             "ci_low": 0.8, "ci_high": 0.9}}}, "val_acc")
    '0.85 ± 0.05'
    >>> _mean_cell({"final": {"val_acc": 0.85}}, "val_acc")
    0.85
    """
    value = number(record_final(rec).get(metric))
    s = (rec.get("spread") or {}).get(metric) or {}
    low, high = number(s.get("ci_low")), number(s.get("ci_high"))
    if value is None or low is None or high is None:
        return value
    return f"{format_value(value)} ± {format_value((high - low) / 2)}"


def format_pareto_table(
    front: Sequence[Mapping[str, Any]],
    objectives: Iterable[Any] | None = None,
    params: Sequence[str] | None = None,
    *,
    max_width: int = 20,
) -> str:
    """A fixed-width table of a front for the terminal: rank, trial, params, objectives, test_acc.

    ``params`` are the parameter keys to show (default: every key in the front), headed by
    their last dotted part; ids and values longer than ``max_width`` are cut, marked ``~``.

    >>> front = [{"trial_id": "a", "params": {"sd.drop_rate": 0.1, "model.depth": 20},
    ...           "final": {"val_acc": 0.91, "train_time_s": 120.34, "test_acc": 0.9}}]
    >>> print(format_pareto_table(front))
    rank  trial  drop_rate  depth  val_acc (max)  train_time_s (min)  test_acc
       1  a            0.1     20           0.91               120.3       0.9
    """
    header, rows = _table_rows(front, as_objectives(objectives), params)
    if not rows:
        return "(empty Pareto front: no completed trial has every objective metric)"
    cells = [[format_value(v, max_width) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)
        for i in range(len(header))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
        ).rstrip()

    return "\n".join([line(header)] + [line(r) for r in cells])


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return format_value(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- files


def write_csv(path: Path, records: Sequence[Record], objectives: Sequence[Objective]) -> None:
    pkeys, mkeys = _param_keys(records), metric_keys(records, objectives)
    mcols = [f"metric.{m}" if m in FIXED_COLUMNS or m.startswith("param.") else m for m in mkeys]
    seeds = [k for k in ("config_id", "repeat", BASELINE_KEY) if any(k in rec for rec in records)]
    header = [
        "trial_id",
        *seeds,  # a seed of a configuration (search.repeats), a baseline's (search.baseline)
        "status",
        *(f"param.{k}" for k in pkeys),
        *mcols,
        "epochs_reported",
        "error",
    ]

    def cell(value: Any) -> Any:
        value = jsonable(value)
        if value is None:
            return ""
        return json.dumps(value) if isinstance(value, (list, dict)) else value

    f = io.StringIO(newline="")
    writer = csv.writer(f)
    writer.writerow(header)
    for rec in records:
        params, final = record_params(rec), record_final(rec)
        writer.writerow(
            [
                rec["trial_id"],
                *(cell(rec.get(k)) for k in seeds),
                rec.get("status", ""),
                *(cell(params.get(k)) for k in pkeys),
                *(cell(final.get(m)) for m in mkeys),
                len(rec.get("history") or []),
                cell(rec.get("error")),
            ]
        )
    replace_file(path, f.getvalue())


def front_entry(rank: int, rec: Mapping[str, Any], objectives: Sequence[Objective]) -> dict:
    final = record_final(rec)
    entry = {
        "rank": rank,
        "trial_id": rec["trial_id"],
        "params": jsonable(record_params(rec)),
        "objectives": {o.metric: number(final.get(o.metric)) for o in objectives},
    }
    if number(final.get("test_acc")) is not None:
        entry["test_acc"] = number(final.get("test_acc"))
    if "n" in rec:  # a configuration: its completed seeds and each objective's spread
        entry["n"] = rec["n"]
        entry["spread"] = jsonable(rec.get("spread") or {})
    if "config_id" in rec:
        entry["config_id"] = rec["config_id"]
        entry["seeds"] = list(rec.get("seeds") or [])
    return entry


def summary_markdown(
    exp_dir: str | Path,
    name: str,
    records: Sequence[Record],
    objectives: Sequence[Objective],
    front: Sequence[Record],
    tta: Sequence[Mapping[str, Any]],
    *,
    figures: bool = False,
    comparisons: Sequence[Comparison] = (),
) -> str:
    """The ``summary.md`` text (also shown in TensorBoard's Text tab); ``figures``: show
    ``pareto.png`` and ``drop_rate.png``, written beside it.

    >>> text = summary_markdown("results/demo", "demo", [], [Objective("val_acc", "max")], [], [])
    >>> text.splitlines()[:3]
    ['# sd-tune results: demo', '', 'No trials: nothing was run or recorded.']
    """
    counts = Counter(str(r.get("status", "unknown")) for r in records)
    order = [s for s in STATUSES if counts[s]] + sorted(s for s in counts if s not in STATUSES)
    directions = goal(objectives, quote="`")
    lines = [f"# sd-tune results: {name}", ""]
    if not records:
        lines += ["No trials: nothing was run or recorded.", ""]
    else:
        by_status = ", ".join(f"{counts[s]} {s.replace('_', ' ')}" for s in order)
        lines += [f"{len(records)} trial{'s' if len(records) != 1 else ''}: {by_status}.", ""]
    lines += [f"Objectives: {directions}.", ""]

    lines += _best_lines(front, objectives)
    lines += verdict.markdown(list(comparisons))

    lines += ["## Pareto front (completed trials only)", ""]
    if any("config_id" in rec for rec in front):
        lines += [
            "Each configuration is one point: its objectives are the means over its completed "
            "seeds, ± the half-width of their 95% Student-t interval (none for n = 1).",
            "",
        ]
    if front:
        lines += [_markdown_table(*_table_rows(front, objectives, None)), ""]
    else:
        lines += ["Empty: no completed trial has every objective metric.", ""]
    if figures:
        lines += [f"![Pareto front (TensorBoard: Images, pareto_front)]({PARETO_PNG})", ""]
        metric = objectives[0].metric
        lines += [
            "## Drop rate and depth",
            "",
            f"Final `{metric}` of every completed trial (filled) and every trial stopped "
            "early (hollow) against `stochastic_depth.drop_rate`: one colour per depth, "
            "one marker per drop distribution and method.",
            "",
            f"![{metric} against drop rate (TensorBoard: Images, drop_rate)]({DROP_RATE_PNG})",
            "",
        ]

    lines += _time_to_accuracy_lines(tta) + _failed_lines(records)

    lines += [
        "## Files and TensorBoard",
        "",
        "`trials.csv`, `trials.json` (with every epoch report), `pareto.json`, "
        f"`time_to_accuracy.json`, `{PARETO_PNG}`, `{DROP_RATE_PNG}`.",
        "",
        "In TensorBoard (`tensorboard/`): HParams (one session per trial), the figures "
        "(Images), this summary (Text) and every trial's per-epoch curves (Scalars, "
        "`epoch/<metric>`):",
        "",
        f"    tensorboard --logdir {shlex.quote(str(exp_dir))}",
        "",
    ]
    return "\n".join(lines)


def _best_lines(front: Sequence[Record], objectives: Sequence[Objective]) -> list[str]:
    """The summary's section on the best trial or configuration (the front's first)."""
    lines = [f"## Best by {objectives[0].metric}", ""]
    if front:
        best = front[0]
        values = ", ".join(
            f"{m} {format_value(_mean_cell(best, m))}"
            for m in dict.fromkeys([*(o.metric for o in objectives), "test_acc"])
            if number(record_final(best).get(m)) is not None
        )
        params = ", ".join(f"{k}={format_value(v)}" for k, v in record_params(best).items())
        what = f"Trial `{best['trial_id']}`"
        if "config_id" in best:
            what = f"Configuration `{best['trial_id']}` (mean ± 95% CI of n = {best['n']} seeds)"
        lines += [f"{what}: {values}; params: {params or '(none)'}.", ""]
    else:
        lines += ["None: no completed trial has every objective metric.", ""]
    return lines


def _time_to_accuracy_lines(tta: Sequence[Mapping[str, Any]]) -> list[str]:
    """The summary's time-to-accuracy section."""
    lines = [
        "## Time to accuracy",
        "",
        "Best `val_acc` reachable within each `train_time_s` budget, over every epoch "
        "report of every trial (stopped-early and failed trials included: their time "
        "was spent).",
        "",
    ]
    if tta:
        rows = [[p["time_s"], p["val_acc"], p["trial_id"], p.get("epoch")] for p in tta]
        lines += [_markdown_table(["train_time_s <=", "val_acc", "trial", "epoch"], rows), ""]
    else:
        lines += ["No epoch report has both `val_acc` and `train_time_s`.", ""]
    return lines


def _failed_lines(records: Sequence[Record]) -> list[str]:
    """The summary's section listing the failed trials and why (none: no section)."""
    lines: list[str] = []
    failed = [r for r in records if r.get("status") == "failed"]
    if failed:
        lines += ["## Failed trials", ""]
        for rec in failed:
            epoch = record_final(rec).get("epoch")
            where = f" (last report: epoch {format_value(epoch)})" if epoch is not None else ""
            lines.append(f"- `{rec['trial_id']}`{where}: {_reason(rec.get('error'))}")
        lines.append("")
    return lines
