"""``write_results``: every file of a search's report, each written in one step (a temporary
file or folder, then a rename), so an interrupted report or a full disk leaves the previous
report's files whole. Nothing here imports Ray or torch."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sd_tune import verdict
from sd_tune.comparison import COMPARISON_FILE, compare
from sd_tune.records import (
    Record,
    check_records,
    jsonable,
)
from sd_tune.report.analysis import as_objectives, configuration_front, time_to_accuracy
from sd_tune.report.figures import drop_rate_figure, pareto_figure, png
from sd_tune.report.tables import (
    DROP_RATE_PNG,
    PARETO_PNG,
    front_entry,
    summary_markdown,
    write_csv,
)
from sd_tune.report.tensorboard import TENSORBOARD_DIR, write_tensorboard
from sd_tune.storage import replace_file


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
    ``figure``, ``pareto.png`` and ``drop_rate.png`` (see ``sd_tune.report.figures``); with
    ``tensorboard``, the TensorBoard entries in ``exp_dir/tensorboard/`` (written by
    ``sd_tune.report.tensorboard.write_tensorboard``): ``tensorboard --logdir exp_dir`` shows them.

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
    objs = as_objectives(objectives)
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
    write_csv(paths["trials_csv"], records, objs)
    _write_json(paths, exp_dir, name, records, objs, front, tta, comparisons)
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


def _write_json(
    paths: dict[str, Path],
    exp_dir: Path,
    name: str,
    records: list[dict[str, Any]],
    objs: list[Any],
    front: list[dict[str, Any]],
    tta: list[dict[str, Any]],
    comparisons: list[Any],
) -> None:
    """``trials.json``, ``pareto.json``, ``time_to_accuracy.json`` and, with a baseline,
    ``comparison.json`` (added to ``paths``), each written in one step."""
    obj_json = [{"metric": o.metric, "mode": o.mode} for o in objs]

    def dump(path: Path, data: Any) -> None:
        replace_file(path, json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")

    dump(paths["trials_json"], {"name": name, "objectives": obj_json, "trials": records})
    dump(
        paths["pareto_json"],
        {
            "name": name,
            "objectives": obj_json,
            "trials": [front_entry(i + 1, rec, objs) for i, rec in enumerate(front)],
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
