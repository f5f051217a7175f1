"""Results of a search: the Pareto front, time to accuracy and the report's files
(docs/design.md §4).

The input is a list of trial records, the plain dicts the search layer hands over (their
fields: ``sd_tune.records``). Only *completed* trials enter a Pareto front: a stopped-early,
failed or running trial's last values are partial. :func:`write_results` writes every file of
a report (``trials.csv``, ``trials.json``, ``pareto.json``, ``time_to_accuracy.json``,
``summary.md``), and through ``sd_tune.tensorboard`` the figures and the TensorBoard entries.
Every file is written in one step (a temporary file or folder, then a rename), so an
interrupted report or a full disk leaves the previous report's files whole. Nothing here
imports Ray or torch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sd_tune import verdict
from sd_tune.comparison import BASELINE_KEY, COMPARISON_FILE, Comparison, compare, is_baseline
from sd_tune.config import Objective
from sd_tune.configurations import configurations
from sd_tune.records import (
    STATUSES,
    Record,
    check_records,
    format_value,
    jsonable,
    metric_keys,
    number,
    record_final,
    record_params,
)
from sd_tune.storage import replace_file
from sd_tune.tensorboard import (
    TENSORBOARD_DIR,
    drop_rate_figure,
    goal,
    pareto_figure,
    png,
    write_tensorboard,
)

DEFAULT_OBJECTIVES = (Objective("val_acc", "max"), Objective("train_time_s", "min"))
MODES = ("max", "min")
FIXED_COLUMNS = ("trial_id", "status", "error")
PARETO_PNG = "pareto.png"
DROP_RATE_PNG = "drop_rate.png"

__all__ = [
    "DEFAULT_OBJECTIVES",
    "STATUSES",
    "TENSORBOARD_DIR",
    "Record",
    "dominates",
    "format_pareto_table",
    "load_records",
    "pareto_front",
    "summary_markdown",
    "time_to_accuracy",
    "write_results",
]


# --------------------------------------------------------------------------- small helpers


def _objectives(objectives: Iterable[Any] | None) -> list[Objective]:
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
    objs = _objectives(objectives)
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
    objs = _objectives(objectives)
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


# --------------------------------------------------------------------------- tables


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
    header, rows = _table_rows(front, _objectives(objectives), params)
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


def load_records(path: str | Path) -> list[Record]:
    """The trial records of a ``trials.json`` written by :func:`write_results` (or its folder).

    Also accepts a plain JSON list of records.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = write_results(folder, "demo", [{"trial_id": "a", "status": "pending"}],
    ...                       tensorboard=False, figure=False)
    ...     print([r["trial_id"] for r in load_records(folder)])
    ['a']
    """
    path = Path(path)
    if path.is_dir():
        path = path / "trials.json"
    data = json.loads(path.read_text())
    records = data.get("trials") if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of trial records or an object with 'trials'")
    return check_records(records)


def _write_csv(path: Path, records: Sequence[Record], objectives: Sequence[Objective]) -> None:
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


def _front_entry(rank: int, rec: Mapping[str, Any], objectives: Sequence[Objective]) -> dict:
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

    lines += [f"## Best by {objectives[0].metric}", ""]
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

    lines += [
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

    failed = [r for r in records if r.get("status") == "failed"]
    if failed:
        lines += ["## Failed trials", ""]
        for rec in failed:
            epoch = record_final(rec).get("epoch")
            where = f" (last report: epoch {format_value(epoch)})" if epoch is not None else ""
            lines.append(f"- `{rec['trial_id']}`{where}: {_reason(rec.get('error'))}")
        lines.append("")

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


# --------------------------------------------------------------------------- everything


def write_results(
    exp_dir: str | Path,
    name: str,
    records: Iterable[Mapping[str, Any]],
    objectives: Iterable[Any] | None = None,
    *,
    tensorboard: bool = True,
    figure: bool = True,
    location: str | None = None,
) -> dict[str, Path]:
    """Write every file of an experiment's report under ``exp_dir`` and return their paths.

    Files: ``trials.csv`` (one row per trial: ``param.<key>`` columns, one column per final
    metric, ``epochs_reported``, ``error``), ``trials.json`` (``{"name", "objectives",
    "trials"}`` with the complete records, per-epoch ``history`` included, non-finite numbers
    as ``null``), ``pareto.json``, ``time_to_accuracy.json`` and ``summary.md``; with
    ``figure``, ``pareto.png`` and ``drop_rate.png`` (see ``sd_tune.tensorboard``); with
    ``tensorboard``, the TensorBoard entries in ``exp_dir/tensorboard/`` (written by
    ``sd_tune.tensorboard.write_tensorboard``): ``tensorboard --logdir exp_dir`` shows them.

    Args:
        exp_dir: the local folder the files go to (made if missing).
        name: the experiment's name.
        records: the trial records (see ``sd_tune.records``), each with a unique ``trial_id``.
        objectives: each an ``Objective``, a ``{"metric", "mode"}`` dict or a
            ``(metric, mode)`` pair; default: max ``val_acc``, min ``train_time_s``.
        tensorboard: write the TensorBoard entries.
        figure: write the figures (also into TensorBoard's Images).
        location: where the experiment is stored, if not ``exp_dir`` (a URI whose report is
            written locally first), for the ``tensorboard --logdir`` line of ``summary.md``.

    Returns:
        The paths written, by key: ``trials_csv``, ``trials_json``, ``pareto_json``,
        ``time_to_accuracy_json``, ``summary_md``, and ``figure_png``, ``drop_rate_png``,
        ``tensorboard`` where written.

    Raises:
        ValueError: a record without a unique ``trial_id``, or a bad objective.
        OSError: a file could not be written; the previous report's files stay whole.

    >>> import tempfile
    >>> recs = [{"trial_id": "a", "status": "completed", "params": {"sd.drop_rate": 0.1},
    ...          "final": {"val_acc": 0.9, "train_time_s": 12.0}}]
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     paths = write_results(folder, "demo", recs, tensorboard=False, figure=False)
    ...     front = json.loads(paths["pareto_json"].read_text())["trials"]
    >>> sorted(paths)
    ['pareto_json', 'summary_md', 'time_to_accuracy_json', 'trials_csv', 'trials_json']
    >>> front[0]["trial_id"], front[0]["objectives"]
    ('a', {'val_acc': 0.9, 'train_time_s': 12.0})
    """
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    records = check_records(records)
    objs = _objectives(objectives)
    front = configuration_front(records, objs)
    tta = time_to_accuracy(records)
    comparisons = compare(records)
    paths = {
        key: exp_dir / file
        for key, file in (
            ("trials_csv", "trials.csv"),
            ("trials_json", "trials.json"),
            ("pareto_json", "pareto.json"),
            ("time_to_accuracy_json", "time_to_accuracy.json"),
            ("summary_md", "summary.md"),
        )
    }
    obj_json = [{"metric": o.metric, "mode": o.mode} for o in objs]

    def dump(path: Path, data: Any) -> None:
        replace_file(path, json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")

    _write_csv(paths["trials_csv"], records, objs)
    dump(paths["trials_json"], {"name": name, "objectives": obj_json, "trials": records})
    dump(
        paths["pareto_json"],
        {
            "name": name,
            "objectives": obj_json,
            "trials": [_front_entry(i + 1, rec, objs) for i, rec in enumerate(front)],
        },
    )
    dump(
        paths["time_to_accuracy_json"],
        {"metric": "val_acc", "time_key": "train_time_s", "points": tta},
    )
    if comparisons:
        paths["comparison_json"] = exp_dir / COMPARISON_FILE
        dump(
            paths["comparison_json"],
            {
                "name": name,
                "about": "stochastic depth minus no stochastic depth (drop rate 0, same seeds) "
                "for each depth's best configuration; Welch 95% intervals, test_acc's p "
                "Holm-adjusted across depths",
                "comparisons": [c.to_dict() for c in comparisons],
                "sentences": [verdict.sentence(c) for c in comparisons],
            },
        )
    summary = summary_markdown(
        location or exp_dir,
        name,
        records,
        objs,
        front,
        tta,
        figures=figure,
        comparisons=comparisons,
    )
    replace_file(paths["summary_md"], summary)
    images = {}
    if figure:
        images = {
            "pareto_front": png(pareto_figure(records, objs, front, tta)),
            "drop_rate": png(drop_rate_figure(records, objs[0])),
        }
        paths["figure_png"] = exp_dir / PARETO_PNG
        paths["drop_rate_png"] = exp_dir / DROP_RATE_PNG
        replace_file(paths["figure_png"], images["pareto_front"])
        replace_file(paths["drop_rate_png"], images["drop_rate"])
    if tensorboard:
        paths["tensorboard"] = exp_dir / TENSORBOARD_DIR
        write_tensorboard(paths["tensorboard"], name, records, objs, summary=summary, images=images)
    return paths
