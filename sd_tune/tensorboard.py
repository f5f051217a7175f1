"""TensorBoard entries of a search's report, and the report's figures.

sd-tune writes TensorBoard files in two places, each with one writer:

- this module, for ``sd-tune launch``, ``resume`` and ``report`` (through
  ``sd_tune.report.write_results``), in ``<experiment>/tensorboard/``: the HParams
  experiment, the figures (Images ``pareto_front`` and ``drop_rate``) and ``summary.md``
  (Text); and in ``trials/<trial id>/`` below it one HParams session per trial, with its
  parameters and ``status``, its final metrics as scalars ``final/<metric>`` and its epoch
  reports as ``epoch/<metric>``. Every report rewrites all of it, so while a search runs the
  entries are as recent as its last report (``sd-tune report DIR`` makes one at any time).
- ``sd_tune.ray_train.MetricsLog``, for ``sd-tune train``, in the run's folder: the metrics of
  each epoch report as scalars named after the metric, at step = epoch, as the run goes.

Tune's own TensorBoard logger is not used: its scalars in each ``trial_<id>/`` folder were
the same epoch reports as the report's ``epoch/<metric>``.

The HParams experiment and sessions come from TensorBoard's ``summary_v2`` helpers; the end
of a session is built here (``summary.session_end_pb`` needs TensorFlow, ``summary_v2`` has
none). Scalars and images are written in the classic form (``simple_value``,
``Summary.Image``) that every TensorBoard reader takes. This module imports TensorBoard and
matplotlib, never Ray or torch.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import re
import shutil
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams import summary_v2 as hp
from tensorboard.plugins.text.summary_v2 import text_pb
from tensorboard.summary.writer.record_writer import RecordWriter

from sd_tune.config import Objective
from sd_tune.records import (
    Record,
    format_value,
    jsonable,
    metric_keys,
    number,
    record_final,
    record_params,
    record_setting,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TENSORBOARD_DIR = "tensorboard"  # under the experiment folder
MAX_DISCRETE = 50  # an hparam with more values gets an interval (numbers) or no domain

# The settings the drop-rate figure plots; the method under its name and under its old one
# (``method``, in the records of experiments from before the rename).
DROP_RATE = "stochastic_depth.drop_rate"
DEPTH = "model.depth"
DISTRIBUTION = "stochastic_depth.drop_distribution"
METHOD_KEYS = ("stochastic_depth.stochastic_method", "stochastic_depth.method")

# Axis labels of the metrics and settings figures show: what it is, and its unit.
AXIS_LABELS = {
    "train_time_s": "training time (s)",
    "wall_time_s": "wall-clock time (s)",
    "compile_time_s": "compile time (s)",
    "images_per_s": "training images per second",
    "val_acc": "validation accuracy",
    "val_acc5": "validation top-5 accuracy",
    "test_acc": "test accuracy",
    "test_acc5": "test top-5 accuracy",
    "train_acc": "training accuracy",
    "val_loss": "validation loss",
    "train_loss": "training loss",
    "test_loss": "test loss",
    "expected_depth": "expected depth (blocks)",
    "epoch": "epoch",
    DROP_RATE: "drop rate",
}


# --------------------------------------------------------------------------- figures


def goal(objectives: Sequence[Objective], quote: str = "") -> str:
    """The objectives' directions, for titles and the summary.

    >>> goal([Objective("val_acc", "max"), Objective("train_time_s", "min")], quote="`")
    'maximise `val_acc`, minimise `train_time_s`'
    """
    return ", ".join(
        f"{'maximise' if o.mode == 'max' else 'minimise'} {quote}{o.metric}{quote}"
        for o in objectives
    )


def _new_figure(width: float) -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 5), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def png(fig: Figure) -> bytes:
    """``fig`` as PNG bytes.

    >>> png(pareto_figure([], [Objective("val_acc", "max")], [], []))[:4]
    b'\\x89PNG'
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _overlap(box: Any, other: Any) -> float:
    """The area two display boxes share."""
    width = min(box.x1, other.x1) - max(box.x0, other.x0)
    height = min(box.y1, other.y1) - max(box.y0, other.y0)
    return width * height if width > 0 and height > 0 else 0.0


