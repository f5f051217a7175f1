"""Every sd-tune name that an experiment's pickles hold, in one place.

Tune pickles an experiment's run config (sd-tune's callbacks and stopper, and the space that
``Progress`` keeps), its searcher and the searcher's state, each class by its module path;
``sd-tune resume`` unpickles them. A name here must therefore keep resolving for as long as
experiments written with it may be resumed: when a module moves into a package, the package
that takes the module's name re-exports it (``sd_tune.config``, ``sd_tune.search``), and the
new path joins this list if new pickles hold it. ``tests/test_pickled.py`` resolves every
name; the end-to-end tests check that a real experiment's pickles hold no sd-tune name
missing here.
"""

from __future__ import annotations

import importlib
from typing import Any

PICKLED_NAMES: tuple[str, ...] = (
    # The space that Progress keeps, as experiments before issue 28 name it (sd_tune.config).
    "sd_tune.config.DatasetConfig",
    "sd_tune.config.ModelConfig",
    "sd_tune.config.TrainConfig",
    "sd_tune.config.StochasticDepthConfig",
    "sd_tune.config.ResourcesConfig",
    "sd_tune.config.TrialConfig",
    "sd_tune.config.Objective",
    "sd_tune.config.SchedulerConfig",
    "sd_tune.config.SearchConfig",
    "sd_tune.config.SpaceFile",
    # ... and where they live since issue 28 (new experiments' pickles name these).
    "sd_tune.config.settings.DatasetConfig",
    "sd_tune.config.settings.ModelConfig",
    "sd_tune.config.settings.TrainConfig",
    "sd_tune.config.settings.StochasticDepthConfig",
    "sd_tune.config.settings.ResourcesConfig",
    "sd_tune.config.settings.TrialConfig",
    "sd_tune.config.settings.Objective",
    "sd_tune.config.settings.SchedulerConfig",
    "sd_tune.config.settings.SearchConfig",
    "sd_tune.config.settings.SpaceFile",
    # The run config's callbacks and stopper, as experiments before issue 28 name them.
    "sd_tune.search.Progress",
    "sd_tune.search.TrialRecords",
    "sd_tune.search.ScalarsOnlyTBX",
    "sd_tune.search.StopWhenStorageFails",
    # ... and where they live since issue 28 (new experiments' pickles name these).
    "sd_tune.search.progress.Progress",
    "sd_tune.search.records.TrialRecords",
    "sd_tune.search.tuner.ScalarsOnlyTBX",
    "sd_tune.search.records.StopWhenStorageFails",
    # The trainable (sd_tune.tune_trial since issue 25). No Ray 2.60 experiment's pickles
    # were found to hold it (resume hands Tuner.restore the trainable again); listed so
    # that a tuner.pkl that does hold it still loads.
    "sd_tune.search.run_trial_in_tune",
    "sd_tune.tune_trial.run_trial_in_tune",
    # The searcher of seeds per configuration and its groups (searcher-state-*.pkl).
    "sd_tune.repeats.RepeatSearcher",
    "sd_tune.repeats.Group",
)


def resolve(name: str) -> Any:
    """The object that a pickle's reference ``module.name`` finds, found as pickle finds it
    (import the module, then take the attribute).

    >>> resolve("sd_tune.config.SpaceFile").__name__
    'SpaceFile'
    """
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)
