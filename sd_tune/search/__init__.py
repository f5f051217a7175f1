"""The search: a Ray Tune experiment whose trials are Ray Train trials, searched by Optuna.

Each Tune trial is a function that builds a ``TorchTrainer`` (Train V2) named after the Tune
trial id, with ``TuneReportCallback``; a restored experiment therefore finds each unfinished
trial's Train checkpoints. Tune does not see the workers' resources, so concurrency is set
from them here.

Besides Tune's files, an experiment folder holds sd-tune's own record (``sd_tune/``): each
finished trial's record (``sd_tune/trials/<id>.json``), a copy of the space file
(``sd_tune/space.json``) and of Tune's last good state (``sd_tune/tune_state.json``), each
written in one step. ``report`` reads only plain data (JSON, text): the records, Tune's trial
folders and the trial list of Tune's state file, never its pickles. ``resume`` hands the
folder to ``Tuner.restore``, which does unpickle Tune's state: resume only experiments you
(or people you trust) wrote.

A package of one idea a module, in import order: ``files`` (where things live, whether
Tune's state files are whole), ``trial_errors``, ``spec`` (the saved space), ``records``
(sd-tune's trial records, the storage-failure stop), ``state`` (Tune's state checked and
repaired), ``progress`` (the terminal's lines), ``results`` (records read back for the
report), ``tuner`` (the Tune experiment). ``sd_tune.search`` re-exports the public names it
had as a module: experiments written before the move name ``Progress``, ``TrialRecords``,
``ScalarsOnlyTBX``, ``StopWhenStorageFails`` and ``run_trial_in_tune`` as
``sd_tune.search.<name>`` in their pickles (listed in :mod:`sd_tune.pickled`).
"""

from __future__ import annotations

from sd_tune.search.files import (
    MAX_STATE_BYTES,
    MAX_TRIAL_FILE_BYTES,
    OWN_DIR,
    RECORDS_DIR,
    REPORT_SKIPS,
    SPEC_COPY,
    SPEC_FILE,
    STATE_COPY,
    TUNE_STATE,
    TUNER_PKL,
)
from sd_tune.search.progress import (
    Progress,
    trial_error,
)
from sd_tune.search.records import (
    FINISHED_STATUSES,
    STORAGE_FAILED,
    StopWhenStorageFails,
    StorageFailure,
    TrialRecords,
    finished_records,
)
from sd_tune.search.results import (
    collect_records,
    repair_records,
)
from sd_tune.search.spec import (
    SpecError,
    base_config,
    load_spec,
    optuna_distributions,
    save_spec,
)
from sd_tune.search.state import (
    StateError,
    check_state,
    storage_failures,
)
from sd_tune.search.tuner import (
    TRIAL_DRIVER_MEMORY,
    ScalarsOnlyTBX,
    SearchFailed,
    concurrency,
    experiment_dir,
    make_sampler,
    make_scheduler,
    make_searcher,
    max_epochs,
    resume_search,
    run_search,
    trainable,
    tune_run_config,
)
from sd_tune.tune_trial import RUNS_DIR, run_trial_in_tune  # old pickles name it here

__all__ = [
    "FINISHED_STATUSES",
    "MAX_STATE_BYTES",
    "MAX_TRIAL_FILE_BYTES",
    "OWN_DIR",
    "RECORDS_DIR",
    "REPORT_SKIPS",
    "RUNS_DIR",
    "SPEC_COPY",
    "SPEC_FILE",
    "STATE_COPY",
    "STORAGE_FAILED",
    "TRIAL_DRIVER_MEMORY",
    "TUNER_PKL",
    "TUNE_STATE",
    "Progress",
    "ScalarsOnlyTBX",
    "SearchFailed",
    "SpecError",
    "StateError",
    "StopWhenStorageFails",
    "StorageFailure",
    "TrialRecords",
    "base_config",
    "check_state",
    "collect_records",
    "concurrency",
    "experiment_dir",
    "finished_records",
    "load_spec",
    "make_sampler",
    "make_scheduler",
    "make_searcher",
    "max_epochs",
    "optuna_distributions",
    "repair_records",
    "resume_search",
    "run_search",
    "run_trial_in_tune",
    "save_spec",
    "storage_failures",
    "trainable",
    "trial_error",
    "tune_run_config",
]
