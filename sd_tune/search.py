"""The search: a Ray Tune experiment whose trials are Ray Train trials, searched by Optuna.

Each Tune trial is a function that builds a ``TorchTrainer`` (Train V2) named after the Tune
trial id, with ``TuneReportCallback``; a restored experiment therefore finds each unfinished
trial's Train checkpoints. Tune does not see the workers' resources, so concurrency is set
from them here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from sd_tune import ray_train
from sd_tune import storage as store
from sd_tune.config import (
    EPOCH_METRICS,
    FINAL_METRICS,
    SpaceFile,
    TrialConfig,
    apply_overrides,
    make_trial,
    space_from_dict,
)

SPEC_FILE = "sd_tune_space.json"  # the resolved space file, saved at launch for resume/report
# What reporting an experiment at a URI leaves out of its local copy: the Train runs and
# checkpoints (ImageNet ones are 100s of MB each) and the TensorBoard files.
REPORT_SKIPS = ("train_runs", "checkpoint_*", "tensorboard", "events.out.tfevents.*")
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
            dists[key] = optuna.distributions.FloatDistribution(float(args[0]), float(args[1]),
                                                                log=True)
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
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup,
                                      constant_liar=True)


def make_searcher(spec: SpaceFile) -> OptunaSearch:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no INFO line per study and trial
    dists, _ = optuna_distributions(spec.space)
    metrics = [o.metric for o in spec.objectives]
    modes = [o.mode for o in spec.objectives]
    return OptunaSearch(space=dists, metric=metrics if len(metrics) > 1 else metrics[0],
                        mode=modes if len(modes) > 1 else modes[0],
                        sampler=make_sampler(spec))


def make_scheduler(spec: SpaceFile) -> ASHAScheduler | None:
    s = spec.search.scheduler
    if s is None:
        return None
    return ASHAScheduler(time_attr="training_iteration", metric=s.metric, mode=s.mode,
                         max_t=max_epochs(spec), grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor)


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
    fits = ray_train.worker_slots(spec.trial, nodes) // spec.trial.resources.num_workers
    if spec.search.max_concurrent_trials is not None:
        fits = min(fits, spec.search.max_concurrent_trials)
    return min(fits, spec.search.num_samples)


def build_trial(base: dict[str, Any], params: dict[str, Any]) -> TrialConfig:
    """The trial config for one set of searched values (ConfigError if invalid)."""
    return make_trial(apply_overrides(base, params), "searched trial configuration")


def run_trial_in_tune(config: dict[str, Any], base: dict[str, Any] | None = None,
                      storage: str = "", experiment: str = "", max_failures: int = 1) -> None:
    """The Tune function trainable: one Ray Train run per Tune trial."""
    assert base is not None
    params = {k: v for k, v in config.items() if "." in k}
    trial = build_trial(base, params)
    trial_id = tune.get_context().get_trial_id()
    runs = store.join(storage, experiment, "train_runs")
    name = f"train_{trial_id}"
    # A Train run of this trial exists already: Tune is restoring the trial (after Ctrl-C or a
    # killed driver) and has started its results anew, so the run reports its past epochs again.
    restored = store.exists(store.join(runs, name))
    trainer = ray_train.make_trainer(
        trial, storage_path=runs, name=name, max_failures=max_failures,
        callbacks=[TuneReportCallback()], replay_history=restored)
    trainer.fit()


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


def trainable(spec: SpaceFile, storage: str, max_failures: int = 1) -> Any:
    fn = tune.with_parameters(run_trial_in_tune, base=base_config(spec), storage=storage,
                              experiment=spec.name, max_failures=max_failures)
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
    total, best final objectives, elapsed time and time left; failed trials with their reason.
    Counts come from Tune's trial list, so they hold after a resume too."""

    def __init__(self, spec: SpaceFile, emit: Callable[[str], None] = print,
                 interval_s: float = 10.0) -> None:
        self.spec = spec
        self.emit = emit
        self.interval_s = interval_s
        self.start = time.monotonic()
        self.best: dict[str, float] = {}
        self.durations: list[float] = []
        self.started: dict[str, float] = {}
        self.last_line = -math.inf
        self.shown: set[str] = set()  # trials with a progress line already
        self.epochs = int(base_config(spec)["train"]["epochs"])
        self.latest: dict[str, dict[str, float]] = {}  # trial id -> its last epoch report

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A callback pickled by an older sd-tune (a resumed experiment) lacks newer fields."""
        self.__dict__.update(state)
        for name, value in (("interval_s", 10.0), ("last_line", -math.inf), ("shown", set()),
                            ("latest", {}), ("epochs", 0)):
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
        left = sum(self._left(self.latest[t.trial_id]) for t in running
                   if t.trial_id in self.latest)
        ended = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))
        waiting = max(self.spec.search.num_samples - ended - len(running), 0)
        return (left + waiting * mean_full) / max(1, len(running))

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        if not all(isinstance(result.get(k), (int, float))
                   for k in ("epoch", "wall_time_s", "val_acc", "images_per_s")):
            return
        now = time.monotonic()
        report = {"epoch": float(result["epoch"]), "epochs": float(self._trial_epochs(result)),
                  "wall_time_s": float(result["wall_time_s"])}
        since = now - self.started.get(trial.trial_id, now)  # start-up included
        report["full_s"] = max(since, report["wall_time_s"]) + self._left(report)
        self.latest[trial.trial_id] = report
        if now - self.last_line < self.interval_s and trial.trial_id in self.shown:
            return
        self.last_line = now
        self.shown.add(trial.trial_id)
        search = self._search_left(trials)
        search_text = f", search ~{_fmt_duration(search)} left" if math.isfinite(search) else ""
        self.emit(f"{_fmt_duration(now - self.start)} trial {trial.trial_id} epoch "
                  f"{int(report['epoch'])}/{int(report['epochs'])} val_acc "
                  f"{result['val_acc']:.4f} | {result['images_per_s']:.0f} img/s | trial "
                  f"~{_fmt_duration(self._left(report))} left{search_text}")

    def _status(self, trials: list[Any], ending: Any = None, failed_now: bool = False) -> None:
        # Tune calls on_trial_complete/on_trial_error before it updates the trial's status.
        others = [t for t in trials if t is not ending]
        running = sum(1 for t in others if t.status == "RUNNING")
        done = sum(1 for t in others if t.status == "TERMINATED")
        failed = sum(1 for t in others if t.status == "ERROR")
        if ending is not None:
            failed += failed_now
            done += not failed_now
        total = self.spec.search.num_samples
        elapsed = time.monotonic() - self.start
        eta = ""
        if self.durations and done + failed < total:
            per = sum(self.durations) / len(self.durations)
            slots = max(1, running)
            eta = f", ~{_fmt_duration(per * (total - done - failed) / slots)} left"
        best = ", ".join(f"{k} {v:.4g}" for k, v in self.best.items()) or "-"
        self.emit(f"{_fmt_duration(elapsed)} trials: {done} done, {running} running, "
                  f"{failed} failed of {total} | best final {best}{eta}")

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.monotonic()

    def _update_best(self, result: dict) -> None:
        """Best final values so far (per objective; an epoch report is not a final value)."""
        for o in self.spec.objectives:
            value = result.get(o.metric)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            old = self.best.get(o.metric)
            if old is None or (value > old if o.mode == "max" else value < old):
                self.best[o.metric] = float(value)

    def _finish(self, trial: Any) -> None:
        self.latest.pop(trial.trial_id, None)
        begun = self.started.pop(trial.trial_id, None)
        if begun is not None:
            self.durations.append(time.monotonic() - begun)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        self._update_best(trial.last_result or {})
        self._finish(trial)
        self._status(trials, trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._finish(trial)
        self.emit(f"trial {trial.trial_id} failed: {trial_error(trial)}")
        self._status(trials, trial, failed_now=True)


def trial_error(trial: Any) -> str:
    """The last line of a Tune trial's error (its root cause), or ''."""
    paths = []
    # The driver's staging copy, written first (Ray 2.60 asserts a running Ray for it).
    with contextlib.suppress(AssertionError, AttributeError):
        paths.append(trial.error_file)
    if getattr(trial, "path", None):  # the stored copy (a local experiment or a copy of one)
        paths.append(str(Path(trial.path) / "error.txt"))
    text = next((Path(p).read_text() for p in paths if p and Path(p).is_file()), "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()
             and not ln.startswith(("Traceback", "  ", "The above exception"))]
    return lines[-1] if lines else ""


