"""Results of a search: Pareto fronts, time to accuracy, files and TensorBoard (docs/design.md §4).

The input is a list of trial records, plain JSON-serialisable dicts handed over by the search
layer::

    {"trial_id": "a1b2c3d4", "status": "completed",  # or stopped_early, failed, running,
                                                      # pending, missing (its folder is gone),
                                                      # abandoned (Tune no longer lists it)
     "params": {"stochastic_depth.drop_rate": 0.23, "model.depth": 20},  # the searched values
     "config": {...},           # optional: the full flat config
     "final": {"val_acc": 0.91, "train_time_s": 120.3, "test_acc": 0.90, ...},  # last report
     "history": [{"epoch": 1, "val_acc": ..., "train_time_s": ...}, ...],       # every report
     "error": None or "FloatingPointError: ...", "logdir": "..."}                # optional

Only *completed* trials enter a Pareto front: a stopped-early, failed or running trial's last
values are partial. Metrics that are missing, not numbers, or not finite (NaN, inf) count as
missing everywhere. Nothing here imports Ray or torch: TensorBoard event files are written
with TensorBoard's own event writer and protocol buffers. Every file is written in one step
(a temporary file or folder, then a rename), so an interrupted report or a full disk leaves
the previous report's files whole.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shlex
import shutil
import struct
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sd_tune.config import EPOCH_METRICS, FINAL_METRICS, Objective
from sd_tune.storage import replace_file

DEFAULT_OBJECTIVES = (Objective("val_acc", "max"), Objective("train_time_s", "min"))
STATUSES = ("completed", "stopped_early", "failed", "running", "pending", "missing",
            "abandoned")
MODES = ("max", "min")
TENSORBOARD_DIR = "tensorboard"  # under the experiment folder
FIXED_COLUMNS = ("trial_id", "status", "error")

Record = dict[str, Any]


# --------------------------------------------------------------------------- small helpers


def _number(value: Any) -> float | None:
    """``value`` as a finite float, else ``None`` (bools, strings, NaN and inf are not metrics)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()  # numpy / torch scalars
        except (TypeError, ValueError):
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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
            raise ValueError(f"objective mode must be one of 'max', 'min', but got {mode!r} "
                             f"for metric {metric!r}")
        out.append(Objective(metric, mode))
    if not out:
        raise ValueError("objectives must not be empty")
    return out


def _check_records(records: Iterable[Any]) -> list[Record]:
    out, seen = [], set()
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise ValueError(f"trial record {i} must be a dict, but got {type(rec).__name__}")
        if not isinstance(rec.get("trial_id"), str) or not rec["trial_id"]:
            raise ValueError(f"trial record {i} needs a non-empty string 'trial_id', but got "
                             f"{rec.get('trial_id')!r}")
        if rec["trial_id"] in seen:
            raise ValueError(f"trial ids must be unique, but {rec['trial_id']!r} appears twice")
        seen.add(rec["trial_id"])
        out.append(rec)  # type: ignore[arg-type]
    return out