# Where a label may go, in points from its point: beside it first, then above and below.
_LABEL_OFFSETS = (
    (9, 0),
    (-9, 0),
    (9, 11),
    (9, -11),
    (-9, 11),
    (-9, -11),
    (9, 22),
    (9, -22),
    (-9, 22),
    (-9, -22),
    (9, 33),
    (9, -33),
    (-9, 33),
    (-9, -33),
)


def _label_points(
    ax: Axes,
    points: Sequence[tuple[float, float]],
    labels: Sequence[str],
    avoid: Sequence[tuple[float, float]] = (),
) -> None:
    """Write each label next to its point, at the first of :data:`_LABEL_OFFSETS` where it
    covers no label placed before it, no point of ``points`` or ``avoid`` and nothing outside
    the axes (else where it covers least); a label away from its point gets a line to it.
    Call it once the figure's layout is final."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    area = ax.get_window_extent(renderer)
    taken = []
    for (px, py), radius in [*((p, 8) for p in points), *((p, 5) for p in avoid)]:
        x, y = ax.transData.transform((px, py))
        taken.append(Bbox.from_extents(x - radius, y - radius, x + radius, y + radius))

    def place(point: tuple[float, float], label: str, dx: int, dy: int, **style: Any) -> Any:
        # the same text when a place is measured and when the label is drawn
        return ax.annotate(
            label,
            point,
            xytext=(dx, dy),
            textcoords="offset points",
            fontsize=7,
            ha="left" if dx > 0 else "right",
            va="center",
            **style,
        )

    for point, label in zip(points, labels):
        best: tuple[float, tuple[int, int], Any] | None = None
        for dx, dy in _LABEL_OFFSETS:
            text = place(point, label, dx, dy)
            box = text.get_window_extent(renderer)
            text.remove()
            covered = (
                sum(_overlap(box, other) for other in taken)
                + box.width * box.height
                - _overlap(box, area)
            )
            if best is None or covered < best[0]:
                best = (covered, (dx, dy), box)
            if covered == 0:
                break
        assert best is not None
        (dx, dy), box = best[1], best[2]
        line = dict(arrowstyle="-", color="0.5", linewidth=0.6, shrinkA=0, shrinkB=6)
        place(
            point,
            label,
            dx,
            dy,
            arrowprops=line if dy else None,
            bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.8),
        )
        taken.append(box)


def pareto_figure(
    records: Sequence[Record],
    objectives: Sequence[Objective],
    front: Sequence[Record],
    tta: Sequence[Mapping[str, Any]],
) -> Figure:
    """The first objective against the second (or ``train_time_s``): every trial by status,
    the Pareto front ringed, joined and labelled with its trial ids (no two labels on top of
    each other), and the best ``val_acc`` reachable within each training time (dotted). The
    axes give each metric's unit, the title the objectives' directions.

    >>> recs = [{"trial_id": "a", "status": "completed",
    ...          "final": {"val_acc": 0.9, "train_time_s": 60.0}}]
    >>> ax = pareto_figure(recs, [Objective("val_acc", "max"), Objective("train_time_s", "min")],
    ...                    recs, []).axes[0]
    >>> ax.get_xlabel(), ax.get_ylabel()
    ('training time (s)', 'validation accuracy')
    >>> ax.get_title()
    'Pareto front: maximise val_acc, minimise train_time_s'
    """
    y_obj = objectives[0]
    if len(objectives) >= 2:
        x_metric, x_mode = objectives[1].metric, objectives[1].mode
    else:
        x_metric = "train_time_s" if y_obj.metric != "train_time_s" else "epoch"
        x_mode = "min"

    def xy(rec: Mapping[str, Any]) -> tuple[float, float] | None:
        final = record_final(rec)
        x, y = number(final.get(x_metric)), number(final.get(y_obj.metric))
        return None if x is None or y is None else (x, y)

    fig, ax = _new_figure(9)
    styles = {
        "completed": dict(marker="o", color="C0"),
        "stopped_early": dict(marker="^", facecolors="none", edgecolors="C1"),
        "failed": dict(marker="x", color="C3"),
        "other": dict(marker=".", color="0.6"),
    }
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
    labelled = [(p, format_value(r["trial_id"], 10)) for r in front if (p := xy(r)) is not None]
    fpoints = sorted(p for p, _ in labelled)
    if fpoints:
        ax.scatter(
            *zip(*fpoints),
            s=140,
            facecolors="none",
            edgecolors="k",
            linewidths=1.2,
            label=f"Pareto front ({len(fpoints)})",
        )
        if len(objectives) == 2:
            ax.step(
                *zip(*fpoints), where="post" if x_mode == "min" else "pre", color="k", linewidth=1.2
            )
    if tta and x_metric == "train_time_s" and y_obj.metric == "val_acc":
        ax.step(
            [p["time_s"] for p in tta],
            [p["val_acc"] for p in tta],
            where="post",
            linestyle=":",
            color="C2",
            label="best val_acc within budget (any epoch)",
        )
    if not any(groups.values()):
        ax.text(
            0.5,
            0.5,
            f"no trial has both {y_obj.metric} and {x_metric}",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel(AXIS_LABELS.get(x_metric, x_metric))
    ax.set_ylabel(AXIS_LABELS.get(y_obj.metric, y_obj.metric))
    ax.set_title(f"Pareto front: {goal(objectives)}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    if labelled:
        fig.canvas.draw()
        others = [p for points in groups.values() for p in points]
        _label_points(ax, [p for p, _ in labelled], [t for _, t in labelled], avoid=others)
    return fig


def _method(rec: Mapping[str, Any]) -> Any:
    return next((v for k in METHOD_KEYS if (v := record_setting(rec, k)) is not None), None)


def drop_rate_figure(records: Sequence[Record], objective: Objective) -> Figure:
    """``objective`` against ``stochastic_depth.drop_rate``, one colour per ``model.depth``,
    one marker per drop distribution and method: how much stochastic depth, at which depth.
    Completed trials are filled; trials stopped early are hollow (their value is the one they
    stopped at). A setting that is not searched is taken from the trial's config.

    >>> recs = [{"trial_id": t, "status": "completed", "final": {"val_acc": acc},
    ...          "params": {"stochastic_depth.drop_rate": rate, "model.depth": depth},
    ...          "config": {"stochastic_depth.drop_distribution": "linear",
    ...                     "stochastic_depth.stochastic_method": "sample"}}
    ...         for t, acc, rate, depth in (("a", .9, .1, 20), ("b", .8, .5, 56))]
    >>> ax = drop_rate_figure(recs, Objective("val_acc", "max")).axes[0]
    >>> ax.get_xlabel(), [t.get_text() for t in ax.get_legend().get_texts()]
    ('drop rate', ['depth 20', 'depth 56', 'linear, sample'])
    """
    from matplotlib.lines import Line2D

    points = []
    for rec in records:
        status = rec.get("status")
        rate = number(record_setting(rec, DROP_RATE))
        value = number(record_final(rec).get(objective.metric))
        if status in ("completed", "stopped_early") and rate is not None and value is not None:
            kind = ", ".join(
                format_value(v)
                for v in (record_setting(rec, DISTRIBUTION), _method(rec))
                if v is not None
            )
            points.append((rate, value, record_setting(rec, DEPTH), kind or "-", status))
    depths = sorted(
        {p[2] for p in points}, key=lambda d: (number(d) is None, number(d) or 0, str(d))
    )
    kinds = sorted({p[3] for p in points})
    colours = {d: f"C{i % 10}" for i, d in enumerate(depths)}
    markers = {k: "os^Dv<>PX*"[i % 10] for i, k in enumerate(kinds)}

    fig, ax = _new_figure(9)
    for depth in depths:
        for kind in kinds:
            for status in ("completed", "stopped_early"):
                xy = [(p[0], p[1]) for p in points if p[2:] == (depth, kind, status)]
                if not xy:
                    continue
                face = colours[depth] if status == "completed" else "none"
                ax.scatter(
                    *zip(*xy),
                    s=48,
                    marker=markers[kind],
                    facecolors=face,
                    edgecolors=colours[depth],
                    linewidths=1.2,
                )
    handles = [
        Line2D([], [], linestyle="", marker="o", color=colours[d], label=f"depth {format_value(d)}")
        for d in depths
    ]
    handles += [
        Line2D([], [], linestyle="", marker=markers[k], color="0.4", label=k) for k in kinds
    ]
    if any(p[4] == "stopped_early" for p in points):
        handles.append(
            Line2D(
                [],
                [],
                linestyle="",
                marker="o",
                markerfacecolor="none",
                color="0.4",
                label="hollow: stopped early",
            )
        )
    if handles:
        ax.legend(
            handles=handles,
            fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1.01, 1),
            title="depth; distribution, method",
            title_fontsize=8,
        )
    else:
        ax.text(
            0.5,
            0.5,
            f"no completed trial has both {objective.metric} and a drop rate",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel(AXIS_LABELS[DROP_RATE])
    ax.set_ylabel(AXIS_LABELS.get(objective.metric, objective.metric))
    ax.set_title(f"{objective.metric} by drop rate and depth ({goal([objective])})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- HParams


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
    hparam so that the dashboard can filter stopped-early and failed trials, and
    ``baseline_of`` when the search ran a baseline (the configuration a baseline seed ablates;
    empty for the searched configurations' seeds).
    """
    baseline = any(isinstance(r.get("baseline_of"), str) for r in records)
    raw = [
        {
            **{k: v for k, v in record_params(r).items() if k not in ("status", "baseline_of")},
            "status": str(r.get("status", "unknown")),
            **({"baseline_of": str(r.get("baseline_of") or "")} if baseline else {}),
        }
        for r in records
    ]
    kinds: dict[str, set[str]] = {}
    for values in raw:
        for k, v in values.items():
            if hasattr(v, "item") and not isinstance(v, (str, list, tuple, dict)):
                v = jsonable(v)
                values[k] = v
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                continue
            kind = (
                "bool"
                if isinstance(v, bool)
                else "number"
                if isinstance(v, (int, float))
                else "string"
            )
            kinds.setdefault(k, set()).add(kind)
    types = {k: next(iter(s)) if len(s) == 1 else "string" for k, s in kinds.items()}
    out = []
    for values in raw:
        row = {}
        for k, v in values.items():
            if k not in types or v is None or (isinstance(v, float) and not math.isfinite(v)):
                continue
            if types[k] == "string" and not isinstance(v, str):
                v = json.dumps(jsonable(v))
            row[k] = v
        out.append(row)
    return types, out


