"""One base for every error sd-tune raises on purpose: :class:`SdTuneError`, carrying the exit
code the CLI ends with (2: the user can fix it; 1: a search or trial failed). Each error keeps
its built-in base too (``ConfigError`` is a ``ValueError``, ``CudaDriverError`` a
``RuntimeError``), so code that catches those still does. The CLI's ``main`` catches
``SdTuneError`` once and prints its message as one line. No imports: every layer may raise
these."""

from __future__ import annotations


class SdTuneError(Exception):
    """An error whose message says what happened and what to do; the CLI prints it as one
    line and exits with :attr:`exit_code`."""

    exit_code: int = 2


class UsageError(SdTuneError):
    """An error the user can fix (a bad argument, a busy folder, a missing data set)."""


__all__ = ["SdTuneError", "UsageError"]