def _final(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    final = rec.get("final")
    return final if isinstance(final, Mapping) else {}


def _params(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    params = rec.get("params")
    return params if isinstance(params, Mapping) else {}


def _vector(rec: Mapping[str, Any], objectives: Sequence[Objective]) -> list[float] | None:
    """The objective values of a record, each oriented so that smaller is better."""
    final = _final(rec)
    out = []
    for obj in objectives:
        value = _number(final.get(obj.metric))
        if value is None:
            return None
        out.append(-value if obj.mode == "max" else value)
    return out


def _fmt(value: Any, width: int | None = None) -> str:
    """A short text form: floats to 4 significant digits, ``-`` for missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        text = "-" if value is None else str(value)
    elif isinstance(value, (bool, int, str)):
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.0f}" if abs(value) >= 1e5 else f"{value:.4g}"
    else:
        text = json.dumps(_jsonable(value))
    if width is not None and len(text) > width:
        text = text[: width - 1] + "~"
    return text


def _jsonable(value: Any) -> Any:
    """A strict-JSON copy: non-finite floats become ``None``, tuples lists, the rest ``str``."""
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
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _short_names(keys: Sequence[str]) -> list[str]:
    """Column headers: the last dotted part of each key where that is unambiguous."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    counts = Counter(last)
    return [s if counts[s] == 1 else k for k, s in zip(keys, last)]


def _param_keys(records: Iterable[Mapping[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for rec in records:
        keys.update(dict.fromkeys(_params(rec)))
    return list(keys)


def _metric_keys(records: Iterable[Mapping[str, Any]],
                 objectives: Sequence[Objective]) -> list[str]:
    """Every final metric seen: objectives first, then the reported order, then the rest."""
    seen: dict[str, None] = {}
    for rec in records:
        seen.update(dict.fromkeys(_final(rec)))
    order = [o.metric for o in objectives] + list(EPOCH_METRICS) + list(FINAL_METRICS)
    known = [k for k in dict.fromkeys(order) if k in seen]
    return known + sorted(k for k in seen if k not in known)


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


def pareto_front(records: Iterable[Mapping[str, Any]],
                 objectives: Iterable[Any] | None = None) -> list[Record]:
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
    cands = [(v, rec) for rec in _check_records(records)
             if rec.get("status") == "completed" and (v := _vector(rec, objs)) is not None]
    front = [(v, rec) for v, rec in cands if not any(dominates(w, v) for w, _ in cands)]
    front.sort(key=lambda item: (item[0], item[1]["trial_id"]))
    return [rec for _, rec in front]


def time_to_accuracy(records: Iterable[Mapping[str, Any]], metric: str = "val_acc",
                     time_key: str = "train_time_s", *, mode: str = "max") -> list[dict[str, Any]]:
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
    for rec in _check_records(records):
        history = rec.get("history") or ([_final(rec)] if _final(rec) else [])
        for report in history:
            if not isinstance(report, Mapping):
                continue
            t, value = _number(report.get(time_key)), _number(report.get(metric))
            if t is not None and value is not None:
                reports.append((t, sign * value, rec["trial_id"], report.get("epoch"), value))
    reports.sort(key=lambda r: (r[0], r[1], r[2], _number(r[3]) or 0.0))
    points: list[dict[str, Any]] = []
    best = math.inf
    for t, key, trial_id, epoch, value in reports:
        if key < best:
            best = key
            points.append({"time_s": t, metric: value, "trial_id": trial_id, "epoch": epoch})
    return points


# --------------------------------------------------------------------------- tables


def _table_rows(front: Sequence[Mapping[str, Any]], objectives: Sequence[Objective],
                params: Sequence[str] | None) -> tuple[list[str], list[list[Any]]]:
    keys = list(params) if params is not None else _param_keys(front)
    metrics = [o.metric for o in objectives]
    extra = [m for m in ("test_acc",) if m not in metrics
             and any(_number(_final(r).get(m)) is not None for r in front)]
    header = (["rank", "trial"] + _short_names(keys)
              + [f"{o.metric} ({o.mode})" for o in objectives] + extra)
    rows = [[i + 1, rec.get("trial_id")] + [_params(rec).get(k) for k in keys]
            + [_number(_final(rec).get(m)) for m in metrics + extra]
            for i, rec in enumerate(front)]
    return header, rows


def format_pareto_table(front: Sequence[Mapping[str, Any]], objectives: Iterable[Any] | None = None,
                        params: Sequence[str] | None = None, *, max_width: int = 20) -> str:
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
    cells = [[_fmt(v, max_width) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)
               for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(header)] + [line(r) for r in cells])


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return _fmt(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
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
    return _check_records(records)


def _write_csv(path: Path, records: Sequence[Record], objectives: Sequence[Objective]) -> None:
    pkeys, mkeys = _param_keys(records), _metric_keys(records, objectives)
    mcols = [f"metric.{m}" if m in FIXED_COLUMNS or m.startswith("param.") else m for m in mkeys]
    header = ["trial_id", "status", *(f"param.{k}" for k in pkeys), *mcols, "epochs_reported",
              "error"]

    def cell(value: Any) -> Any:
        value = _jsonable(value)
        if value is None:
            return ""
        return json.dumps(value) if isinstance(value, (list, dict)) else value

    f = io.StringIO(newline="")
    writer = csv.writer(f)
    writer.writerow(header)
    for rec in records:
        params, final = _params(rec), _final(rec)
        writer.writerow([rec["trial_id"], rec.get("status", ""),
                         *(cell(params.get(k)) for k in pkeys),
                         *(cell(final.get(m)) for m in mkeys),
                         len(rec.get("history") or []), cell(rec.get("error"))])
    replace_file(path, f.getvalue())


def _front_entry(rank: int, rec: Mapping[str, Any], objectives: Sequence[Objective]) -> dict:
    final = _final(rec)
    entry = {"rank": rank, "trial_id": rec["trial_id"], "params": _jsonable(_params(rec)),
             "objectives": {o.metric: _number(final.get(o.metric)) for o in objectives}}
    if _number(final.get("test_acc")) is not None:
        entry["test_acc"] = _number(final.get("test_acc"))
    return entry


def summary_markdown(exp_dir: str | Path, name: str, records: Sequence[Record],
                     objectives: Sequence[Objective], front: Sequence[Record],
                     tta: Sequence[Mapping[str, Any]]) -> str:
    """The ``summary.md`` text (also shown in TensorBoard's Text tab)."""
    counts = Counter(str(r.get("status", "unknown")) for r in records)
    order = [s for s in STATUSES if counts[s]] + sorted(s for s in counts if s not in STATUSES)
    goal = ", ".join(f"{'maximise' if o.mode == 'max' else 'minimise'} `{o.metric}`"
                     for o in objectives)
    lines = [f"# sd-tune results: {name}", ""]
    if not records:
        lines += ["No trials: nothing was run or recorded.", ""]
    else:
        by_status = ", ".join(f"{counts[s]} {s.replace('_', ' ')}" for s in order)
        lines += [f"{len(records)} trial{'s' if len(records) != 1 else ''}: {by_status}.", ""]
    lines += [f"Objectives: {goal}.", ""]

    lines += [f"## Best by {objectives[0].metric}", ""]
    if front:
        best = front[0]
        values = ", ".join(f"{m} {_fmt(_number(_final(best).get(m)))}"
                           for m in dict.fromkeys([*(o.metric for o in objectives), "test_acc"])
                           if _number(_final(best).get(m)) is not None)
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in _params(best).items())
        lines += [f"Trial `{best['trial_id']}`: {values}; params: {params or '(none)'}.", ""]
    else:
        lines += ["None: no completed trial has every objective metric.", ""]

    lines += ["## Pareto front (completed trials only)", ""]
    if front:
        lines += [_markdown_table(*_table_rows(front, objectives, None)), ""]
    else:
        lines += ["Empty: no completed trial has every objective metric.", ""]

    lines += ["## Time to accuracy", "",
              "Best `val_acc` reachable within each `train_time_s` budget, over every epoch "
              "report of every trial (stopped-early and failed trials included: their time "
              "was spent).", ""]
    if tta:
        rows = [[p["time_s"], p["val_acc"], p["trial_id"], p.get("epoch")] for p in tta]
        lines += [_markdown_table(["train_time_s <=", "val_acc", "trial", "epoch"], rows), ""]
    else:
        lines += ["No epoch report has both `val_acc` and `train_time_s`.", ""]

    failed = [r for r in records if r.get("status") == "failed"]
    if failed:
        lines += ["## Failed trials", ""]
        for rec in failed:
            epoch = _final(rec).get("epoch")
            where = f" (last report: epoch {_fmt(epoch)})" if epoch is not None else ""
            lines.append(f"- `{rec['trial_id']}`{where}: {_reason(rec.get('error'))}")
        lines.append("")

    lines += ["## Files and TensorBoard", "",
              "`trials.csv`, `trials.json` (with every epoch report), `pareto.json`, "
              "`time_to_accuracy.json`, `pareto.png`.", "",
              "HParams (one session per trial, in `tensorboard/`), the Pareto figure (Images), "
              "this summary (Text) and every trial's per-epoch curves (Scalars, from Tune's "
              "trial folders):", "",
              f"    tensorboard --logdir {shlex.quote(str(exp_dir))}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- figure


def _figure_png(records: Sequence[Record], objectives: Sequence[Objective],
                front: Sequence[Record], tta: Sequence[Mapping[str, Any]]) -> bytes:
    """PNG of the first objective against the second (or ``train_time_s``), front marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y_obj = objectives[0]
    if len(objectives) >= 2:
        x_metric, x_mode = objectives[1].metric, objectives[1].mode
    else:
        x_metric = "train_time_s" if y_obj.metric != "train_time_s" else "epoch"
        x_mode = "min"

    def xy(rec: Mapping[str, Any]) -> tuple[float, float] | None:
        x, y = _number(_final(rec).get(x_metric)), _number(_final(rec).get(y_obj.metric))
        return None if x is None or y is None else (x, y)

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    styles = {"completed": dict(marker="o", color="C0"),
              "stopped_early": dict(marker="^", facecolors="none", edgecolors="C1"),
              "failed": dict(marker="x", color="C3"),
              "other": dict(marker=".", color="0.6")}
    groups: dict[str, list[tuple[float, float]]] = {k: [] for k in styles}
    for rec in records:
        point = xy(rec)
        status = str(rec.get("status"))
        if point is not None:
            groups[status if status in styles else "other"].append(point)
    for status, points in groups.items():
        if points:
            label = {"other": "running / pending"}.get(status, status.replace("_", " "))
            ax.scatter(*zip(*points), label=f"{label} ({len(points)})", s=36, **styles[status])
    fpoints = sorted(p for p in (xy(r) for r in front) if p is not None)
    if fpoints:
        ax.scatter(*zip(*fpoints), s=140, facecolors="none", edgecolors="k", linewidths=1.2,
                   label=f"Pareto front ({len(fpoints)})")
        if len(objectives) == 2:
            ax.step(*zip(*fpoints), where="post" if x_mode == "min" else "pre", color="k",
                    linewidth=1.2)
        for rec in front:
            point = xy(rec)
            if point is not None:
                ax.annotate(_fmt(rec["trial_id"], 10), point, textcoords="offset points",
                            xytext=(5, 5), fontsize=7)
    if tta and x_metric == "train_time_s" and y_obj.metric == "val_acc":
        ax.step([p["time_s"] for p in tta], [p["val_acc"] for p in tta], where="post",
                linestyle=":", color="C2", label="best val_acc within budget (any epoch)")
    if not any(groups.values()):
        ax.text(0.5, 0.5, f"no trial has both {y_obj.metric} and {x_metric}",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"{x_metric} ({x_mode})")
    ax.set_ylabel(f"{y_obj.metric} ({y_obj.mode})")
    ax.set_title(f"{y_obj.metric} against {x_metric}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# --------------------------------------------------------------------------- TensorBoard


def _run_names(records: Sequence[Record]) -> list[str]:
    """A folder name per trial: the id with odd characters replaced, made unique."""
    names, used = [], set()
    for rec in records:
        base = re.sub(r"[^A-Za-z0-9._=,+-]", "_", rec["trial_id"])[:100].strip(".") or "trial"
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        names.append(name)
    return names


def _hparam_values(records: Sequence[Record]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The type of each hparam (``bool``, ``number``, ``string``) and each trial's values.

    A key whose values mix types becomes a string hparam; lists and dicts become JSON text;
    missing or non-finite values are left out of that trial. ``status`` is added as a string
    hparam so that the dashboard can filter stopped-early and failed trials.
    """
    raw = [{**{k: v for k, v in _params(r).items() if k != "status"},
            "status": str(r.get("status", "unknown"))} for r in records]
    kinds: dict[str, set[str]] = {}
    for values in raw:
        for k, v in values.items():
            if hasattr(v, "item") and not isinstance(v, (str, list, tuple, dict)):
                v = _jsonable(v)
                values[k] = v
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                continue
            kind = ("bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float))
                    else "string")
            kinds.setdefault(k, set()).add(kind)
    types = {k: next(iter(s)) if len(s) == 1 else "string" for k, s in kinds.items()}
    out = []
    for values in raw:
        row = {}
        for k, v in values.items():
            if k not in types or v is None or (isinstance(v, float) and not math.isfinite(v)):
                continue
            if types[k] == "string" and not isinstance(v, str):
                v = json.dumps(_jsonable(v))
            row[k] = v
        out.append(row)
    return types, out


def _write_tensorboard(tb_dir: Path, name: str, records: Sequence[Record],
                       objectives: Sequence[Objective], summary: str,
                       png: bytes | None) -> list[str]:
    """Write the HParams experiment, one session per trial, the figure and the summary text.

    Layout: ``tb_dir`` (run with the experiment config, the image and the text) and
    ``tb_dir/trials/<trial id>`` (one HParams session per trial with its final metrics as
    scalars ``final/<metric>`` and its epoch reports as ``epoch/<metric>`` against the epoch).
    Old event files there are removed first, so rewriting a report does not double it.
    Returns the run folders of the trials.
    """
    from google.protobuf import struct_pb2
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from tensorboard.plugins.hparams import metadata as hp_meta
    from tensorboard.plugins.text import metadata as text_meta
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    if tb_dir.exists():
        for old in tb_dir.rglob("events.out.tfevents.*"):
            old.unlink()
    now = time.time()

    def hp_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
        return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag=tag, metadata=hp_meta.create_summary_metadata(data),
            tensor=hp_meta.NULL_TENSOR)])

    def event(summary: summary_pb2.Summary, step: int = 0) -> event_pb2.Event:
        return event_pb2.Event(wall_time=now, step=step, summary=summary)

    def scalar(tag: str, value: float, step: int) -> event_pb2.Event:
        return event(summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag=tag, simple_value=value)]), step)

    types, hp_rows = _hparam_values(records)
    metrics = [m for m in _metric_keys(records, objectives)
               if any(_number(_final(r).get(m)) is not None for r in records)]
    hparam_infos = []
    for key, kind in types.items():
        values = sorted({row[key] for row in hp_rows if key in row})
        info = api_pb2.HParamInfo(name=key, display_name=key)
        if kind == "number":
            info.type = api_pb2.DATA_TYPE_FLOAT64
            if all(isinstance(v, int) for v in values) and len(values) <= 50:
                info.domain_discrete.CopyFrom(struct_pb2.ListValue(
                    values=[struct_pb2.Value(number_value=v) for v in values]))
            else:
                info.domain_interval.min_value = float(min(values))
                info.domain_interval.max_value = float(max(values))
        else:
            info.type = api_pb2.DATA_TYPE_BOOL if kind == "bool" else api_pb2.DATA_TYPE_STRING
            if len(values) <= 50:
                field = "bool_value" if kind == "bool" else "string_value"
                info.domain_discrete.CopyFrom(struct_pb2.ListValue(
                    values=[struct_pb2.Value(**{field: v}) for v in values]))
        hparam_infos.append(info)
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=f"final/{m}"),
                                       display_name=m) for m in metrics]
    experiment = plugin_data_pb2.HParamsPluginData(experiment=api_pb2.Experiment(
        name=name, description=f"sd-tune experiment {name}", time_created_secs=now,
        hparam_infos=hparam_infos, metric_infos=metric_infos))
    exp_summary = hp_summary(hp_meta.EXPERIMENT_TAG, experiment)

    root = EventFileWriter(str(tb_dir))
    try:
        if records:
            root.add_event(event(exp_summary))
        if png is not None:
            width, height = struct.unpack(">II", png[16:24])  # from the PNG's IHDR chunk
            image = summary_pb2.Summary.Image(height=height, width=width, colorspace=4,
                                              encoded_image_string=png)
            root.add_event(event(summary_pb2.Summary(value=[summary_pb2.Summary.Value(
                tag="pareto_front", image=image)])))
        text = tensor_util.make_tensor_proto([summary.encode()], shape=(1,))
        root.add_event(event(summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag="summary/text_summary", tensor=text,
            metadata=text_meta.create_summary_metadata("summary", f"sd-tune: {name}"))])))
    finally:
        root.close()

    run_dirs = []
    status_codes = {"completed": api_pb2.STATUS_SUCCESS, "stopped_early": api_pb2.STATUS_SUCCESS,
                    "failed": api_pb2.STATUS_FAILURE}
    for rec, run, hparams in zip(records, _run_names(records), hp_rows):
        run_dir = tb_dir / "trials" / run
        run_dirs.append(str(run_dir))
        writer = EventFileWriter(str(run_dir))
        try:
            # The experiment is repeated in every session run: TensorBoard takes the first
            # experiment it finds, and each copy lists every trial's hparams and metrics.
            writer.add_event(event(exp_summary))
            start = plugin_data_pb2.SessionStartInfo(group_name=rec["trial_id"],
                                                     start_time_secs=now)
            for key, value in hparams.items():
                if isinstance(value, bool):
                    start.hparams[key].bool_value = value
                elif isinstance(value, (int, float)):
                    start.hparams[key].number_value = value
                else:
                    start.hparams[key].string_value = value
            writer.add_event(event(hp_summary(
                hp_meta.SESSION_START_INFO_TAG,
                plugin_data_pb2.HParamsPluginData(session_start_info=start))))
            for i, report in enumerate(rec.get("history") or []):
                if not isinstance(report, Mapping):
                    continue
                step = int(_number(report.get("epoch")) or i + 1)
                for key, value in report.items():
                    if key != "epoch" and (v := _number(value)) is not None:
                        writer.add_event(scalar(f"epoch/{key}", v, step))
            for key, value in _final(rec).items():
                if (v := _number(value)) is not None:
                    writer.add_event(scalar(f"final/{key}", v, 0))
            status = rec.get("status")
            if status in status_codes:
                end = plugin_data_pb2.SessionEndInfo(status=status_codes[status],
                                                     end_time_secs=now)
                writer.add_event(event(hp_summary(
                    hp_meta.SESSION_END_INFO_TAG,
                    plugin_data_pb2.HParamsPluginData(session_end_info=end))))
        finally:
            writer.close()
    return run_dirs


