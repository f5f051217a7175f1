"""The report's figures: units and directions on the Pareto figure, labels that do not overlap,
and the objective against drop rate by depth, distribution and method (file, summary.md,
TensorBoard's Images read back with TensorBoard's own reader)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import to_rgba
from tensorboard.backend.event_processing import event_accumulator

from sd_tune.config import Objective
from sd_tune.report import write_results
from sd_tune.report.figures import drop_rate_figure, pareto_figure

ACC_TIME = [Objective("val_acc", "max"), Objective("train_time_s", "min")]


def trial(
    trial_id: str,
    status: str,
    acc: float,
    secs: float,
    *,
    rate: float,
    depth: int,
    distribution: str = "linear",
    method: str = "sample",
) -> dict[str, Any]:
    return {
        "trial_id": trial_id,
        "status": status,
        "final": {"val_acc": acc, "train_time_s": secs},
        "params": {"stochastic_depth.drop_rate": rate, "model.depth": depth},
        "config": {
            "stochastic_depth.drop_distribution": distribution,
            "stochastic_depth.stochastic_method": method,
        },
    }


def crowded_front(n: int = 12) -> list[dict[str, Any]]:
    """``n`` front trials a few pixels apart, and dominated ones around them."""
    front = [
        trial(
            f"front{i:04d}",
            "completed",
            0.80 + 0.003 * i,
            50 + 2.0 * i,
            rate=0.05 * (i % 6),
            depth=(20, 56)[i % 2],
        )
        for i in range(n)
    ]
    dominated = [
        trial(f"dom{i:04d}", "completed", 0.75 + 0.003 * i, 60 + 2.0 * i, rate=0.1, depth=20)
        for i in range(n)
    ]
    return front + dominated


def test_pareto_figure_gives_units_on_the_axes_and_directions_in_the_title() -> None:
    ax = pareto_figure(crowded_front(2), ACC_TIME, crowded_front(2)[:2], []).axes[0]
    assert ax.get_xlabel() == "training time (s)"
    assert ax.get_ylabel() == "validation accuracy"
    assert ax.get_title() == "Pareto front: maximise val_acc, minimise train_time_s"


def test_labels_of_neighbouring_front_points_do_not_overlap() -> None:
    records = crowded_front()
    front = records[:12]
    fig = pareto_figure(records, ACC_TIME, front, [])
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    labels = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
    assert sorted(labels) == sorted(r["trial_id"] for r in front)
    for (a, box_a), (b, box_b) in itertools.combinations(labels.items(), 2):
        assert not box_a.overlaps(box_b), (a, b)
    inside = ax.get_window_extent(renderer)
    for name, box in labels.items():  # every label stays in the plot
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1, name
        assert inside.y0 <= box.y0 and box.y1 <= inside.y1, name


def test_drop_rate_figure_one_colour_per_depth_one_marker_per_distribution_and_method() -> None:
    records = [
        trial("a", "completed", 0.90, 10, rate=0.1, depth=20),
        trial("b", "completed", 0.88, 10, rate=0.3, depth=56, distribution="uniform"),
        trial("c", "stopped_early", 0.70, 5, rate=0.5, depth=20, method="block"),
        {
            **trial("f", "completed", 0.85, 5, rate=0.4, depth=20),  # the method's old key
            "config": {
                "stochastic_depth.drop_distribution": "uniform",
                "stochastic_depth.method": "block",
            },
        },
        trial("d", "failed", 0.99, 5, rate=0.2, depth=20),  # partial: not shown
        {"trial_id": "e", "status": "completed", "final": {"val_acc": 0.8}},
    ]  # no rate
    ax = drop_rate_figure(records, Objective("val_acc", "max")).axes[0]
    assert ax.get_xlabel() == "drop rate" and ax.get_ylabel() == "validation accuracy"
    assert "maximise val_acc" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "depth 20",
        "depth 56",
        "linear, block",
        "linear, sample",
        "uniform, block",
        "uniform, sample",
        "hollow: stopped early",
    ]
    points = {}
    for collection in ax.collections:
        for x, y in collection.get_offsets():
            edge = tuple(collection.get_edgecolors()[0])
            face = collection.get_facecolors()
            points[round(float(x), 3), round(float(y), 3)] = (edge, len(face) and face[0][3])
    assert set(points) == {(0.1, 0.9), (0.3, 0.88), (0.5, 0.7), (0.4, 0.85)}
    assert points[0.1, 0.9][0] == points[0.5, 0.7][0] == to_rgba("C0")  # depth 20
    assert points[0.3, 0.88][0] == to_rgba("C1")  # depth 56
    assert points[0.1, 0.9][1] == 1 and points[0.5, 0.7][1] == 0  # stopped early: hollow


def test_write_results_shows_the_drop_rate_figure_as_file_in_summary_and_tensorboard(
    tmp_path: Path,
) -> None:
    paths = write_results(tmp_path, "figures", crowded_front(4), ACC_TIME)
    assert paths["drop_rate_png"] == tmp_path / "drop_rate.png"
    assert paths["drop_rate_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = paths["summary_md"].read_text()
    assert "](drop_rate.png)" in summary and "](pareto.png)" in summary
    acc = event_accumulator.EventAccumulator(
        str(paths["tensorboard"]), size_guidance={event_accumulator.IMAGES: 0}
    )
    acc.Reload()
    assert {"pareto_front", "drop_rate"} <= set(acc.Tags()["images"])
    image = acc.Images("drop_rate")[0]
    assert image.encoded_image_string == paths["drop_rate_png"].read_bytes()
    assert np.isclose(image.width / image.height, 9 / 5, atol=0.01)
