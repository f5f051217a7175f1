"""The trial records of a stored experiment for the report: sd-tune's own, and rebuilt from
Tune's trial folders where one is missing or damaged (plain data only, never a pickle).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from sd_tune import storage as store
from sd_tune.config import (
    SpaceFile,
    excerpt,
)
from sd_tune.search.files import _TRIAL_ID, RECORDS_DIR, REPORT_SKIPS, TUNE_STATE
from sd_tune.search.records import (
    _KEEP,
    FINISHED_STATUSES,
    _read_records,
    _record,
    _searched_params,
    finished_records,
)
from sd_tune.search.spec import base_config
from sd_tune.search.state import _state_trials
from sd_tune.search.trial_errors import _last_error_line, _read_error_file, _read_local


def collect_records(
    exp_dir: str, spec: SpaceFile, notes: list[str] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every trial of a stored experiment (a folder or a URI) whose space is ``spec`` (see
    :func:`load_spec`) as a plain record (see ``sd_tune.report``), and a line for each thing
    that could not be read (the records leave out what it held). Only plain data is read:
    sd-tune's records, Tune's trial folders (``result.json``, ``params.json``, ``error.txt``)
    and the trial list of Tune's state, never a pickle. An experiment at a URI is read from a
    temporary local copy of its small files (``REPORT_SKIPS`` left out); the records' ``logdir``
    name the URI's folders. A record of a trial that Tune's state does not list and that has
    no folder is left out, with a line in ``notes``."""
    if not store.is_uri(exp_dir):
        return _records(exp_dir, exp_dir, spec, notes)
    with tempfile.TemporaryDirectory(prefix="sd-tune-report-") as tmp:
        copy = Path(tmp, "experiment")
        store.download(exp_dir, copy, skip=REPORT_SKIPS)
        return _records(str(copy), exp_dir, spec, notes)


def repair_records(exp_dir: str, spec: SpaceFile) -> list[str]:
    """Set aside each of sd-tune's trial records that cannot be read (renamed
    ``<id>.json.set-aside-<time>``) and write it anew from what the trial's folder and Tune's
    state hold, where the trial has finished and reported epochs; a line for each. Run by
    ``resume`` before Tune starts, so that a damaged record does not fail the report after
    the whole search."""
    bad = {  # a storage that failed to answer (an OSError) is not a damaged record
        t: excerpt(str(err))[1:-1]
        for t, err in _read_records(exp_dir)[1].items()
        if not isinstance(err, OSError)
    }
    if not bad:
        return []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for trial_id in bad:
        name = store.join(exp_dir, RECORDS_DIR, f"{trial_id}.json")
        store.move(name, f"{name}.set-aside-{stamp}")
    rebuilt = {r["trial_id"]: r for r in collect_records(exp_dir, spec)[0]}
    lines = []
    for trial_id, why in bad.items():
        record = dict(rebuilt.get(trial_id, {}))
        record.pop("logdir", None)
        what = f"{RECORDS_DIR}/{trial_id}.json cannot be read ({why}): set aside as "
        what += f"{trial_id}.json.set-aside-{stamp}"
        if record.get("history") and record["status"] in FINISHED_STATUSES:
            store.write_bytes(
                store.join(exp_dir, RECORDS_DIR, f"{trial_id}.json"),
                json.dumps(record, default=str).encode(),
            )
            lines.append(f"{what}, and written anew from trial_{trial_id}")
        else:
            lines.append(f"{what}; the trial's folder and Tune's state stand for it")
    return lines


