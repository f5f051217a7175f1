"""The report's figures (matplotlib, drawn off-screen): ``pareto.png``, accuracy against
training time with the front drawn, and ``drop_rate.png``, the objective against the drop
rate per depth. They also go to TensorBoard's Images. Imports matplotlib only when drawing;
never Ray or torch."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sd_tune.config import Objective
from sd_tune.records import (
    Record,
    format_value,
    number,
    record_final,
    record_setting,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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
