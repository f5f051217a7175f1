"""Typed configuration: one trial's settings and the search-space file, loaded from YAML.

Neither torch nor Ray is imported here. Every problem in a file is collected and reported
together, each with the file, the key path and what is wrong (:class:`ConfigError`).

A package of one idea a module, in import order: ``messages`` (excerpts, the name rule,
``ConfigError``, renamed keys), ``settings`` (the dataclasses and their bounds), ``trial``
(one trial's sections checked), ``loading`` (YAML in, ``--set``), ``space`` (the space file).
``sd_tune.config`` re-exports the public names it had as a module: experiments' pickles name
its dataclasses ``sd_tune.config.<Class>`` (listed in :mod:`sd_tune.pickled`).
"""

from __future__ import annotations

from sd_tune.config.loading import (
    apply_overrides,
    load_yaml,
    parse_value,
)
from sd_tune.config.messages import (
    MAX_NAME_CHARS,
    MAX_PROBLEMS_SHOWN,
    RENAMED_KEYS,
    ConfigError,
    RenamedKey,
    excerpt,
    name_problem,
)
from sd_tune.config.settings import (
    DISTRIBUTION_KINDS,
    EPOCH_METRICS,
    FINAL_METRICS,
    LIMITS,
    MAX_CHOICES,
    MAX_FILE_BYTES,
    MAX_SET_CHARS,
    MAX_TEXT_CHARS,
    SAMPLERS,
    SECTIONS,
    SEED_LIMIT,
    TOP_KEYS,
    DatasetConfig,
    ModelConfig,
    Objective,
    ResourcesConfig,
    SchedulerConfig,
    SearchConfig,
    SpaceFile,
    StochasticDepthConfig,
    TrainConfig,
    TrialConfig,
)
from sd_tune.config.space import (
    drop_rate_can_be_above_zero,
    load_space,
    nothing_searched,
    searched_keys,
    space_from_dict,
    trial_count,
)
from sd_tune.config.trial import (
    make_trial,
    trial_from_dict,
    validate_trial,
)

__all__ = [
    "DISTRIBUTION_KINDS",
    "EPOCH_METRICS",
    "FINAL_METRICS",
    "LIMITS",
    "MAX_CHOICES",
    "MAX_FILE_BYTES",
    "MAX_NAME_CHARS",
    "MAX_PROBLEMS_SHOWN",
    "MAX_SET_CHARS",
    "MAX_TEXT_CHARS",
    "RENAMED_KEYS",
    "SAMPLERS",
    "SECTIONS",
    "SEED_LIMIT",
    "TOP_KEYS",
    "ConfigError",
    "DatasetConfig",
    "ModelConfig",
    "Objective",
    "RenamedKey",
    "ResourcesConfig",
    "SchedulerConfig",
    "SearchConfig",
    "SpaceFile",
    "StochasticDepthConfig",
    "TrainConfig",
    "TrialConfig",
    "apply_overrides",
    "drop_rate_can_be_above_zero",
    "excerpt",
    "load_space",
    "load_yaml",
    "make_trial",
    "name_problem",
    "nothing_searched",
    "parse_value",
    "searched_keys",
    "space_from_dict",
    "trial_count",
    "trial_from_dict",
    "validate_trial",
]
