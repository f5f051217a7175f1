"""A failed trial's error: its ``error.txt`` read with a bound, and the root cause's line."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from sd_tune import storage as store
from sd_tune.search.files import MAX_TRIAL_FILE_BYTES


def _error_text(trial: Any) -> str:
    """A Tune trial's whole error text (its ``error.txt``), or ''."""
    paths = []
    # The driver's staging copy, written first (Ray 2.60 asserts a running Ray for it).
    with contextlib.suppress(AssertionError, AttributeError):
        paths.append(trial.error_file)
    if getattr(trial, "path", None):  # the stored copy (a local experiment or a copy of one)
        paths.append(str(Path(trial.path) / "error.txt"))
    for p in paths:
        text = _read_error_file(Path(p)) if p else None
        if text is not None:
            return text
    return ""


def _read_error_file(path: Path) -> str | None:
    """The text of an ``error.txt``; None when it is not there, unreadable or too large."""
    try:
        return _read_local(path).decode(errors="replace")
    except (OSError, ValueError):  # ValueError: store.TooLarge
        return None


def _last_error_line(text: str) -> str:
    r"""The root cause in an error text: its last line that is not part of a stack (without
    the name of an sd-tune error class, whose message says it all).

    >>> _last_error_line("Traceback ...\n  File x\nsd_tune.ray_train.NoRoomForWorkers: no room")
    'no room'
    >>> _last_error_line("Traceback ...\nValueError: loss is nan")
    'ValueError: loss is nan'
    """
    lines = [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip() and not ln.startswith(("Traceback", "  ", "The above exception"))
    ]
    line = re.sub(r"^sd_tune(\.\w+)+: ", "", lines[-1]) if lines else ""
    return line if len(line) <= 500 else line[:497] + "..."


def _read_local(path: Path, limit: int = MAX_TRIAL_FILE_BYTES) -> bytes:
    return store.read_bytes(str(path), limit)
