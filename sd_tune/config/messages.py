"""How configuration problems are told: bounded excerpts of values, the name rule,
:class:`ConfigError` listing every problem of a file, and the note for a renamed key.
"""

from __future__ import annotations

import re
import reprlib
import warnings
from typing import Any

from sd_tune.errors import SdTuneError

MAX_NAME_CHARS = 100  # an experiment or run name: one folder name
MAX_PROBLEMS_SHOWN = 20  # a message lists this many problems, then says how many more
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

_EXCERPT = reprlib.Repr()
_EXCERPT.maxstring = 80
_EXCERPT.maxother = 80
_EXCERPT.maxlong = 40
_EXCERPT.maxlist = _EXCERPT.maxtuple = _EXCERPT.maxdict = _EXCERPT.maxset = 6
_EXCERPT.maxlevel = 3


def excerpt(value: Any) -> str:
    """A bounded ``repr`` of ``value`` for messages: never the whole of a long value.

    >>> excerpt("x" * 1000)[:12], len(excerpt(list(range(10**6)))) < 100
    ("'xxxxxxxxxxx", True)
    """
    return _EXCERPT.repr(value)


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be an experiment or run name, or None. A name is one folder name
    under the storage: letters, digits, ``_``, ``.``, ``-``, starting with a letter or digit,
    at most :data:`MAX_NAME_CHARS` characters (so never ``..``, ``/x`` or ``a/b``).

    >>> name_problem("smoke-2"), name_problem("../escape")[:46]
    (None, "must be one folder name (letters, digits, '_',")
    """
    if isinstance(name, str) and len(name) <= MAX_NAME_CHARS and _NAME.fullmatch(name):
        return None
    got = (
        f"{len(name)} characters"
        if isinstance(name, str) and len(name) > MAX_NAME_CHARS
        else excerpt(name)
    )
    return (
        f"must be one folder name (letters, digits, '_', '.', '-', starting with a letter "
        f"or digit, at most {MAX_NAME_CHARS} characters), but got {got}"
    )


class ConfigError(SdTuneError, ValueError):
    """One or more problems in a configuration; ``problems`` lists ``(key path, message)``."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem{'s' if len(problems) > 1 else ''}:"]
        lines += [
            f"  {path}: {msg}" if path else f"  {msg}"
            for path, msg in problems[:MAX_PROBLEMS_SHOWN]
        ]
        if len(problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
        super().__init__("\n".join(lines))


class RenamedKey(FutureWarning):
    """An old key was used: it still works, under its new name (the CLI prints a note)."""


# Old keys still read, with a note: section -> {old key: the key's name now}.
RENAMED_KEYS: dict[str, dict[str, str]] = {"stochastic_depth": {"method": "stochastic_method"}}


def _renamed(section: str, key: str) -> str:
    """``key``'s name now (itself unless it is an old key of ``section``), with a note."""
    new = RENAMED_KEYS.get(section, {}).get(key)
    if new is None:
        return key
    warnings.warn(
        f"`{section}.{key}` is the old name of `{section}.{new}` (the name "
        f"apply_stochastic_depth uses); it still works, but rename it",
        RenamedKey,
        stacklevel=3,
    )
    return new