def save_spec(spec: SpaceFile, exp_dir: str, raw: dict[str, Any]) -> None:
    store.write_text(store.join(exp_dir, SPEC_FILE),
                     json.dumps({"raw": raw, "source": spec.source}, indent=2))


def load_spec(exp_dir: str) -> tuple[SpaceFile, dict[str, Any]]:
    saved = json.loads(store.read_text(store.join(exp_dir, SPEC_FILE)))
    return space_from_dict(saved["raw"], saved["source"]), saved["raw"]


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


def tune_run_config(spec: SpaceFile, storage: str, callbacks: list[Any]) -> tune.RunConfig:
    _tune_settings()
    loggers = [JsonLoggerCallback(), CSVLoggerCallback(), ScalarsOnlyTBX()]
    return tune.RunConfig(name=spec.name, storage_path=storage, verbose=0,
                          callbacks=[*loggers, *callbacks],
                          failure_config=tune.FailureConfig(max_failures=0))


def run_search(spec: SpaceFile, raw: dict[str, Any], storage: str, *,
               emit: Callable[[str], None] = print, max_failures: int = 1,
               slots: int | None = None) -> str:
    """Run the whole experiment (Ray must be initialised); return its location. ``slots``:
    the trials at once when the autoscaler is to add nodes (``sd_tune.autoscale.scale_plan``);
    by default they are counted on the nodes up now."""
    root = store.root(storage)
    exp_dir = experiment_dir(storage, spec.name)
    save_spec(spec, exp_dir, raw)
    if slots is None:
        slots = concurrency(spec, ray_train.node_resources())
    else:
        slots = min(slots, spec.search.num_samples)
    emit(f"experiment {spec.name}: {spec.search.num_samples} trials, {slots} at a time, "
         f"results in {exp_dir}")
    tuner = tune.Tuner(
        trainable(spec, root, max_failures),
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(spec), scheduler=make_scheduler(spec),
            num_samples=spec.search.num_samples, max_concurrent_trials=max(slots, 1),
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
        run_config=tune_run_config(spec, root, [Progress(spec, emit)]),
    )
    tuner.fit()
    return exp_dir


