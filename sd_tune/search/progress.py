"""The terminal's progress lines: the ``Progress`` callback, and a failed trial's error line."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from ray import tune

from sd_tune.comparison import BASELINE_KEY
from sd_tune.config import (
    SpaceFile,
)
from sd_tune.repeats import CONFIG_KEY, REPEAT_KEY
from sd_tune.search.spec import base_config
from sd_tune.search.trial_errors import _error_text, _last_error_line


def _fmt_duration(seconds: float) -> str:
    """``h:mm:ss``.

    >>> _fmt_duration(3725.2)
    '1:02:05'
    """
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress(tune.Callback):
    """The terminal's view of a search. While trials run: one line per epoch report (trial,
    epoch/epochs, val_acc, images/s, time left for the trial and for the search), at most one
    every ``interval_s`` seconds so that a fast search does not flood the terminal (a trial's
    first report always shows). When a trial ends: one status line, done/running/failed of the
    total, each objective's best final value (possibly from different trials), elapsed time
    and time left; failed trials with their reason.
    Counts come from Tune's trial list, so they hold after a resume too."""

    def __init__(
        self, spec: SpaceFile, say: Callable[[str], None] = print, interval_s: float = 10.0
    ) -> None:
        self.spec = spec
        self.say = say
        self.interval_s = interval_s
        self.start = time.monotonic()
        self.best: dict[str, float] = {}
        self.seeds: dict[str, list[dict[str, float]]] = {}  # config id -> its seeds' finals
        self.durations: list[float] = []
        self.started: dict[str, float] = {}
        self.last_line = -math.inf
        self.shown: set[str] = set()  # trials with a progress line already
        self.epochs = int(base_config(spec)["train"]["epochs"])
        self.latest: dict[str, dict[str, float]] = {}  # trial id -> its last epoch report

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A callback pickled by an older sd-tune (a resumed experiment) lacks newer fields."""
        if "emit" in state:  # its old name
            state["say"] = state.pop("emit")
        state.setdefault("seeds", {})
        self.__dict__.update(state)
        for name, value in (
            ("interval_s", 10.0),
            ("last_line", -math.inf),
            ("shown", set()),
            ("latest", {}),
            ("epochs", 0),
        ):
            self.__dict__.setdefault(name, value)
        if not self.epochs:
            self.epochs = int(base_config(self.spec)["train"]["epochs"])

    def setup(self, **info: Any) -> None:
        self.start = time.monotonic()

    def _trial_epochs(self, result: dict[str, Any]) -> int:
        searched = (result.get("config") or {}).get("train.epochs")
        return int(searched) if isinstance(searched, (int, float)) else self.epochs

    def _left(self, report: dict[str, float]) -> float:
        """Seconds a trial still needs at its pace so far (ASHA may stop it sooner)."""
        per_epoch = report["wall_time_s"] / max(report["epoch"], 1.0)
        return per_epoch * max(report["epochs"] - report["epoch"], 0.0)

    def _search_left(self, trials: list[Any]) -> float:
        """Seconds the search still needs: what running trials have left, plus the trials not
        started yet at the mean length of a trial so far (start-up included), spread over the
        trials running at once."""
        reports = list(self.latest.values())
        if not reports:
            return math.nan
        full = [r["full_s"] for r in reports] + self.durations
        mean_full = sum(full) / len(full)
        running = [t for t in trials if t.status == "RUNNING"]
        left = sum(
            self._left(self.latest[t.trial_id]) for t in running if t.trial_id in self.latest
        )
        ended = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))
        waiting = max(self.spec.total_trials - ended - len(running), 0)
        return (left + waiting * mean_full) / max(1, len(running))

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if not all(
            isinstance(result.get(k), (int, float))
            for k in ("epoch", "wall_time_s", "val_acc", "images_per_s")
        ):
            return
        now = time.monotonic()
        report = {
            "epoch": float(result["epoch"]),
            "epochs": float(self._trial_epochs(result)),
            "wall_time_s": float(result["wall_time_s"]),
        }
        since = now - self.started.get(trial.trial_id, now)  # start-up included
        report["full_s"] = max(since, report["wall_time_s"]) + self._left(report)
        self.latest[trial.trial_id] = report
        if now - self.last_line < self.interval_s and trial.trial_id in self.shown:
            return
        self.last_line = now
        self.shown.add(trial.trial_id)
        search = self._search_left(trials)
        search_text = f", search ~{_fmt_duration(search)} left" if math.isfinite(search) else ""
        self.say(
            f"{_fmt_duration(now - self.start)} trial {trial.trial_id} epoch "
            f"{int(report['epoch'])}/{int(report['epochs'])} val_acc "
            f"{result['val_acc']:.4f} | {result['images_per_s']:.0f} img/s | trial "
            f"~{_fmt_duration(self._left(report))} left{search_text}"
        )

    def _status(self, trials: list[Any], ending: Any = None, failed_now: bool = False) -> None:
        # Tune calls on_trial_complete/on_trial_error before it updates the trial's status.
        others = [t for t in trials if t is not ending]
        running = sum(1 for t in others if t.status == "RUNNING")
        done = sum(1 for t in others if t.status == "TERMINATED")
        failed = sum(1 for t in others if t.status == "ERROR")
        if ending is not None:
            failed += failed_now
            done += not failed_now
        total = self.spec.total_trials
        elapsed = time.monotonic() - self.start
        eta = ""
        if self.durations and done + failed < total:
            per = sum(self.durations) / len(self.durations)
            slots = max(1, running)
            eta = f", ~{_fmt_duration(per * (total - done - failed) / slots)} left"
        modes = {o.metric: o.mode for o in self.spec.objectives}
        best = ", ".join(f"{k} {v:.4g} ({modes[k]})" for k, v in self.best.items()) or "-"
        self.say(
            f"{_fmt_duration(elapsed)} trials: {done} done, {running} running, "
            f"{failed} failed of {total} | best of each objective so far: {best}{eta}"
        )

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.monotonic()
        config = trial.config or {}
        if isinstance(config.get(BASELINE_KEY), str) and config.get(REPEAT_KEY) == 0:
            self.say(
                f"baseline: configuration {config[BASELINE_KEY]} again without stochastic "
                f"depth (drop rate 0), with its {self.spec.search.repeats} seeds"
            )

    def _update_best(self, result: dict, config_id: str | None = None) -> None:
        """Best final values so far (per objective; an epoch report is not a final value). A
        seed of a configuration (``search.repeats``) counts through its configuration's mean
        over the seeds finished so far."""
        finals = {
            o.metric: float(v)
            for o in self.spec.objectives
            if isinstance(v := result.get(o.metric), (int, float)) and math.isfinite(v)
        }
        if config_id is not None:
            self.seeds.setdefault(config_id, []).append(finals)
            for o in self.spec.objectives:
                means = [
                    math.fsum(vs) / len(vs)
                    for seeds in self.seeds.values()
                    if (vs := [f[o.metric] for f in seeds if o.metric in f])
                ]
                if means:
                    self.best[o.metric] = max(means) if o.mode == "max" else min(means)
            return
        for o in self.spec.objectives:
            value = finals.get(o.metric)
            if value is None:
                continue
            old = self.best.get(o.metric)
            if old is None or (value > old if o.mode == "max" else value < old):
                self.best[o.metric] = value

    def _finish(self, trial: Any) -> None:
        self.latest.pop(trial.trial_id, None)
        begun = self.started.pop(trial.trial_id, None)
        if begun is not None:
            self.durations.append(time.monotonic() - begun)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        config = trial.config or {}
        if not isinstance(config.get(BASELINE_KEY), str):  # a baseline seed is no candidate
            self._update_best(trial.last_result or {}, config.get(CONFIG_KEY))
        self._finish(trial)
        self._status(trials, trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._finish(trial)
        self.say(f"trial {trial.trial_id} failed: {trial_error(trial)}")
        self._status(trials, trial, failed_now=True)


def trial_error(trial: Any) -> str:
    """The last line of a Tune trial's error (its root cause), or ''."""
    return _last_error_line(_error_text(trial))