def _domain(kind: str, values: list[Any]) -> hp.Domain:
    """The HParams domain of an hparam of ``kind`` that takes ``values`` (sorted)."""
    if kind == "number":
        if all(isinstance(v, int) for v in values) and len(values) <= MAX_DISCRETE:
            return hp.Discrete(values)
        return hp.RealInterval(float(values[0]), float(values[-1]))
    # Past MAX_DISCRETE values, an empty Discrete gives the type and no domain.
    return hp.Discrete(
        values if len(values) <= MAX_DISCRETE else [], dtype=bool if kind == "bool" else str
    )


def _session_end_pb(status: int, end_time_secs: float) -> summary_pb2.Summary:
    """What ``tensorboard.plugins.hparams.summary.session_end_pb`` makes, without TensorFlow."""
    data = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=end_time_secs)
    )
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=hp_metadata.SESSION_END_INFO_TAG,
        tensor=hp_metadata.NULL_TENSOR,
        metadata=hp_metadata.create_summary_metadata(data),
    )
    return summary


# --------------------------------------------------------------------------- event files


def _scalar(tag: str, value: float) -> summary_pb2.Summary:
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])


def _image(tag: str, data: bytes) -> summary_pb2.Summary:
    width, height = struct.unpack(">II", data[16:24])  # from the PNG's IHDR chunk
    image = summary_pb2.Summary.Image(
        height=height, width=width, colorspace=4, encoded_image_string=data
    )
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)])