def resume_search(exp_dir: str, spec: SpaceFile, *, emit: Callable[[str], None] = print,
                  max_failures: int = 1) -> str:
    """Continue the interrupted experiment at ``exp_dir`` (an absolute path or a URI), whose
    saved space is ``spec`` (``load_spec``): finished trials stay, unfinished ones continue
    from their checkpoints, the searcher keeps its state (so the total stays
    ``num_samples``)."""
    root = store.parent(exp_dir)
    emit(f"resuming experiment {spec.name} in {exp_dir}")
    _tune_settings()  # the restored run config brings the loggers and callbacks, not these
    tuner = tune.Tuner.restore(exp_dir, trainable=trainable(spec, root, max_failures),
                               resume_unfinished=True, resume_errored=False,
                               restart_errored=False)
    tuner.fit()  # Tune restores the run config, callbacks (Progress) included
    return exp_dir


def collect_records(exp_dir: str) -> list[dict[str, Any]]:
    """Every trial of a stored experiment (a folder or a URI) as a plain record (see
    ``sd_tune.report``). An experiment at a URI is read from a temporary local copy of its
    small files (``REPORT_SKIPS`` left out); the records' ``logdir`` name the URI's folders."""
    if not store.is_uri(exp_dir):
        return _records(exp_dir, exp_dir)
    with tempfile.TemporaryDirectory(prefix="sd-tune-report-") as tmp:
        copy = Path(tmp, "experiment")
        store.download(exp_dir, copy, skip=REPORT_SKIPS)
        return _records(str(copy), exp_dir)


def _records(folder: str, location: str) -> list[dict[str, Any]]:
    """The records of the experiment in the local ``folder``, stored at ``location``."""
    from ray.tune import ExperimentAnalysis

    spec, _ = load_spec(folder)
    base = base_config(spec)
    analysis = ExperimentAnalysis(folder)
    records = []
    for t in analysis.trials:
        params = {k: v for k, v in t.config.items() if "." in k}
        history = _history(Path(t.path))
        config = apply_overrides(base, params)
        epochs = int(config["train"].get("epochs", 0) or 0)
        final = history[-1] if history else {}
        if t.status == "ERROR":
            status = "failed"
        elif t.status == "TERMINATED":
            status = "completed" if int(final.get("epoch", 0)) >= epochs else "stopped_early"
        else:
            status = "running" if t.status == "RUNNING" else "pending"
        flat = {f"{s}.{k}": v for s, sec in config.items()
                if isinstance(sec, dict) for k, v in sec.items()}
        records.append({
            "trial_id": t.trial_id, "status": status, "params": params, "config": flat,
            "final": {k: v for k, v in final.items() if isinstance(v, (int, float))},
            "history": history, "error": trial_error(t) or None,
            "logdir": store.join(location, Path(t.path).name) if location != folder
            else str(t.path),
            "worker_node_ids": _node_ids(final.get("worker_node_ids")),
        })
    return records


def _node_ids(value: Any) -> list[str]:
    """``worker_node_ids`` as reported (one comma-separated string, rank order) -> a list."""
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return [str(v) for v in value or []]


_KEEP = (*EPOCH_METRICS, *FINAL_METRICS, "worker_node_ids")


def _history(trial_dir: Path) -> list[dict[str, Any]]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out.append({k: row[k] for k in _KEEP if k in row})
    return out
