"""The Ray Tune experiment: the searcher and scheduler, concurrency, the trainable, the run
config, and running or restoring it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from sd_tune import cluster, ray_train
from sd_tune import storage as store
from sd_tune.config import (
    SpaceFile,
    trial_count,
)
from sd_tune.errors import SdTuneError
from sd_tune.repeats import RepeatSearcher
from sd_tune.search.files import RECORDS_DIR
from sd_tune.search.progress import Progress
from sd_tune.search.records import _RESTORING_AT, STORAGE_FAILED, StopWhenStorageFails, TrialRecords
from sd_tune.search.spec import base_config, optuna_distributions, save_spec
from sd_tune.search.state import storage_failures
from sd_tune.search.trial_errors import _last_error_line
from sd_tune.tune_trial import run_trial_in_tune

TRIAL_DRIVER_MEMORY = 64 * 1024**2  # bytes of Ray's logical memory resource per Tune trial


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