# --------------------------------------------------------------------------- everything


def write_results(exp_dir: str | Path, name: str, records: Iterable[Mapping[str, Any]],
                  objectives: Iterable[Any] | None = None, *, tensorboard: bool = True,
                  figure: bool = True, location: str | None = None) -> dict[str, Path]:
    """Write every summary of an experiment under ``exp_dir`` and return the paths.
    ``location``: where the experiment is stored, if not ``exp_dir`` (a URI whose report is
    written locally first), for the ``tensorboard --logdir`` line of ``summary.md``.

    Files: ``trials.csv`` (one row per trial: ``param.<key>`` columns, one column per final
    metric, ``epochs_reported``, ``error``), ``trials.json`` (``{"name", "objectives",
    "trials"}`` with the complete records, per-epoch ``history`` included, non-finite numbers
    as ``null``), ``pareto.json``, ``time_to_accuracy.json``, ``summary.md`` and
    ``pareto.png``. TensorBoard event files go to ``exp_dir/tensorboard/`` (the HParams
    experiment, the figure as image ``pareto_front``, the summary as text ``summary``) and
    ``exp_dir/tensorboard/trials/<trial id>/`` (one HParams session per trial, with
    ``status`` as an extra hparam, the trial id as its group, its final metrics as scalars
    ``final/<metric>`` and its epoch reports as ``epoch/<metric>``):
    ``tensorboard --logdir exp_dir/tensorboard``. ``tensorboard --logdir exp_dir`` adds the
    trial folders' own curves, but TensorBoard's HParams tab shows the first experiment it
    finds, which may be one that Ray's TBX logger wrote into a trial folder.

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
    records = _check_records(records)
    objs = _objectives(objectives)
    front = pareto_front(records, objs)
    tta = time_to_accuracy(records)
    paths = {key: exp_dir / file for key, file in (
        ("trials_csv", "trials.csv"), ("trials_json", "trials.json"),
        ("pareto_json", "pareto.json"), ("time_to_accuracy_json", "time_to_accuracy.json"),
        ("summary_md", "summary.md"))}
    obj_json = [{"metric": o.metric, "mode": o.mode} for o in objs]

    def dump(path: Path, data: Any) -> None:
        replace_file(path, json.dumps(_jsonable(data), indent=1, allow_nan=False) + "\n")

    _write_csv(paths["trials_csv"], records, objs)
    dump(paths["trials_json"], {"name": name, "objectives": obj_json, "trials": records})
    dump(paths["pareto_json"], {"name": name, "objectives": obj_json, "trials": [
        _front_entry(i + 1, rec, objs) for i, rec in enumerate(front)]})
    dump(paths["time_to_accuracy_json"], {"metric": "val_acc", "time_key": "train_time_s",
                                          "points": tta})
    summary = summary_markdown(location or exp_dir, name, records, objs, front, tta)
    replace_file(paths["summary_md"], summary)
    png = _figure_png(records, objs, front, tta) if figure else None
    if png is not None:
        paths["figure_png"] = exp_dir / "pareto.png"
        replace_file(paths["figure_png"], png)
    if tensorboard:
        paths["tensorboard"] = exp_dir / TENSORBOARD_DIR
        _replace_tensorboard(paths["tensorboard"], name, records, objs, summary, png)
    return paths


def _replace_tensorboard(tb_dir: Path, name: str, records: Sequence[Record],
                         objectives: Sequence[Objective], summary: str,
                         png: bytes | None) -> None:
    """Write the TensorBoard entries into a new folder beside ``tb_dir``, then put it in
    ``tb_dir``'s place: the old entries stay whole until the new ones are."""
    for leftover in tb_dir.parent.glob(f".{tb_dir.name}.*"):  # of a report that was cut off
        if time.time() - leftover.stat().st_mtime > 600:
            shutil.rmtree(leftover, ignore_errors=True)
    new = tb_dir.with_name(f".{tb_dir.name}.new-{os.getpid()}")
    old = tb_dir.with_name(f".{tb_dir.name}.old-{os.getpid()}")
    try:
        _write_tensorboard(new, name, records, objectives, summary, png)
        if tb_dir.exists():
            tb_dir.rename(old)
        new.rename(tb_dir)
    finally:
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
