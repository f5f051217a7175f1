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
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import json
import math
import os
import pickletools
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from sd_tune import cluster, ray_train
from sd_tune import storage as store
from sd_tune.comparison import BASELINE_KEY
from sd_tune.config import (
    EPOCH_METRICS,
    FINAL_METRICS,
    ConfigError,
    SpaceFile,
    apply_overrides,
    excerpt,
    space_from_dict,
    trial_count,
)
from sd_tune.errors import SdTuneError
from sd_tune.repeats import CONFIG_KEY, REPEAT_KEY, RepeatSearcher
from sd_tune.tune_trial import RUNS_DIR, run_trial_in_tune

SPEC_FILE = "sd_tune_space.json"  # the resolved space file, saved at launch for resume/report
OWN_DIR = "sd_tune"  # sd-tune's own record in an experiment folder
RECORDS_DIR = f"{OWN_DIR}/trials"  # <trial id>.json: each finished trial, written at its end
SPEC_COPY = f"{OWN_DIR}/space.json"  # a second copy of SPEC_FILE
STATE_COPY = f"{OWN_DIR}/tune_state.json"  # Tune's last good state, for resume
# Tune's files that ``Tuner.restore`` needs, by kind (<session> is the run's start time).
TUNE_STATE = {
    "experiment_state": "experiment_state-*.json",
    "search_gen_state": "search_gen_state-*.json",
    "searcher_state": "searcher-state-*.pkl",
}
TUNER_PKL = "tuner.pkl"
# What reporting an experiment at a URI leaves out of its local copy: the Train runs and
# checkpoints (ImageNet ones are 100s of MB each), the TensorBoard files, and what reporting
# never reads (pickles, the state copy, the lock).
REPORT_SKIPS = (
    RUNS_DIR,
    "checkpoint_*",
    "tensorboard",
    "events.out.tfevents.*",
    "*.pkl",
    "search_gen_state-*",
    "tune_state.json",
    store.LOCK_FILE,
    "*.set-aside-*",
)
# Largest files that report and resume read: far above real ones, so a planted or damaged
# file cannot exhaust memory.
MAX_STATE_BYTES = 512 * 2**20  # Tune's state of ~50,000 trials
MAX_TRIAL_FILE_BYTES = 64 * 2**20  # a trial's result.json (~2 KB an epoch), error.txt, record
_TRIAL_ID = re.compile(r"[A-Za-z0-9_]{1,64}")


class StorageFailure:
    """Set in the driver when a write to the storage failed for lack of space (``full``) or
    because the storage could not be reached (``unreachable``): the search then stops."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.why = ""

    def set(self, kind: str = "full", why: str = "") -> None:
        if self.kind is None:  # the first failure is the one to report
            self.kind, self.why = kind, why

    def is_set(self) -> bool:
        return self.kind is not None

    def clear(self) -> None:
        self.kind, self.why = None, ""

    def note(self, text: str) -> bool:
        """Set from an error's text when it is a full or unreachable storage's; whether so."""
        if store.says_disk_full(text):
            self.set("full", _last_error_line(text))
        elif store.says_unreachable(text):
            self.set("unreachable", _last_error_line(text))
        return self.is_set()

    def note_error(self, err: BaseException) -> bool:
        """Set from an error (or one it was raised from) that is a full or unreachable
        storage's; whether so."""
        if store.is_disk_full(err):
            self.set("full", str(err))
        elif store.is_unreachable(err):
            self.set("unreachable", str(err))
        return self.is_set()


STORAGE_FAILED = StorageFailure()
# A trial record's statuses once the trial has ended (see ``_record``).
FINISHED_STATUSES = ("completed", "stopped_early", "failed")
# The experiment being restored, while ``resume_search`` unpickles its callbacks: a moved or
# copied experiment's callbacks write there, not where they were pickled.
_RESTORING_AT: list[str] = []
TRIAL_DRIVER_MEMORY = 64 * 1024**2  # bytes of Ray's logical memory resource per Tune trial


