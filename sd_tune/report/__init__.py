"""Results of a search: the Pareto front, time to accuracy and the report's files
(docs/design.md §4).

The input is a list of trial records, the plain dicts the search layer hands over (their
fields: ``sd_tune.records``). Only *completed* trials enter a Pareto front: a stopped-early,
failed or running trial's last values are partial. :func:`write_results` writes every file of
a report (``trials.csv``, ``trials.json``, ``pareto.json``, ``time_to_accuracy.json``,
``summary.md``), and through ``report.figures`` and ``report.tensorboard`` the figures and
the TensorBoard entries.
Every file is written in one step (a temporary file or folder, then a rename), so an
interrupted report or a full disk leaves the previous report's files whole. Nothing here
imports Ray or torch.
"""

from __future__ import annotations

from sd_tune.records import STATUSES, Record
from sd_tune.report.analysis import (
    DEFAULT_OBJECTIVES,
    configuration_front,
    dominates,
    pareto_front,
    time_to_accuracy,
)
from sd_tune.report.results import load_records, write_results
from sd_tune.report.tables import format_pareto_table, summary_markdown
from sd_tune.report.tensorboard import TENSORBOARD_DIR

__all__ = [
    "DEFAULT_OBJECTIVES",
    "STATUSES",
    "TENSORBOARD_DIR",
    "Record",
    "configuration_front",
    "dominates",
    "format_pareto_table",
    "load_records",
    "pareto_front",
    "summary_markdown",
    "time_to_accuracy",
    "write_results",
]
