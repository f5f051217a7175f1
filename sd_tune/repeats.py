"""Seeds per configuration (issue 26): a Tune searcher that trains each configuration its inner
searcher (``OptunaSearch``) suggests with ``repeats`` seeds, one Tune trial per seed, and tells
the inner searcher the mean of each objective once, when every seed of the configuration has
ended. Seeds of different configurations fill free slots: a configuration's seeds are handed
out first, then the next configuration is asked for, with no wait for a whole group.

Each trial's config carries its configuration id (:data:`CONFIG_KEY`), its repeat
(:data:`REPEAT_KEY`) and its seed (``train.seed``). Repeat ``k``'s seed is
``seed_from(train.seed, k)``, not ``train.seed + k``: the data order is seeded with seed +
epoch, so seed s at epoch e+1 would shuffle as seed s+1 at epoch e. The groups live in the
searcher's state, which Tune saves with the experiment, so a resumed search neither loses a
finished seed nor asks for a configuration twice. ``search.make_searcher`` uses it when
``search.repeats`` > 1."""

from __future__ import annotations

import json
import os
import pickle
import statistics
import tempfile
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import Searcher

from sd_tune import storage as store
from sd_tune.config import SEED_LIMIT
from sd_tune.configurations import TOLD_FILE
from sd_tune.data.samplers import seed_from

CONFIG_KEY = "config_id"  # no dot: not a trial setting
REPEAT_KEY = "repeat"
SEED_KEY = "train.seed"


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of repeat ``repeat`` of a configuration searched with ``train.seed`` = ``seed``.

    >>> repeat_seed(0, 0) == repeat_seed(0, 0), repeat_seed(0, 1) == repeat_seed(1, 0)
    (True, False)
    """
    return seed_from(seed, repeat) % SEED_LIMIT  # a train.seed: 0 <= seed < 2**32


@dataclass
class Group:
    """One configuration: what the inner searcher suggested, how many seeds were handed out,
    and each ended seed's final result (None: it failed)."""

    config: dict[str, Any]
    handed_out: int = 0
    ended: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    trial_ids: dict[int, str] = field(default_factory=dict)  # repeat -> its Tune trial


class RepeatSearcher(Searcher):
    """Wraps ``inner``: each configuration it suggests runs as ``repeats`` trials whose seeds
    derive from ``seed``; ``inner`` is told each objective's mean over the seeds that finished,
    or that the configuration failed when none did."""

    def __init__(self, inner: Searcher, repeats: int, seed: int) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be 1 or more, got {repeats}")
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner = inner
        self.repeats = repeats
        self.seed = seed
        self.groups: dict[str, Group] = {}
        self.trials: dict[str, tuple[str, int]] = {}  # Tune trial id -> (config id, repeat)
        self.told: dict[str, dict[str, Any]] = {}  # config id -> the seeds and means told

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        done = self.inner.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.inner.metric, self.inner.mode
        return done

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config_id = next((c for c, g in self.groups.items() if g.handed_out < self.repeats), None)
        if config_id is None:
            config_id = f"c{len(self.groups):05d}"
            config = self.inner.suggest(config_id)
            if config is None or config == Searcher.FINISHED:
                return config
            self.groups[config_id] = Group(dict(config))
        group = self.groups[config_id]
        repeat = group.handed_out
        group.handed_out += 1
        group.trial_ids[repeat] = trial_id
        self.trials[trial_id] = (config_id, repeat)
        return {
            **group.config,
            SEED_KEY: repeat_seed(self.seed, repeat),
            CONFIG_KEY: config_id,
            REPEAT_KEY: repeat,
        }

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Per-epoch results stay here: one seed's curve is no configuration's."""

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        where = self.trials.get(trial_id)
        if where is None:
            return  # not a trial of this searcher's
        config_id, repeat = where
        group = self.groups[config_id]
        if repeat in group.ended:
            return  # told twice (a restored trial): the first word stands
        group.ended[repeat] = None if error or not result else dict(result)
        if len(group.ended) < self.repeats:
            return
        # Each objective's mean over the seeds that finished and reported every objective;
        # a configuration none of whose seeds did is a failed Optuna trial.
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        counted = {
            k: r
            for k, r in sorted(group.ended.items())
            if r and all(r.get(m) is not None for m in metrics)
        }
        means = (
            {m: statistics.fmean(float(r[m]) for r in counted.values()) for m in metrics}
            if counted
            else None
        )
        seeds = [group.trial_ids.get(k) for k in counted]
        self.told[config_id] = {"seeds": seeds, "means": means}
        self.inner.on_trial_complete(config_id, means, error=not counted)

    def get_state(self) -> dict[str, Any]:
        return {
            "repeats": self.repeats,
            "seed": self.seed,
            "groups": self.groups,
            "trials": self.trials,
            "told": self.told,
            "inner": _saved(self.inner),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.repeats, self.seed = state["repeats"], state["seed"]
        self.groups, self.trials = state["groups"], state["trials"]
        self.told = state.get("told", {})
        _restore(self.inner, state["inner"])

    def save(self, checkpoint_path: str) -> None:
        """Tune's pickle of the state, and beside it :data:`TOLD_FILE`: what Optuna was told,
        as JSON (Tune uploads the folder with the experiment; the report reads it as data)."""
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)
        told = os.path.join(os.path.dirname(checkpoint_path), TOLD_FILE)
        store.replace_file(told, json.dumps(self.told))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


def _saved(searcher: Searcher) -> bytes:
    """``searcher``'s own save file, as bytes."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "inner.pkl")
        searcher.save(path)
        with open(path, "rb") as f:
            return f.read()


def _restore(searcher: Searcher, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "inner.pkl")
        with open(path, "wb") as f:
            f.write(data)
        searcher.restore(path)
