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
``search.repeats`` > 1.

The baseline (``search.baseline``, issue 27): once all ``configurations`` have ended, the best
configuration at each depth (highest mean val_acc) runs again with the same seeds and drop
rate 0, every other setting unchanged; those trials carry :data:`BASELINE_KEY` (the
configuration they ablate) and are not told to the inner searcher. Then the searcher says
FINISHED. With no inner searcher (a space that searches nothing: one fixed configuration
against its baseline) the one configuration is the fixed settings."""

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
from sd_tune.comparison import BASELINE_KEY
from sd_tune.config import SEED_LIMIT
from sd_tune.configurations import TOLD_FILE
from sd_tune.records import number
from sd_tune.seeds import seed_from

CONFIG_KEY = "config_id"  # no dot: not a trial setting
REPEAT_KEY = "repeat"
SEED_KEY = "train.seed"
DROP_KEY = "stochastic_depth.drop_rate"
DEPTH_KEY = "model.depth"
CHOSEN_ON = "val_acc"  # the baseline ablates each depth's best configuration on this


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
    baseline_of: str | None = None  # a baseline: the configuration it runs without SD


class RepeatSearcher(Searcher):
    """Wraps ``inner``: each configuration it suggests runs as ``repeats`` trials whose seeds
    derive from ``seed``; ``inner`` is told each objective's mean over the seeds that finished,
    or that the configuration failed when none did. ``configurations``: how many to ask
    ``inner`` for (None: until Tune stops asking). ``baseline``: then run each depth's best
    configuration without stochastic depth; ``depth`` is the depth of a configuration that
    does not search it."""

    # Class defaults: a searcher pickled before these existed still loads.
    configurations: int | None = None
    baseline: bool = False
    depth: int | None = None

    def __init__(
        self,
        inner: Searcher | None,
        repeats: int,
        seed: int,
        *,
        configurations: int | None = None,
        baseline: bool = False,
        depth: int | None = None,
        metric: str | list[str] | None = None,
        mode: str | list[str] | None = None,
    ) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be 1 or more, got {repeats}")
        if inner is None and configurations != 1:
            raise ValueError("without an inner searcher there is one configuration")
        super().__init__(
            metric=inner.metric if inner else metric, mode=inner.mode if inner else mode
        )
        self.inner = inner
        self.repeats = repeats
        self.seed = seed
        self.configurations = configurations
        self.baseline = baseline
        self.depth = depth
        self.groups: dict[str, Group] = {}
        self.trials: dict[str, tuple[str, int]] = {}  # Tune trial id -> (config id, repeat)
        self.told: dict[str, dict[str, Any]] = {}  # config id -> the seeds and means told

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        if self.inner is None:
            return False
        done = self.inner.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.inner.metric, self.inner.mode
        return done

    def _searched(self) -> list[str]:
        return [c for c, g in self.groups.items() if g.baseline_of is None]

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        config_id = next((c for c, g in self.groups.items() if g.handed_out < self.repeats), None)
        if config_id is None:
            searched = self._searched()
            if self.configurations is None or len(searched) < self.configurations:
                config_id = f"c{len(searched):05d}"
                config = {} if self.inner is None else self.inner.suggest(config_id)
                if config is None or config == Searcher.FINISHED:
                    return config
                self.groups[config_id] = Group(dict(config))
            elif not self.baseline or len(searched) < len(self.groups):
                return Searcher.FINISHED  # every seed handed out, the baseline's too
            elif any(len(self.groups[c].ended) < self.repeats for c in searched):
                return None  # the baseline waits for every configuration to end
            else:
                if not self._start_baseline():
                    return Searcher.FINISHED  # no configuration finished a seed
                return self.suggest(trial_id)
        group = self.groups[config_id]
        repeat = group.handed_out
        group.handed_out += 1
        group.trial_ids[repeat] = trial_id
        self.trials[trial_id] = (config_id, repeat)
        extra = {} if group.baseline_of is None else {BASELINE_KEY: group.baseline_of}
        return {
            **group.config,
            SEED_KEY: repeat_seed(self.seed, repeat),
            CONFIG_KEY: config_id,
            REPEAT_KEY: repeat,
            **extra,
        }

    def winners(self) -> dict[Any, str]:
        """Each depth's configuration with the highest mean val_acc over its finished seeds."""
        best: dict[Any, tuple[float, str]] = {}
        for config_id in self._searched():
            group = self.groups[config_id]
            values = [
                v for r in group.ended.values() if r and (v := number(r.get(CHOSEN_ON))) is not None
            ]
            if not values:
                continue
            mean = statistics.fmean(values)
            depth = group.config.get(DEPTH_KEY, self.depth)
            if depth not in best or mean > best[depth][0]:
                best[depth] = (mean, config_id)
        return {depth: config_id for depth, (_, config_id) in best.items()}

    def _start_baseline(self) -> bool:
        """Add a baseline group for each depth's winner; False when there is none."""
        winners = self.winners()
        for depth in sorted(winners, key=lambda d: (d is None, d)):
            config_id = winners[depth]
            config = {**self.groups[config_id].config, DROP_KEY: 0.0}
            self.groups[f"{config_id}-baseline"] = Group(config, baseline_of=config_id)
        return bool(winners)

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
        if len(group.ended) < self.repeats or group.baseline_of is not None:
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
        if self.inner is not None:
            self.inner.on_trial_complete(config_id, means, error=not counted)

    def get_state(self) -> dict[str, Any]:
        return {
            "repeats": self.repeats,
            "seed": self.seed,
            "groups": self.groups,
            "trials": self.trials,
            "told": self.told,
            "configurations": self.configurations,
            "baseline": self.baseline,
            "depth": self.depth,
            "inner": None if self.inner is None else _saved(self.inner),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.repeats, self.seed = state["repeats"], state["seed"]
        self.groups, self.trials = state["groups"], state["trials"]
        self.told = state.get("told", {})
        self.configurations = state.get("configurations", self.configurations)
        self.baseline = state.get("baseline", self.baseline)
        self.depth = state.get("depth", self.depth)
        if self.inner is not None and state["inner"] is not None:
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
