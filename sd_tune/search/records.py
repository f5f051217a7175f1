"""sd-tune's own record of each finished trial (``sd_tune/trials/<id>.json``): built and
written by the ``TrialRecords`` callback, read back; and the stop when the storage fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from sd_tune import storage as store
from sd_tune.comparison import BASELINE_KEY
from sd_tune.config import (
    EPOCH_METRICS,
    FINAL_METRICS,
    SpaceFile,
    apply_overrides,
    excerpt,
)
from sd_tune.repeats import CONFIG_KEY, REPEAT_KEY
from sd_tune.search.files import (
    _TRIAL_ID,
    MAX_STATE_BYTES,
    MAX_TRIAL_FILE_BYTES,
    RECORDS_DIR,
    STATE_COPY,
    TUNER_PKL,
    _newest_state,
    _state_problem,
)
from sd_tune.search.spec import base_config
from sd_tune.search.trial_errors import _error_text, _last_error_line, _read_local


class StorageFailure:
    """Set in the driver when a write to the storage failed for lack of space (``full``) or
    because the storage could not be reached (``unreachable``): the search then stops."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.why = ""

    def set(self, kind: str = "full", why: str = "") -> None:
        if self.kind is None:  # the first failure is the one to report
            self.kind, self.why = kind, why

    def is_set(self) -> bool:
        return self.kind is not None

    def clear(self) -> None:
        self.kind, self.why = None, ""

    def note(self, text: str) -> bool:
        """Set from an error's text when it is a full or unreachable storage's; whether so."""
        if store.says_disk_full(text):
            self.set("full", _last_error_line(text))
        elif store.says_unreachable(text):
            self.set("unreachable", _last_error_line(text))
        return self.is_set()

    def note_error(self, err: BaseException) -> bool:
        """Set from an error (or one it was raised from) that is a full or unreachable
        storage's; whether so."""
        if store.is_disk_full(err):
            self.set("full", str(err))
        elif store.is_unreachable(err):
            self.set("unreachable", str(err))
        return self.is_set()


STORAGE_FAILED = StorageFailure()

# A trial record's statuses once the trial has ended (see ``_record``).
FINISHED_STATUSES = ("completed", "stopped_early", "failed")

# The experiment being restored, while ``resume_search`` unpickles its callbacks: a moved or
# copied experiment's callbacks write there, not where they were pickled.
_RESTORING_AT: list[str] = []


def _record(
    trial_id: str,
    trial_config: dict[str, Any],
    base: dict[str, Any],
    history: list[dict[str, Any]],
    tune_status: str,
    error: str | None,
) -> dict[str, Any]:
    """A plain trial record (see ``sd_tune.report``) from the trial's Tune config, its status
    from Tune's and the epochs reached; ``logdir`` is added by the reader. A seed of a
    configuration (``search.repeats`` > 1) also carries its ``config_id``, ``repeat`` and
    ``seed``."""
    params = {k: v for k, v in trial_config.items() if "." in k}
    config = apply_overrides(base, params)
    epochs = int(config.get("train", {}).get("epochs", 0) or 0)
    final = history[-1] if history else {}
    if tune_status == "ERROR":
        status = "failed"
    elif tune_status == "TERMINATED":
        status = "completed" if int(final.get("epoch", 0)) >= epochs else "stopped_early"
    else:
        status = "running" if tune_status == "RUNNING" else "pending"
    flat = {
        f"{s}.{k}": v for s, sec in config.items() if isinstance(sec, dict) for k, v in sec.items()
    }
    group = {}
    if CONFIG_KEY in trial_config:
        group = {
            "config_id": trial_config[CONFIG_KEY],
            "repeat": trial_config.get(REPEAT_KEY),
            "seed": flat.get("train.seed"),
        }
        if isinstance(trial_config.get(BASELINE_KEY), str):
            group[BASELINE_KEY] = trial_config[BASELINE_KEY]
    return {
        "trial_id": trial_id,
        **group,
        "status": status,
        "params": params,
        "config": flat,
        "final": {
            k: v
            for k, v in final.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        },
        "history": history,
        "error": error or None,
        "worker_node_ids": _node_ids(final.get("worker_node_ids")),
    }


