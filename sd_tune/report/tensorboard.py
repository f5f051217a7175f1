"""TensorBoard entries of a search's report (the figures are ``sd_tune.report.figures``).

sd-tune writes TensorBoard files in two places, each with one writer:

- this module, for ``sd-tune launch``, ``resume`` and ``report`` (through
  ``sd_tune.report.results.write_results``), in ``<experiment>/tensorboard/``: the HParams
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
    jsonable,
    metric_keys,
    number,
    record_final,
    record_params,
)

if TYPE_CHECKING:
    pass


TENSORBOARD_DIR = "tensorboard"  # under the experiment folder
MAX_DISCRETE = 50  # an hparam with more values gets an interval (numbers) or no domain


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
