"""The Tune function trainable: one Ray Train run per Tune trial.

A Tune trial runs in a Ray actor (a new one for a launch's first trial, and for every trial
under ASHA, which reuses none), which imports the module that defines its function before
it can start the trial's ``TorchTrainer``. That module is this one, so it imports only what
a trial runs (Ray Tune and Train, the trial settings, storage paths), not the search,
Optuna, the report or SciPy: those cost the actor about 1 s more on a 2-core machine
(benchmarks/trial_imports.py).
"""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from sd_tune import ray_train
from sd_tune import storage as store
from sd_tune.config import TrialConfig, apply_overrides, make_trial

RUNS_DIR = "train_runs"  # <experiment>/train_runs/train_<trial id>/: each trial's Train run


def build_trial(base: dict[str, Any], params: dict[str, Any]) -> TrialConfig:
    """The trial config for one set of searched values (ConfigError if invalid)."""
    return make_trial(apply_overrides(base, params), "searched trial configuration")


def run_trial_in_tune(
    config: dict[str, Any],
    base: dict[str, Any] | None = None,
    storage: str = "",
    experiment: str = "",
    max_failures: int = 1,
    placement_wait_s: float = ray_train.PLACEMENT_WAIT_S,
) -> None:
    """The Tune function trainable: one Ray Train run per Tune trial."""
    assert base is not None
    params = {k: v for k, v in config.items() if "." in k}
    trial = build_trial(base, params)
    trial_id = tune.get_context().get_trial_id()
    runs = store.join(storage, experiment, RUNS_DIR)
    name = f"train_{trial_id}"
    # A Train run of this trial exists already: Tune is restoring the trial (after Ctrl-C or a
    # killed driver) and has started its results anew, so the run reports its past epochs again.
    restored = store.exists(store.join(runs, name))
    trainer = ray_train.make_trainer(
        trial,
        storage_path=runs,
        name=name,
        max_failures=max_failures,
        callbacks=[TuneReportCallback()],
        replay_history=restored,
        placement_wait_s=placement_wait_s,
    )
    ray_train.fit(trainer, trial, placement_wait_s)