_STATUS_CODES = {
    "completed": api_pb2.STATUS_SUCCESS,
    "stopped_early": api_pb2.STATUS_SUCCESS,
    "failed": api_pb2.STATUS_FAILURE,
}


def _write_events(
    tb_dir: Path,
    name: str,
    records: Sequence[Record],
    objectives: Sequence[Objective],
    summary: str,
    images: Mapping[str, bytes],
) -> None:
    now = time.time()

    def event(summary: summary_pb2.Summary, step: int = 0) -> event_pb2.Event:
        return event_pb2.Event(wall_time=now, step=step, summary=summary)

    types, hp_rows = _hparam_values(records)
    metrics = [
        m
        for m in metric_keys(records, objectives)
        if any(number(record_final(r).get(m)) is not None for r in records)
    ]
    experiment = hp.hparams_config_pb(
        hparams=[
            hp.HParam(
                key,
                _domain(kind, sorted({row[key] for row in hp_rows if key in row})),
                display_name=key,
            )
            for key, kind in types.items()
        ],
        metrics=[hp.Metric(f"final/{m}", display_name=m) for m in metrics],
        time_created_secs=now,
    )

    root = EventFile(tb_dir)
    try:
        if records:
            root.add_event(event(experiment))
        for tag, data in images.items():
            root.add_event(event(_image(tag, data)))
        root.add_event(
            event(text_pb("summary/text_summary", [summary], description=f"sd-tune: {name}"))
        )
    finally:
        root.close()

    for rec, run, hparams in zip(records, _run_names(records), hp_rows):
        writer = EventFile(tb_dir / "trials" / run)
        try:
            # The experiment is repeated in every session run: TensorBoard takes the first
            # experiment it finds, and each copy lists every trial's hparams and metrics.
            writer.add_event(event(experiment))
            writer.add_event(
                event(hp.hparams_pb(hparams, trial_id=rec["trial_id"], start_time_secs=now))
            )
            for i, report in enumerate(rec.get("history") or []):
                if not isinstance(report, Mapping):
                    continue
                step = int(number(report.get("epoch")) or i + 1)
                for key, value in report.items():
                    if key != "epoch" and (v := number(value)) is not None:
                        writer.add_event(event(_scalar(f"epoch/{key}", v), step))
            for key, value in record_final(rec).items():
                if (v := number(value)) is not None:
                    writer.add_event(event(_scalar(f"final/{key}", v)))
            if rec.get("status") in _STATUS_CODES:
                writer.add_event(event(_session_end_pb(_STATUS_CODES[rec["status"]], now)))
        finally:
            writer.close()


