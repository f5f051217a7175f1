"""Tune's saved state: checked before ``Tuner.restore`` (and restored from sd-tune's copy when
cut short), the trials it lists, the storage failures it recorded.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import time
from typing import Any

from sd_tune import storage as store
from sd_tune.config import (
    excerpt,
)
from sd_tune.errors import SdTuneError
from sd_tune.search.files import (
    _TRIAL_ID,
    MAX_STATE_BYTES,
    MAX_TRIAL_FILE_BYTES,
    STATE_COPY,
    TUNE_STATE,
    TUNER_PKL,
    _newest_state,
    _state_problem,
)
from sd_tune.search.records import _searched_params, finished_records


class StateError(SdTuneError):
    """Tune's state cannot be restored; the message says what is kept and what to do."""


def _root_state_problem(exp_dir: str, files: dict[str, str]) -> str | None:
    for kind, name in [*files.items(), ("tuner", TUNER_PKL)]:
        try:
            data = store.read_bytes(store.join(exp_dir, name), MAX_STATE_BYTES)
        except FileNotFoundError:
            return f"{name} is missing"
        except (OSError, ValueError) as err:
            return f"{name} cannot be read ({excerpt(str(err))[1:-1]})"
        if (problem := _state_problem(kind, data)) is not None:
            return f"{name} is {problem}"
    return None


def _state_copy(exp_dir: str) -> tuple[str, dict[str, bytes]] | None:
    """sd-tune's copy of Tune's last good state: (when it was saved, {name: bytes}), or None
    when there is none whole."""
    try:
        payload = json.loads(store.read_bytes(store.join(exp_dir, STATE_COPY), MAX_STATE_BYTES))
        files = {str(n): base64.b64decode(c) for n, c in payload["files"].items()}
        saved = str(payload["saved"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    kinds = {
        n: k
        for n in files
        for k, pat in [*TUNE_STATE.items(), ("tuner", TUNER_PKL)]
        if fnmatch.fnmatch(n, pat)
    }
    if sorted(kinds.values()) not in (sorted(TUNE_STATE), sorted([*TUNE_STATE, "tuner"])):
        return None
    if any(_state_problem(kinds[n], c) is not None for n, c in files.items()):
        return None
    return saved, files


def check_state(exp_dir: str) -> str | None:
    """Make sure ``Tuner.restore`` finds a whole state in ``exp_dir`` before it is called.

    Returns None when Tune's newest state reads back whole; a note when it did not and
    sd-tune's copy of the last good state (or an older whole session of Tune's) was put in
    its place (the files it replaces are kept, renamed ``<name>.set-aside-<time>``). Raises
    :class:`StateError` when there is nothing whole to restore from; then nothing is changed.
    """
    names = store.list_files(exp_dir)
    newest = _newest_state(names)
    problem = (
        "no experiment_state-*.json" if newest is None else _root_state_problem(exp_dir, newest)
    )
    if problem is None:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def set_aside(files: list[str]) -> list[str]:
        moved = []
        for name in files:
            if name in names:
                store.move(
                    store.join(exp_dir, name), store.join(exp_dir, f"{name}.set-aside-{stamp}")
                )
                moved.append(name)
        return moved

    copy = _state_copy(exp_dir)
    if copy is not None:
        saved, files = copy
        copied = _newest_state(list(files))
        assert copied is not None
        newer = [
            n
            for n in fnmatch.filter(names, TUNE_STATE["experiment_state"])
            if n >= copied["experiment_state"]
        ]
        stale = [f for n in newer for f in (_newest_state([n]) or {}).values()]
        if TUNER_PKL in files:
            stale.append(TUNER_PKL)
        moved = set_aside(sorted(set(stale)))
        for name, content in files.items():
            store.write_bytes(store.join(exp_dir, name), content)
        return (
            f"Tune's state could not be restored ({problem}); restored the copy sd-tune "
            f"kept at {saved}"
            + (f" (the files it replaces are kept as <name>.set-aside-{stamp})" if moved else "")
        )
    sessions = sorted(fnmatch.filter(names, TUNE_STATE["experiment_state"]), reverse=True)
    for name in sessions[1:]:
        files = _newest_state([name])
        assert files is not None
        if _root_state_problem(exp_dir, files) is None:
            stale = [f for n in sessions if n > name for f in (_newest_state([n]) or {}).values()]
            set_aside(sorted(set(stale)))
            return (
                f"Tune's newest state could not be restored ({problem}); restored the "
                f"older {name} (the newer files are kept as <name>.set-aside-{stamp})"
            )
    finished = len(finished_records(exp_dir)[0])  # read only for this message
    raise StateError(
        f"cannot resume {exp_dir}: Tune's state could not be restored ({problem}), and no "
        f"whole copy of it is there; nothing was changed. The {finished} finished trial(s) "
        f"that sd-tune recorded are kept: `sd-tune report {exp_dir}` lists them. To run the "
        f"rest, start a new experiment (sd-tune launch --name NEW)"
    )


def storage_failures(exp_dir: str) -> list[str]:
    """Trials that Tune's state lists as failed because the storage was full or could not be
    reached (their ``error.txt`` says so): ``resume`` runs them again."""
    out = []
    for trial in _state_trials(exp_dir)[0]:
        if trial["status"] != "ERROR":
            continue
        try:
            text = store.read_bytes(
                store.join(exp_dir, f"trial_{trial['trial_id']}", "error.txt"), MAX_TRIAL_FILE_BYTES
            )
        except (OSError, ValueError):
            continue
        said = text.decode(errors="replace")
        if store.says_disk_full(said) or store.says_unreachable(said):
            out.append(trial["trial_id"])
    return out


def _state_trials(folder: str) -> tuple[list[dict[str, Any]], str | None]:
    """The trials Tune's newest readable state file lists, as ``{"trial_id", "status",
    "config"}``, read as plain JSON (the pickles in it are never decoded), and a note when
    the newest one cannot be read."""
    names = sorted(
        fnmatch.filter(store.list_files(folder), TUNE_STATE["experiment_state"]), reverse=True
    )
    note = None
    for name in names:
        try:
            state = json.loads(store.read_bytes(store.join(folder, name), MAX_STATE_BYTES))
            entries = state["trial_data"]
            trials = []
            for entry in entries:
                data = json.loads(entry[0])
                trial_id = data.get("trial_id")
                if not isinstance(trial_id, str) or not _TRIAL_ID.fullmatch(trial_id):
                    continue
                trials.append(
                    {
                        "trial_id": trial_id,
                        "status": str(data.get("status")),
                        "config": _searched_params(data.get("config")),
                    }
                )
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            why = (
                "not valid JSON: cut short?"
                if isinstance(err, ValueError)
                else "not a Tune experiment state"
            )
            note = note or f"Tune's state {name} cannot be read ({why})"
            continue
        return trials, note
    return [], note