class TrialRecords(tune.Callback):
    """Writes each trial's record to ``sd_tune/trials/<trial id>.json`` when it ends
    (completed, stopped early or failed), in one step; and a copy of Tune's state each time
    Tune saves it in the driver (``sd_tune/tune_state.json``), so that a truncated state file
    loses nothing. A write that fails for lack of space, or because the storage cannot be
    reached, sets :data:`STORAGE_FAILED` (the search then stops)."""

    def __init__(self, spec: SpaceFile, exp_dir: str, say: Callable[[str], None] = print) -> None:
        self.exp_dir = exp_dir
        self.base = base_config(spec)
        self.say = say
        self.history: dict[str, dict[int, dict[str, Any]]] = {}
        self.warned = False
        self.copied: tuple[str, int] | None = None  # the state file copied last, its mtime
        self.tuner: bytes | None = None  # tuner.pkl, written once when the run starts

    def __getstate__(self) -> dict[str, Any]:
        # a restored run copies its own state anew
        return {**self.__dict__, "copied": None, "tuner": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restored by ``resume_search``: write into the experiment being resumed, which is
        not where this was pickled when the experiment was moved or copied since."""
        self.__dict__.update(state)
        if _RESTORING_AT:
            self.exp_dir = _RESTORING_AT[-1]

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if trials:
            self._copy_state(trials[0])

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        rows = self.history.setdefault(trial.trial_id, {})
        row = {k: result[k] for k in _KEEP if k in result}
        rows[int(row.get("epoch", len(rows) + 1))] = row  # a replayed epoch replaces itself

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._write(trial, "TERMINATED", None)
        self._copy_state(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        text = _error_text(trial)
        STORAGE_FAILED.note(text)
        self._write(trial, "ERROR", _last_error_line(text))
        self._copy_state(trial)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if trials:
            self._copy_state(trials[0])

    def _write(self, trial: Any, status: str, error: str | None) -> None:
        history = [row for _, row in sorted(self.history.get(trial.trial_id, {}).items())]
        record = _record(trial.trial_id, trial.config or {}, self.base, history, status, error)
        self._put(
            store.join(self.exp_dir, RECORDS_DIR, f"{trial.trial_id}.json"),
            json.dumps(record, default=str).encode(),
        )

    def _copy_state(self, trial: Any) -> None:
        """Copy Tune's state from the driver's staging folder (Tune writes it there whole,
        in this thread) when it changed since the last copy and every file of it reads back
        whole."""
        try:
            staging = trial.storage.experiment_driver_staging_path
            files = _newest_state(sorted(os.listdir(staging)))
            if files is None:
                return
            stamp = (
                files["experiment_state"],
                os.stat(Path(staging, files["experiment_state"])).st_mtime_ns,
            )
        except (AttributeError, RuntimeError, OSError):
            return
        if stamp == self.copied:
            return
        data = {}
        for kind, name in files.items():
            try:
                content = _read_local(Path(staging, name), MAX_STATE_BYTES)
            except (OSError, ValueError):  # ValueError: store.TooLarge
                return
            if _state_problem(kind, content) is not None:
                return
            data[name] = content
        if self.tuner is None:
            with contextlib.suppress(OSError, ValueError):
                tuner = store.read_bytes(store.join(self.exp_dir, TUNER_PKL), MAX_STATE_BYTES)
                if _state_problem("tuner", tuner) is None:
                    self.tuner = tuner
        if self.tuner is not None:
            data[TUNER_PKL] = self.tuner
        payload = {
            "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
            "files": {n: base64.b64encode(c).decode() for n, c in data.items()},
        }
        if self._put(store.join(self.exp_dir, STATE_COPY), json.dumps(payload).encode()):
            self.copied = stamp

    def _put(self, location: str, data: bytes) -> bool:
        try:
            store.write_bytes(location, data)
        except (OSError, ValueError) as err:
            STORAGE_FAILED.note_error(err)
            if not self.warned:
                self.warned = True
                self.say(f"sd-tune could not write {location}: {excerpt(str(err))[1:-1]}")
            return False
        return True


class StopWhenStorageFails(tune.Stopper):
    """Ends the whole search once a write to the storage failed for lack of space or because
    the storage could not be reached: every further trial would fail the same way.

    It aborts the search like a killed driver instead of stopping it: Tune's own stop
    (``stop_all`` returning True) marks every running and pending trial finished and the
    searcher done, so ``resume`` would never continue them. Raised from here, the error ends
    ``tuner.fit()`` with Tune's state as last saved, which lists them unfinished."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        if STORAGE_FAILED.is_set():  # _fit gives the whole message
            raise store.StorageFailed(f"the storage failed: {STORAGE_FAILED.kind}")
        return False


def _plain(value: Any) -> bool:
    """Whether ``value`` is a plain JSON scalar or list of them (not an encoded object)."""
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def finished_records(folder: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """sd-tune's records of finished trials in an experiment folder, and the unreadable ones."""
    out, bad = _read_records(folder)
    return out, [f"{RECORDS_DIR}/{t}.json: {excerpt(str(e))[1:-1]}" for t, e in bad.items()]


def _read_records(folder: str) -> tuple[dict[str, dict[str, Any]], dict[str, Exception]]:
    """sd-tune's records in an experiment folder by trial id, and the error that each
    unreadable one raised."""
    out, bad = {}, {}
    for name in store.list_files(store.join(folder, RECORDS_DIR)):
        trial_id = name[: -len(".json")] if name.endswith(".json") else ""
        if not _TRIAL_ID.fullmatch(trial_id):
            continue
        try:
            record = json.loads(
                store.read_bytes(store.join(folder, RECORDS_DIR, name), MAX_TRIAL_FILE_BYTES)
            )
            if not isinstance(record, dict) or record.get("trial_id") != trial_id:
                raise ValueError("not a trial record")
        except (OSError, ValueError) as err:
            bad[trial_id] = err
            continue
        out[trial_id] = record
    return out, bad


def _searched_params(config: Any) -> dict[str, Any]:
    """The plain ``section.key`` values of a trial's config as Tune stored it, and a seed's
    configuration id and repeat (``search.repeats``)."""
    if not isinstance(config, dict):
        return {}
    return {
        k: v
        for k, v in config.items()
        if ("." in k or k in (CONFIG_KEY, REPEAT_KEY, BASELINE_KEY)) and _plain(v)
    }


def _node_ids(value: Any) -> list[str]:
    """``worker_node_ids`` as reported (one comma-separated string, rank order) -> a list."""
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return [str(v) for v in value or []]


_KEEP = (*EPOCH_METRICS, *FINAL_METRICS, "worker_node_ids")