class EventFile:
    """A new TensorBoard event file in ``folder``, written in the calling thread with
    TensorBoard's ``RecordWriter``. (TensorBoard's ``EventFileWriter`` writes from a thread
    of its own: a Ctrl-C during its ``close`` left that thread writing into the report's
    temporary folder after it was removed, a traceback after the one-line message.)"""

    _count = itertools.count()

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(self._count)}"
        )
        self._records = RecordWriter(open(folder / name, "wb"))  # noqa: SIM115 (closed in close)
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())

    def close(self) -> None:
        self._records.close()


def write_tensorboard(
    tb_dir: str | Path,
    name: str,
    records: Sequence[Record],
    objectives: Sequence[Objective],
    *,
    summary: str = "",
    images: Mapping[str, bytes] | None = None,
) -> None:
    """Write a report's TensorBoard entries in ``tb_dir``, in place of those there.

    The entries are written into a new folder beside ``tb_dir``, which then takes its place:
    the old entries stay whole until the new ones are, and a report written again does not
    double them.

    Args:
        tb_dir: the folder, ``<experiment>/tensorboard``.
        name: the experiment's name.
        records: the trial records (see ``sd_tune.records``), with unique trial ids.
        objectives: the search's objectives; their metrics come first in HParams.
        summary: Markdown for the Text tab (``summary.md``).
        images: PNG figures for the Images tab, by tag.

    >>> import tempfile
    >>> recs = [{"trial_id": "a", "status": "completed", "params": {"model.depth": 20},
    ...          "final": {"val_acc": 0.9}, "history": [{"epoch": 1, "val_acc": 0.9}]}]
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_tensorboard(Path(folder, "tensorboard"), "demo", recs,
    ...                       [Objective("val_acc", "max")], summary="# demo")
    ...     print(sorted(p.name for p in Path(folder, "tensorboard", "trials").iterdir()))
    ['a']
    """
    tb_dir = Path(tb_dir)
    for leftover in tb_dir.parent.glob(f".{tb_dir.name}.*"):  # of a report that was cut off
        if time.time() - leftover.stat().st_mtime > 600:
            shutil.rmtree(leftover, ignore_errors=True)
    new = tb_dir.with_name(f".{tb_dir.name}.new-{os.getpid()}")
    old = tb_dir.with_name(f".{tb_dir.name}.old-{os.getpid()}")
    try:
        _write_events(new, name, records, objectives, summary, images or {})
        if tb_dir.exists():
            tb_dir.rename(old)
        new.rename(tb_dir)
    finally:
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