def optuna_distributions(space: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a ``space`` section into Optuna distributions and fixed values.

    >>> dists, fixed = optuna_distributions({"stochastic_depth.drop_rate": {"uniform": [0, 0.5]},
    ...                                      "model.depth": {"choice": [20, 56]}, "train.lr": 0.2})
    >>> sorted(dists), fixed
    (['model.depth', 'stochastic_depth.drop_rate'], {'train.lr': 0.2})
    """
    dists: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    for key, spec in space.items():
        if not isinstance(spec, dict):
            fixed[key] = spec
            continue
        kind, args = next(iter(spec.items()))
        if kind == "uniform":
            dists[key] = optuna.distributions.FloatDistribution(float(args[0]), float(args[1]))
        elif kind == "loguniform":
            dists[key] = optuna.distributions.FloatDistribution(
                float(args[0]), float(args[1]), log=True
            )
        elif kind == "int":
            dists[key] = optuna.distributions.IntDistribution(int(args[0]), int(args[1]))
        else:
            dists[key] = optuna.distributions.CategoricalDistribution(list(args))
    return dists, fixed


def make_sampler(spec: SpaceFile) -> optuna.samplers.BaseSampler:
    seed = spec.search.seed
    if spec.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if spec.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = min(10, max(2, spec.search.num_samples // 3))
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, n_startup_trials=startup, constant_liar=True
    )


def make_searcher(spec: SpaceFile) -> OptunaSearch | RepeatSearcher:
    """Optuna through Tune; with ``search.repeats`` > 1 each configuration it suggests runs
    once per seed and Optuna is told the means (``sd_tune.repeats``)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no INFO line per study and trial
    dists, _ = optuna_distributions(spec.space)
    metrics = [o.metric for o in spec.objectives]
    modes = [o.mode for o in spec.objectives]
    metric = metrics if len(metrics) > 1 else metrics[0]
    mode = modes if len(modes) > 1 else modes[0]
    # A space that searches nothing runs one fixed configuration against its baseline.
    searcher = (
        OptunaSearch(space=dists, metric=metric, mode=mode, sampler=make_sampler(spec))
        if dists
        else None
    )
    if spec.search.repeats == 1 and searcher is not None:
        return searcher
    return RepeatSearcher(
        searcher,
        spec.search.repeats,
        spec.trial.train.seed,
        configurations=spec.search.num_samples,
        baseline=bool(spec.search.baseline),
        depth=base_config(spec)["model"]["depth"],
        metric=metric,
        mode=mode,
    )


def make_scheduler(spec: SpaceFile) -> ASHAScheduler | None:
    s = spec.search.scheduler
    if s is None:
        return None
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=s.metric,
        mode=s.mode,
        max_t=max_epochs(spec),
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


def max_epochs(spec: SpaceFile) -> int:
    entry = spec.space.get("train.epochs")
    if isinstance(entry, dict):
        args = next(iter(entry.values()))
        return int(max(args))
    return int(entry) if entry is not None else spec.trial.train.epochs


def concurrency(spec: SpaceFile, nodes: Sequence[dict[str, float]]) -> int:
    """How many trials can run at once on these nodes (each node's total resources) without
    one waiting forever for its workers; a worker lives on one node.

    >>> from sd_tune.config import space_from_dict
    >>> spec = space_from_dict({"resources": {"num_workers": 2, "cpus_per_worker": 1}})
    >>> concurrency(spec, [{"CPU": 2.0}]), concurrency(spec, [{"CPU": 3.0}, {"CPU": 1.5}])
    (1, 2)
    """
    fits = cluster.worker_slots(spec.trial, nodes) // spec.trial.resources.num_workers
    if spec.search.max_concurrent_trials is not None:
        fits = min(fits, spec.search.max_concurrent_trials)
    return min(fits, spec.total_trials)


def base_config(spec: SpaceFile) -> dict[str, Any]:
    """The sections every trial starts from: the file's settings plus the fixed ``space``
    values; the searched values go on top."""
    return apply_overrides(spec.trial.to_dict(), optuna_distributions(spec.space)[1])


def experiment_dir(storage: str, name: str) -> str:
    """``<storage>/<name>``: where an experiment's files live (an absolute path or a URI).

    >>> experiment_dir("s3://bucket/results?region=eu-west-1", "smoke")
    's3://bucket/results/smoke?region=eu-west-1'
    """
    return store.join(store.root(storage), name)


def trainable(
    spec: SpaceFile,
    storage: str,
    max_failures: int = 1,
    placement_wait_s: float = ray_train.PLACEMENT_WAIT_S,
) -> Any:
    fn = tune.with_parameters(
        run_trial_in_tune,
        base=base_config(spec),
        storage=storage,
        experiment=spec.name,
        max_failures=max_failures,
        placement_wait_s=placement_wait_s,
    )
    # The Tune trial only waits on its TorchTrainer: it holds no CPU (a token of memory, since
    # Ray needs some resource), so a trial's CPUs all go to its Train workers.
    return tune.with_resources(fn, {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY})


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


def _error_text(trial: Any) -> str:
    """A Tune trial's whole error text (its ``error.txt``), or ''."""
    paths = []
    # The driver's staging copy, written first (Ray 2.60 asserts a running Ray for it).
    with contextlib.suppress(AssertionError, AttributeError):
        paths.append(trial.error_file)
    if getattr(trial, "path", None):  # the stored copy (a local experiment or a copy of one)
        paths.append(str(Path(trial.path) / "error.txt"))
    for p in paths:
        text = _read_error_file(Path(p)) if p else None
        if text is not None:
            return text
    return ""


def _read_error_file(path: Path) -> str | None:
    """The text of an ``error.txt``; None when it is not there, unreadable or too large."""
    try:
        return _read_local(path).decode(errors="replace")
    except (OSError, ValueError):  # ValueError: store.TooLarge
        return None


def _last_error_line(text: str) -> str:
    r"""The root cause in an error text: its last line that is not part of a stack (without
    the name of an sd-tune error class, whose message says it all).

    >>> _last_error_line("Traceback ...\n  File x\nsd_tune.ray_train.NoRoomForWorkers: no room")
    'no room'
    >>> _last_error_line("Traceback ...\nValueError: loss is nan")
    'ValueError: loss is nan'
    """
    lines = [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip() and not ln.startswith(("Traceback", "  ", "The above exception"))
    ]
    line = re.sub(r"^sd_tune(\.\w+)+: ", "", lines[-1]) if lines else ""
    return line if len(line) <= 500 else line[:497] + "..."


def _read_local(path: Path, limit: int = MAX_TRIAL_FILE_BYTES) -> bytes:
    return store.read_bytes(str(path), limit)


# --------------------------------------------------------------------------- the space file


class SpecError(SdTuneError, ValueError):
    """An experiment's saved space file cannot be read; the message says why and what to do."""


def save_spec(spec: SpaceFile, exp_dir: str, raw: dict[str, Any]) -> None:
    """Save the resolved space file (and a second copy under ``sd_tune/``) for resume and
    report. ``baseline`` is saved as decided: an experiment saved before baselines existed
    has none, and resumes and reports without one."""
    saved = {"raw": raw, "source": spec.source, "baseline": bool(spec.search.baseline)}
    text = json.dumps(saved, indent=2)
    store.write_text(store.join(exp_dir, SPEC_FILE), text)
    store.write_text(store.join(exp_dir, SPEC_COPY), text)


def load_spec(exp_dir: str, notes: list[str] | None = None) -> tuple[SpaceFile, dict[str, Any]]:
    """The experiment's space file as saved at launch; its copy under ``sd_tune/`` when the
    first cannot be read (then a line saying so goes to ``notes``). :class:`SpecError` when
    neither can."""
    problems = []
    for name in (SPEC_FILE, SPEC_COPY):
        try:
            saved = json.loads(store.read_bytes(store.join(exp_dir, name), limit=2**20))
            spec = space_from_dict(saved["raw"], str(saved["source"]))
        except FileNotFoundError:
            problems.append(f"{name}: not there")
            continue
        except ConfigError as err:
            problems.append(
                f"{name}: {len(err.problems)} invalid setting(s), the first: "
                f"{err.problems[0][0]}: {err.problems[0][1][:120]}"
            )
            continue
        except (OSError, ValueError, KeyError, TypeError) as err:
            why = "not valid JSON" if isinstance(err, ValueError) else excerpt(str(err))
            problems.append(f"{name}: {why if not isinstance(err, KeyError) else 'incomplete'}")
            continue
        spec.search.baseline = saved.get("baseline") is True
        if problems and notes is not None:
            notes.append(
                f"{SPEC_FILE} cannot be read ({problems[0].split(': ', 1)[1]}); used "
                f"its copy {SPEC_COPY}"
            )
        return spec, saved["raw"]
    raise SpecError(
        f"the experiment's saved space file cannot be read ({'; '.join(problems)}): "
        f"it holds the experiment's settings and objectives, written at launch. "
        f"Put back {SPEC_FILE} from a backup of {exp_dir}, or launch the search "
        f"again under a new --name"
    )


# --------------------------------------------------------------------------- own records


def _record(
    trial_id: str,
    trial_config: dict[str, Any],
    base: dict[str, Any],
    history: list[dict[str, Any]],
    tune_status: str,
    error: str | None,
) -> dict[str, Any]:
    """A plain trial record (see ``sd_tune.report``) from the trial's Tune config, its status
    from Tune's and the epochs reached; ``logdir`` is added by the reader. A seed of a
    configuration (``search.repeats`` > 1) also carries its ``config_id``, ``repeat`` and
    ``seed``."""
    params = {k: v for k, v in trial_config.items() if "." in k}
    config = apply_overrides(base, params)
    epochs = int(config.get("train", {}).get("epochs", 0) or 0)
    final = history[-1] if history else {}
    if tune_status == "ERROR":
        status = "failed"
    elif tune_status == "TERMINATED":
        status = "completed" if int(final.get("epoch", 0)) >= epochs else "stopped_early"
    else:
        status = "running" if tune_status == "RUNNING" else "pending"
    flat = {
        f"{s}.{k}": v for s, sec in config.items() if isinstance(sec, dict) for k, v in sec.items()
    }
    group = {}
    if CONFIG_KEY in trial_config:
        group = {
            "config_id": trial_config[CONFIG_KEY],
            "repeat": trial_config.get(REPEAT_KEY),
            "seed": flat.get("train.seed"),
        }
        if isinstance(trial_config.get(BASELINE_KEY), str):
            group[BASELINE_KEY] = trial_config[BASELINE_KEY]
    return {
        "trial_id": trial_id,
        **group,
        "status": status,
        "params": params,
        "config": flat,
        "final": {
            k: v
            for k, v in final.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        },
        "history": history,
        "error": error or None,
        "worker_node_ids": _node_ids(final.get("worker_node_ids")),
    }


class TrialRecords(tune.Callback):
    """Writes each trial's record to ``sd_tune/trials/<trial id>.json`` when it ends
    (completed, stopped early or failed), in one step; and a copy of Tune's state each time
    Tune saves it in the driver (``sd_tune/tune_state.json``), so that a truncated state file
    loses nothing. A write that fails for lack of space, or because the storage cannot be
    reached, sets :data:`STORAGE_FAILED` (the search then stops)."""

    def __init__(self, spec: SpaceFile, exp_dir: str, say: Callable[[str], None] = print) -> None:
        self.exp_dir = exp_dir
        self.base = base_config(spec)
        self.say = say
        self.history: dict[str, dict[int, dict[str, Any]]] = {}
        self.warned = False
        self.copied: tuple[str, int] | None = None  # the state file copied last, its mtime
        self.tuner: bytes | None = None  # tuner.pkl, written once when the run starts

    def __getstate__(self) -> dict[str, Any]:
        # a restored run copies its own state anew
        return {**self.__dict__, "copied": None, "tuner": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restored by ``resume_search``: write into the experiment being resumed, which is
        not where this was pickled when the experiment was moved or copied since."""
        self.__dict__.update(state)
        if _RESTORING_AT:
            self.exp_dir = _RESTORING_AT[-1]

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if trials:
            self._copy_state(trials[0])

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        rows = self.history.setdefault(trial.trial_id, {})
        row = {k: result[k] for k in _KEEP if k in result}
        rows[int(row.get("epoch", len(rows) + 1))] = row  # a replayed epoch replaces itself

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._write(trial, "TERMINATED", None)
        self._copy_state(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        text = _error_text(trial)
        STORAGE_FAILED.note(text)
        self._write(trial, "ERROR", _last_error_line(text))
        self._copy_state(trial)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if trials:
            self._copy_state(trials[0])

    def _write(self, trial: Any, status: str, error: str | None) -> None:
        history = [row for _, row in sorted(self.history.get(trial.trial_id, {}).items())]
        record = _record(trial.trial_id, trial.config or {}, self.base, history, status, error)
        self._put(
            store.join(self.exp_dir, RECORDS_DIR, f"{trial.trial_id}.json"),
            json.dumps(record, default=str).encode(),
        )

    def _copy_state(self, trial: Any) -> None:
        """Copy Tune's state from the driver's staging folder (Tune writes it there whole,
        in this thread) when it changed since the last copy and every file of it reads back
        whole."""
        try:
            staging = trial.storage.experiment_driver_staging_path
            files = _newest_state(sorted(os.listdir(staging)))
            if files is None:
                return
            stamp = (
                files["experiment_state"],
                os.stat(Path(staging, files["experiment_state"])).st_mtime_ns,
            )
        except (AttributeError, RuntimeError, OSError):
            return
        if stamp == self.copied:
            return
        data = {}
        for kind, name in files.items():
            try:
                content = _read_local(Path(staging, name), MAX_STATE_BYTES)
            except (OSError, ValueError):  # ValueError: store.TooLarge
                return
            if _state_problem(kind, content) is not None:
                return
            data[name] = content
        if self.tuner is None:
            with contextlib.suppress(OSError, ValueError):
                tuner = store.read_bytes(store.join(self.exp_dir, TUNER_PKL), MAX_STATE_BYTES)
                if _state_problem("tuner", tuner) is None:
                    self.tuner = tuner
        if self.tuner is not None:
            data[TUNER_PKL] = self.tuner
        payload = {
            "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
            "files": {n: base64.b64encode(c).decode() for n, c in data.items()},
        }
        if self._put(store.join(self.exp_dir, STATE_COPY), json.dumps(payload).encode()):
            self.copied = stamp

    def _put(self, location: str, data: bytes) -> bool:
        try:
            store.write_bytes(location, data)
        except (OSError, ValueError) as err:
            STORAGE_FAILED.note_error(err)
            if not self.warned:
                self.warned = True
                self.say(f"sd-tune could not write {location}: {excerpt(str(err))[1:-1]}")
            return False
        return True


class StopWhenStorageFails(tune.Stopper):
    """Ends the whole search once a write to the storage failed for lack of space or because
    the storage could not be reached: every further trial would fail the same way.

    It aborts the search like a killed driver instead of stopping it: Tune's own stop
    (``stop_all`` returning True) marks every running and pending trial finished and the
    searcher done, so ``resume`` would never continue them. Raised from here, the error ends
    ``tuner.fit()`` with Tune's state as last saved, which lists them unfinished."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        if STORAGE_FAILED.is_set():  # _fit gives the whole message
            raise store.StorageFailed(f"the storage failed: {STORAGE_FAILED.kind}")
        return False


# --------------------------------------------------------------------------- Tune's state


def _newest_state(names: list[str]) -> dict[str, str] | None:
    """``{kind: file name}`` of the newest session's state files among ``names`` (Tune
    restores the newest ``experiment_state-*.json``), or None when there is none."""
    states = sorted(fnmatch.filter(names, TUNE_STATE["experiment_state"]))
    if not states:
        return None
    session = states[-1][len("experiment_state-") : -len(".json")]
    return {kind: pattern.replace("*", session) for kind, pattern in TUNE_STATE.items()}


def _state_problem(kind: str, data: bytes) -> str | None:
    """Why a state file cannot be what Tune restores from (truncated, empty), or None.
    Checked without running anything: JSON is parsed, a pickle's opcodes only walked."""
    if not data:
        return "empty"
    if kind == "experiment_state":
        try:
            state = json.loads(data)
        except ValueError:
            return f"not valid JSON ({len(data):,} bytes: cut short?)"
        ok = isinstance(state, dict) and isinstance(state.get("trial_data"), list)
        return None if ok and "runner_data" in state else "not a Tune experiment state"
    last = None
    try:
        for opcode, _, pos in pickletools.genops(data):
            last = (opcode.name, pos)
    except Exception:  # genops raises ValueError and others on cut-off data
        return f"not a whole pickle ({len(data):,} bytes: cut short?)"
    if last is None or last[0] != "STOP" or last[1] != len(data) - 1:
        return f"not a whole pickle ({len(data):,} bytes)"
    return None


class StateError(SdTuneError):
    """Tune's state cannot be restored; the message says what is kept and what to do."""


def _root_state_problem(exp_dir: str, files: dict[str, str]) -> str | None:
    for kind, name in [*files.items(), ("tuner", TUNER_PKL)]:
        try:
            data = store.read_bytes(store.join(exp_dir, name), MAX_STATE_BYTES)
        except FileNotFoundError:
            return f"{name} is missing"
        except (OSError, ValueError) as err:
            return f"{name} cannot be read ({excerpt(str(err))[1:-1]})"
        if (problem := _state_problem(kind, data)) is not None:
            return f"{name} is {problem}"
    return None


def _state_copy(exp_dir: str) -> tuple[str, dict[str, bytes]] | None:
    """sd-tune's copy of Tune's last good state: (when it was saved, {name: bytes}), or None
    when there is none whole."""
    try:
        payload = json.loads(store.read_bytes(store.join(exp_dir, STATE_COPY), MAX_STATE_BYTES))
        files = {str(n): base64.b64decode(c) for n, c in payload["files"].items()}
        saved = str(payload["saved"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    kinds = {
        n: k
        for n in files
        for k, pat in [*TUNE_STATE.items(), ("tuner", TUNER_PKL)]
        if fnmatch.fnmatch(n, pat)
    }
    if sorted(kinds.values()) not in (sorted(TUNE_STATE), sorted([*TUNE_STATE, "tuner"])):
        return None
    if any(_state_problem(kinds[n], c) is not None for n, c in files.items()):
        return None
    return saved, files


def check_state(exp_dir: str) -> str | None:
    """Make sure ``Tuner.restore`` finds a whole state in ``exp_dir`` before it is called.

    Returns None when Tune's newest state reads back whole; a note when it did not and
    sd-tune's copy of the last good state (or an older whole session of Tune's) was put in
    its place (the files it replaces are kept, renamed ``<name>.set-aside-<time>``). Raises
    :class:`StateError` when there is nothing whole to restore from; then nothing is changed.
    """
    names = store.list_files(exp_dir)
    newest = _newest_state(names)
    problem = (
        "no experiment_state-*.json" if newest is None else _root_state_problem(exp_dir, newest)
    )
    if problem is None:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def set_aside(files: list[str]) -> list[str]:
        moved = []
        for name in files:
            if name in names:
                store.move(
                    store.join(exp_dir, name), store.join(exp_dir, f"{name}.set-aside-{stamp}")
                )
                moved.append(name)
        return moved

    copy = _state_copy(exp_dir)
    if copy is not None:
        saved, files = copy
        copied = _newest_state(list(files))
        assert copied is not None
        newer = [
            n
            for n in fnmatch.filter(names, TUNE_STATE["experiment_state"])
            if n >= copied["experiment_state"]
        ]
        stale = [f for n in newer for f in (_newest_state([n]) or {}).values()]
        if TUNER_PKL in files:
            stale.append(TUNER_PKL)
        moved = set_aside(sorted(set(stale)))
        for name, content in files.items():
            store.write_bytes(store.join(exp_dir, name), content)
        return (
            f"Tune's state could not be restored ({problem}); restored the copy sd-tune "
            f"kept at {saved}"
            + (f" (the files it replaces are kept as <name>.set-aside-{stamp})" if moved else "")
        )
    sessions = sorted(fnmatch.filter(names, TUNE_STATE["experiment_state"]), reverse=True)
    for name in sessions[1:]:
        files = _newest_state([name])
        assert files is not None
        if _root_state_problem(exp_dir, files) is None:
            stale = [f for n in sessions if n > name for f in (_newest_state([n]) or {}).values()]
            set_aside(sorted(set(stale)))
            return (
                f"Tune's newest state could not be restored ({problem}); restored the "
                f"older {name} (the newer files are kept as <name>.set-aside-{stamp})"
            )
    finished = len(finished_records(exp_dir)[0])  # read only for this message
    raise StateError(
        f"cannot resume {exp_dir}: Tune's state could not be restored ({problem}), and no "
        f"whole copy of it is there; nothing was changed. The {finished} finished trial(s) "
        f"that sd-tune recorded are kept: `sd-tune report {exp_dir}` lists them. To run the "
        f"rest, start a new experiment (sd-tune launch --name NEW)"
    )


def storage_failures(exp_dir: str) -> list[str]:
    """Trials that Tune's state lists as failed because the storage was full or could not be
    reached (their ``error.txt`` says so): ``resume`` runs them again."""
    out = []
    for trial in _state_trials(exp_dir)[0]:
        if trial["status"] != "ERROR":
            continue
        try:
            text = store.read_bytes(
                store.join(exp_dir, f"trial_{trial['trial_id']}", "error.txt"), MAX_TRIAL_FILE_BYTES
            )
        except (OSError, ValueError):
            continue
        said = text.decode(errors="replace")
        if store.says_disk_full(said) or store.says_unreachable(said):
            out.append(trial["trial_id"])
    return out


def _state_trials(folder: str) -> tuple[list[dict[str, Any]], str | None]:
    """The trials Tune's newest readable state file lists, as ``{"trial_id", "status",
    "config"}``, read as plain JSON (the pickles in it are never decoded), and a note when
    the newest one cannot be read."""
    names = sorted(
        fnmatch.filter(store.list_files(folder), TUNE_STATE["experiment_state"]), reverse=True
    )
    note = None
    for name in names:
        try:
            state = json.loads(store.read_bytes(store.join(folder, name), MAX_STATE_BYTES))
            entries = state["trial_data"]
            trials = []
            for entry in entries:
                data = json.loads(entry[0])
                trial_id = data.get("trial_id")
                if not isinstance(trial_id, str) or not _TRIAL_ID.fullmatch(trial_id):
                    continue
                trials.append(
                    {
                        "trial_id": trial_id,
                        "status": str(data.get("status")),
                        "config": _searched_params(data.get("config")),
                    }
                )
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            why = (
                "not valid JSON: cut short?"
                if isinstance(err, ValueError)
                else "not a Tune experiment state"
            )
            note = note or f"Tune's state {name} cannot be read ({why})"
            continue
        return trials, note
    return [], note


def _plain(value: Any) -> bool:
    """Whether ``value`` is a plain JSON scalar or list of them (not an encoded object)."""
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


# --------------------------------------------------------------------------- running


class ScalarsOnlyTBX(TBXLoggerCallback):
    """Tune's TensorBoard logger without its HParams entries: TensorBoard shows one HParams
    experiment per logdir, and sd-tune's report writes the one with every trial's results."""

    def _try_log_hparams(self, trial: Any, result: dict) -> None:
        return None


def _tune_settings() -> None:
    """Environment Tune reads when a run starts or is restored."""
    # Tune's own tables and banners would bury the progress lines: the legacy reporter at
    # verbosity 0 prints nothing.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # Tune's default loggers, listed in tune_run_config so that its TensorBoard one can leave
    # HParams out.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    cluster.driver_log()


def tune_run_config(spec: SpaceFile, storage: str, callbacks: list[Any]) -> tune.RunConfig:
    _tune_settings()
    loggers = [JsonLoggerCallback(), CSVLoggerCallback(), ScalarsOnlyTBX()]
    return tune.RunConfig(
        name=spec.name,
        storage_path=storage,
        verbose=0,
        callbacks=[*loggers, *callbacks],
        stop=StopWhenStorageFails(),
        failure_config=tune.FailureConfig(max_failures=0),
    )


class SearchFailed(SdTuneError):
    """Tune stopped with an error that is not a full disk; the message is its root cause."""

    exit_code = 1


def _fit(tuner: tune.Tuner, exp_dir: str) -> None:
    """``tuner.fit()``; a full storage ends in :class:`store.StorageFull`, one that cannot be
    reached in :class:`store.StorageFailed`, any other error in :class:`SearchFailed`, each
    with one line."""
    STORAGE_FAILED.clear()
    try:
        tuner.fit()
    except Exception as err:
        if STORAGE_FAILED.note_error(err):  # the first failure noted stays the one named
            raise _storage_failed(exp_dir) from err
        raise SearchFailed(ray_train.root_cause(err)) from err
    if STORAGE_FAILED.is_set():
        raise _storage_failed(exp_dir)


def _storage_failed(exp_dir: str) -> store.StorageFailed:
    root = store.parent(exp_dir)
    kept = (
        f"Everything written before is kept (each finished trial's record is in "
        f"{store.join(exp_dir, RECORDS_DIR)})"
    )
    resume = f"`sd-tune resume {exp_dir}`"
    if STORAGE_FAILED.kind == "full":
        return store.StorageFull(
            f"the storage {root} is full ({store.free_space(root)}): the search stopped. "
            f"{kept}; free some space, then continue with {resume}"
        )
    why = store.unreachable_reason(_last_error_line(STORAGE_FAILED.why))
    return store.StorageFailed(
        f"the storage {root} cannot be reached ({why}): the search stopped, and the trials "
        f"that were running stay unfinished. {kept}; once the storage is back, continue "
        f"with {resume}"
    )


def run_search(
    spec: SpaceFile,
    raw: dict[str, Any],
    storage: str,
    *,
    say: Callable[[str], None] = print,
    max_failures: int = 1,
    slots: int | None = None,
    placement_wait_s: float = ray_train.PLACEMENT_WAIT_S,
) -> str:
    """Run the whole experiment (Ray must be initialised); return its location. ``slots``:
    the trials at once when the autoscaler is to add nodes (``sd_tune.autoscale.scale_plan``);
    by default they are counted on the nodes up now. ``placement_wait_s``: how long a trial
    waits for room for its workers (after a node was lost) before it fails."""
    root = store.root(storage)
    exp_dir = experiment_dir(storage, spec.name)
    save_spec(spec, exp_dir, raw)
    if slots is None:
        slots = concurrency(spec, cluster.node_resources())
    else:
        slots = min(slots, spec.total_trials)
    say(f"experiment {spec.name}: {trial_count(spec)}, {slots} at a time, results in {exp_dir}")
    tuner = tune.Tuner(
        trainable(spec, root, max_failures, placement_wait_s),
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(spec),
            scheduler=make_scheduler(spec),
            reuse_actors=spec.search.scheduler is None,
            num_samples=spec.total_trials,
            max_concurrent_trials=max(slots, 1),
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        ),
        run_config=tune_run_config(
            spec, root, [Progress(spec, say), TrialRecords(spec, exp_dir, say)]
        ),
    )
    _fit(tuner, exp_dir)
    return exp_dir


def resume_search(
    exp_dir: str,
    spec: SpaceFile,
    *,
    say: Callable[[str], None] = print,
    max_failures: int = 1,
    placement_wait_s: float = ray_train.PLACEMENT_WAIT_S,
) -> str:
    """Continue the interrupted experiment at ``exp_dir`` (an absolute path or a URI), whose
    saved space is ``spec`` (``load_spec``) and whose state ``check_state`` has checked:
    finished trials stay, unfinished ones continue from their checkpoints, the searcher keeps
    its state (so the total stays ``num_samples``). Trials that failed because the storage
    was full run again from their last checkpoint (and with them any other failed trial:
    Tune resumes failed trials all or none)."""
    root = store.parent(exp_dir)
    say(f"resuming experiment {spec.name} in {exp_dir}")
    full = storage_failures(exp_dir)
    if full:
        say(f"{len(full)} trial(s) failed on a full or unreachable storage; they run again")
    _tune_settings()  # the restored run config brings the loggers and callbacks, not these
    _RESTORING_AT.append(exp_dir)
    try:
        tuner = tune.Tuner.restore(
            exp_dir,
            trainable=trainable(spec, root, max_failures, placement_wait_s),
            resume_unfinished=True,
            resume_errored=bool(full),
            restart_errored=False,
        )
    finally:
        _RESTORING_AT.pop()
    _fit(tuner, exp_dir)  # Tune restores the run config, callbacks (Progress) included
    return exp_dir


# --------------------------------------------------------------------------- reading


def collect_records(
    exp_dir: str, spec: SpaceFile, notes: list[str] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every trial of a stored experiment (a folder or a URI) whose space is ``spec`` (see
    :func:`load_spec`) as a plain record (see ``sd_tune.report``), and a line for each thing
    that could not be read (the records leave out what it held). Only plain data is read:
    sd-tune's records, Tune's trial folders (``result.json``, ``params.json``, ``error.txt``)
    and the trial list of Tune's state, never a pickle. An experiment at a URI is read from a
    temporary local copy of its small files (``REPORT_SKIPS`` left out); the records' ``logdir``
    name the URI's folders. A record of a trial that Tune's state does not list and that has
    no folder is left out, with a line in ``notes``."""
    if not store.is_uri(exp_dir):
        return _records(exp_dir, exp_dir, spec, notes)
    with tempfile.TemporaryDirectory(prefix="sd-tune-report-") as tmp:
        copy = Path(tmp, "experiment")
        store.download(exp_dir, copy, skip=REPORT_SKIPS)
        return _records(str(copy), exp_dir, spec, notes)


def finished_records(folder: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """sd-tune's records of finished trials in an experiment folder, and the unreadable ones."""
    out, bad = _read_records(folder)
    return out, [f"{RECORDS_DIR}/{t}.json: {excerpt(str(e))[1:-1]}" for t, e in bad.items()]


def _read_records(folder: str) -> tuple[dict[str, dict[str, Any]], dict[str, Exception]]:
    """sd-tune's records in an experiment folder by trial id, and the error that each
    unreadable one raised."""
    out, bad = {}, {}
    for name in store.list_files(store.join(folder, RECORDS_DIR)):
        trial_id = name[: -len(".json")] if name.endswith(".json") else ""
        if not _TRIAL_ID.fullmatch(trial_id):
            continue
        try:
            record = json.loads(
                store.read_bytes(store.join(folder, RECORDS_DIR, name), MAX_TRIAL_FILE_BYTES)
            )
            if not isinstance(record, dict) or record.get("trial_id") != trial_id:
                raise ValueError("not a trial record")
        except (OSError, ValueError) as err:
            bad[trial_id] = err
            continue
        out[trial_id] = record
    return out, bad


def repair_records(exp_dir: str, spec: SpaceFile) -> list[str]:
    """Set aside each of sd-tune's trial records that cannot be read (renamed
    ``<id>.json.set-aside-<time>``) and write it anew from what the trial's folder and Tune's
    state hold, where the trial has finished and reported epochs; a line for each. Run by
    ``resume`` before Tune starts, so that a damaged record does not fail the report after
    the whole search."""
    bad = {  # a storage that failed to answer (an OSError) is not a damaged record
        t: excerpt(str(err))[1:-1]
        for t, err in _read_records(exp_dir)[1].items()
        if not isinstance(err, OSError)
    }
    if not bad:
        return []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for trial_id in bad:
        name = store.join(exp_dir, RECORDS_DIR, f"{trial_id}.json")
        store.move(name, f"{name}.set-aside-{stamp}")
    rebuilt = {r["trial_id"]: r for r in collect_records(exp_dir, spec)[0]}
    lines = []
    for trial_id, why in bad.items():
        record = dict(rebuilt.get(trial_id, {}))
        record.pop("logdir", None)
        what = f"{RECORDS_DIR}/{trial_id}.json cannot be read ({why}): set aside as "
        what += f"{trial_id}.json.set-aside-{stamp}"
        if record.get("history") and record["status"] in FINISHED_STATUSES:
            store.write_bytes(
                store.join(exp_dir, RECORDS_DIR, f"{trial_id}.json"),
                json.dumps(record, default=str).encode(),
            )
            lines.append(f"{what}, and written anew from trial_{trial_id}")
        else:
            lines.append(f"{what}; the trial's folder and Tune's state stand for it")
    return lines


def _records(
    folder: str, location: str, spec: SpaceFile, notes: list[str] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of the experiment in the local ``folder``, stored at ``location``."""
    base = base_config(spec)
    finished, unreadable = finished_records(folder)
    tune_trials, note = _state_trials(folder)
    listed = {t["trial_id"]: t for t in tune_trials}
    on_disk = sorted(
        p.name[len("trial_") :]
        for p in Path(folder).glob("trial_*")
        if p.is_dir() and _TRIAL_ID.fullmatch(p.name[len("trial_") :])
    )
    ids = list(dict.fromkeys([*listed, *sorted(finished), *on_disk]))
    if listed:  # a record the state does not know and with no folder here is another's
        foreign = [t for t in finished if t not in listed and t not in on_disk]
        if notes is not None:
            notes += [
                f"{RECORDS_DIR}/{t}.json left out: this experiment's state does not list "
                f"trial {t} and it has no folder here (a record from another copy of it?)"
                for t in foreign
            ]
        ids = [t for t in ids if t not in foreign]
    if note and (not finished or set(on_disk) - set(finished)):
        unreadable.append(note)  # the status of trials without a record is a guess
    state_mtime = _state_mtime(folder)
    records = []
    for trial_id in ids:
        trial_dir = Path(folder, f"trial_{trial_id}")
        if trial_id in finished:
            record = dict(finished[trial_id])
        else:
            history, problem = _history(trial_dir)
            if problem:
                unreadable.append(problem)
            tune = listed.get(trial_id)
            params = tune["config"] if tune else _params_json(trial_dir)
            if tune is None:  # not in a readable state: judge by the epochs it reported
                status = "TERMINATED" if history and "test_acc" in history[-1] else "RUNNING"
            else:
                status = tune["status"]
            error = _error_txt(trial_dir) if status == "ERROR" else None
            record = _record(trial_id, params, base, history, status, error)
            if not trial_dir.is_dir() and status in ("TERMINATED", "ERROR"):
                record["status"] = "missing"
                record["error"] = (
                    f"its folder trial_{trial_id} is gone (deleted?) and sd-tune "
                    "has no record of it: its results are lost"
                )
            elif (
                tune is None
                and listed
                and record["status"] == "running"
                and _older_than(trial_dir, state_mtime)
            ):
                record["status"] = "abandoned"
                record["error"] = (
                    "Tune's state does not list it (the state was restored from "
                    "an earlier copy), so the search will not continue it; the "
                    "epochs it reported are kept here"
                )
        record["logdir"] = (
            store.join(location, trial_dir.name) if location != folder else str(trial_dir)
        )
        records.append(record)
    return records, unreadable


def _state_mtime(folder: str) -> float | None:
    """When Tune saved its newest state in ``folder`` (None: no state, or unreadable)."""
    states = sorted(Path(folder).glob(TUNE_STATE["experiment_state"]))
    try:
        return states[-1].stat().st_mtime if states else None
    except OSError:
        return None


def _older_than(trial_dir: Path, state_mtime: float | None) -> bool:
    """Whether Tune saved its newest state after ``trial_dir`` was last changed (so a trial
    that the state does not list is not merely newer than the state)."""
    try:
        return state_mtime is not None and state_mtime > trial_dir.stat().st_mtime
    except OSError:
        return False


def _params_json(trial_dir: Path) -> dict[str, Any]:
    try:
        params = json.loads(_read_local(trial_dir / "params.json"))
    except (OSError, ValueError):
        return {}
    return _searched_params(params)


def _searched_params(config: Any) -> dict[str, Any]:
    """The plain ``section.key`` values of a trial's config as Tune stored it, and a seed's
    configuration id and repeat (``search.repeats``)."""
    if not isinstance(config, dict):
        return {}
    return {
        k: v
        for k, v in config.items()
        if ("." in k or k in (CONFIG_KEY, REPEAT_KEY, BASELINE_KEY)) and _plain(v)
    }


def _error_txt(trial_dir: Path) -> str | None:
    text = _read_error_file(trial_dir / "error.txt")
    return None if text is None else _last_error_line(text)


def _node_ids(value: Any) -> list[str]:
    """``worker_node_ids`` as reported (one comma-separated string, rank order) -> a list."""
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return [str(v) for v in value or []]


_KEEP = (*EPOCH_METRICS, *FINAL_METRICS, "worker_node_ids")


def _history(trial_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The epoch reports in a trial folder's ``result.json``, and why some could not be read
    (a line cut short, a file too large), or None."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return [], None
    try:
        text = _read_local(path).decode(errors="replace")
    except (OSError, ValueError) as err:
        return [], f"{trial_dir.name}/result.json: {excerpt(str(err))[1:-1]}"
    out, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError
        except ValueError:
            bad.append(number)
            continue
        out.append({k: row[k] for k in _KEEP if k in row})
    problem = (
        f"{trial_dir.name}/result.json: line {bad[0]} is not valid JSON (cut short?); "
        f"{len(out)} epoch report(s) read"
        if bad
        else None
    )
    return out, problem