def _records(
    folder: str, location: str, spec: SpaceFile, notes: list[str] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of the experiment in the local ``folder``, stored at ``location``."""
    base = base_config(spec)
    finished, unreadable = finished_records(folder)
    tune_trials, note = _state_trials(folder)
    listed = {t["trial_id"]: t for t in tune_trials}
    on_disk = sorted(
        p.name[len("trial_") :]
        for p in Path(folder).glob("trial_*")
        if p.is_dir() and _TRIAL_ID.fullmatch(p.name[len("trial_") :])
    )
    ids = list(dict.fromkeys([*listed, *sorted(finished), *on_disk]))
    if listed:  # a record the state does not know and with no folder here is another's
        foreign = [t for t in finished if t not in listed and t not in on_disk]
        if notes is not None:
            notes += [
                f"{RECORDS_DIR}/{t}.json left out: this experiment's state does not list "
                f"trial {t} and it has no folder here (a record from another copy of it?)"
                for t in foreign
            ]
        ids = [t for t in ids if t not in foreign]
    if note and (not finished or set(on_disk) - set(finished)):
        unreadable.append(note)  # the status of trials without a record is a guess
    state_mtime = _state_mtime(folder)
    records = []
    for trial_id in ids:
        trial_dir = Path(folder, f"trial_{trial_id}")
        if trial_id in finished:
            record = dict(finished[trial_id])
        else:
            history, problem = _history(trial_dir)
            if problem:
                unreadable.append(problem)
            tune = listed.get(trial_id)
            params = tune["config"] if tune else _params_json(trial_dir)
            if tune is None:  # not in a readable state: judge by the epochs it reported
                status = "TERMINATED" if history and "test_acc" in history[-1] else "RUNNING"
            else:
                status = tune["status"]
            error = _error_txt(trial_dir) if status == "ERROR" else None
            record = _record(trial_id, params, base, history, status, error)
            if not trial_dir.is_dir() and status in ("TERMINATED", "ERROR"):
                record["status"] = "missing"
                record["error"] = (
                    f"its folder trial_{trial_id} is gone (deleted?) and sd-tune "
                    "has no record of it: its results are lost"
                )
            elif (
                tune is None
                and listed
                and record["status"] == "running"
                and _older_than(trial_dir, state_mtime)
            ):
                record["status"] = "abandoned"
                record["error"] = (
                    "Tune's state does not list it (the state was restored from "
                    "an earlier copy), so the search will not continue it; the "
                    "epochs it reported are kept here"
                )
        record["logdir"] = (
            store.join(location, trial_dir.name) if location != folder else str(trial_dir)
        )
        records.append(record)
    return records, unreadable


def _state_mtime(folder: str) -> float | None:
    """When Tune saved its newest state in ``folder`` (None: no state, or unreadable)."""
    states = sorted(Path(folder).glob(TUNE_STATE["experiment_state"]))
    try:
        return states[-1].stat().st_mtime if states else None
    except OSError:
        return None


def _older_than(trial_dir: Path, state_mtime: float | None) -> bool:
    """Whether Tune saved its newest state after ``trial_dir`` was last changed (so a trial
    that the state does not list is not merely newer than the state)."""
    try:
        return state_mtime is not None and state_mtime > trial_dir.stat().st_mtime
    except OSError:
        return False


def _params_json(trial_dir: Path) -> dict[str, Any]:
    try:
        params = json.loads(_read_local(trial_dir / "params.json"))
    except (OSError, ValueError):
        return {}
    return _searched_params(params)


def _error_txt(trial_dir: Path) -> str | None:
    text = _read_error_file(trial_dir / "error.txt")
    return None if text is None else _last_error_line(text)


def _history(trial_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The epoch reports in a trial folder's ``result.json``, and why some could not be read
    (a line cut short, a file too large), or None."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return [], None
    try:
        text = _read_local(path).decode(errors="replace")
    except (OSError, ValueError) as err:
        return [], f"{trial_dir.name}/result.json: {excerpt(str(err))[1:-1]}"
    out, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError
        except ValueError:
            bad.append(number)
            continue
        out.append({k: row[k] for k in _KEEP if k in row})
    problem = (
        f"{trial_dir.name}/result.json: line {bad[0]} is not valid JSON (cut short?); "
        f"{len(out)} epoch report(s) read"
        if bad
        else None
    )
    return out, problem
