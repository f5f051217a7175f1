"""Where things live in an experiment folder (sd-tune's own files beside Tune's), the bounds on
what is read back, and whether Tune's state files are whole.
"""

from __future__ import annotations

import fnmatch
import json
import pickletools
import re

from sd_tune import storage as store
from sd_tune.tune_trial import RUNS_DIR

SPEC_FILE = "sd_tune_space.json"  # the resolved space file, saved at launch for resume/report

OWN_DIR = "sd_tune"  # sd-tune's own record in an experiment folder

RECORDS_DIR = f"{OWN_DIR}/trials"  # <trial id>.json: each finished trial, written at its end

SPEC_COPY = f"{OWN_DIR}/space.json"  # a second copy of SPEC_FILE

STATE_COPY = f"{OWN_DIR}/tune_state.json"  # Tune's last good state, for resume

# Tune's files that ``Tuner.restore`` needs, by kind (<session> is the run's start time).
TUNE_STATE = {
    "experiment_state": "experiment_state-*.json",
    "search_gen_state": "search_gen_state-*.json",
    "searcher_state": "searcher-state-*.pkl",
}

TUNER_PKL = "tuner.pkl"

# What reporting an experiment at a URI leaves out of its local copy: the Train runs and
# checkpoints (ImageNet ones are 100s of MB each), the TensorBoard files, and what reporting
# never reads (pickles, the state copy, the lock).
REPORT_SKIPS = (
    RUNS_DIR,
    "checkpoint_*",
    "tensorboard",
    "events.out.tfevents.*",
    "*.pkl",
    "search_gen_state-*",
    "tune_state.json",
    store.LOCK_FILE,
    "*.set-aside-*",
)

# Largest files that report and resume read: far above real ones, so a planted or damaged
# file cannot exhaust memory.
MAX_STATE_BYTES = 512 * 2**20  # Tune's state of ~50,000 trials

MAX_TRIAL_FILE_BYTES = 64 * 2**20  # a trial's result.json (~2 KB an epoch), error.txt, record

_TRIAL_ID = re.compile(r"[A-Za-z0-9_]{1,64}")


def _newest_state(names: list[str]) -> dict[str, str] | None:
    """``{kind: file name}`` of the newest session's state files among ``names`` (Tune
    restores the newest ``experiment_state-*.json``), or None when there is none."""
    states = sorted(fnmatch.filter(names, TUNE_STATE["experiment_state"]))
    if not states:
        return None
    session = states[-1][len("experiment_state-") : -len(".json")]
    return {kind: pattern.replace("*", session) for kind, pattern in TUNE_STATE.items()}


def _state_problem(kind: str, data: bytes) -> str | None:
    """Why a state file cannot be what Tune restores from (truncated, empty), or None.
    Checked without running anything: JSON is parsed, a pickle's opcodes only walked."""
    if not data:
        return "empty"
    if kind == "experiment_state":
        try:
            state = json.loads(data)
        except ValueError:
            return f"not valid JSON ({len(data):,} bytes: cut short?)"
        ok = isinstance(state, dict) and isinstance(state.get("trial_data"), list)
        return None if ok and "runner_data" in state else "not a Tune experiment state"
    last = None
    try:
        for opcode, _, pos in pickletools.genops(data):
            last = (opcode.name, pos)
    except Exception:  # genops raises ValueError and others on cut-off data
        return f"not a whole pickle ({len(data):,} bytes: cut short?)"
    if last is None or last[0] != "STOP" or last[1] != len(data) - 1:
        return f"not a whole pickle ({len(data):,} bytes)"
    return None
