"""Ray Train glue: one trial as a ``TorchTrainer`` with DDP workers (gloo on CPU, nccl on GPU).

Rank 0 reports metrics and a checkpoint after every epoch; every rank calls ``report`` the
same number of times. A restarted worker group resumes from the last checkpoint. Tune is
not imported here: ``sd_tune.search`` runs this trainer inside a Tune function trainable.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
    UserCallback,
)
from ray.train.torch import TorchTrainer

from sd_tune.config import TrialConfig, make_trial


def trial_to_config(trial: TrialConfig, replay_history: bool = False) -> dict[str, Any]:
    """The ``train_loop_config`` handed to every worker: plain, picklable data.
    ``replay_history``: a resumed run reports its past epochs again (see ``run_trial``)."""
    return {"trial": trial.to_dict(), "replay_history": replay_history}


def config_to_trial(config: dict[str, Any]) -> TrialConfig:
    return make_trial(config["trial"])


def gpus_per_worker(trial: TrialConfig) -> float:
    r = trial.resources
    if r.gpus_per_worker is not None:
        return r.gpus_per_worker
    return 1.0 if r.use_gpu else 0.0


def trial_resources(trial: TrialConfig) -> dict[str, float]:
    """What one trial's workers hold together (a Tune trial's own actor holds no CPU).

    >>> trial_resources(TrialConfig())
    {'CPU': 2.0}
    """
    r = trial.resources
    out = {"CPU": r.num_workers * r.cpus_per_worker}
    gpus = gpus_per_worker(trial)
    if gpus:
        out["GPU"] = r.num_workers * gpus
    return out


def scaling_config(trial: TrialConfig) -> ScalingConfig:
    """Workers and their resources; fractional CPUs are fine (e.g. 0.5 on a 2-core laptop)."""
    r = trial.resources
    resources: dict[str, float] = {"CPU": r.cpus_per_worker}
    gpus = gpus_per_worker(trial)
    if gpus:
        resources["GPU"] = gpus
    return ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                         resources_per_worker=resources)


def _quiet_train_reports() -> None:
    """Ray 2.60's Train worker logs every report at INFO on the console, through a logger
    named after its source file (so LoggingConfig's "ray.train" level misses it)."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: nothing to quieten
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: the sd-tune training loop, resumed if Ray has a
    checkpoint (after a worker failure or a Tune restore)."""
    from sd_tune.train import ddp_kwargs, run_trial, stochastic_depth_from_config

    _quiet_train_reports()
    trial = config_to_trial(config)
    rank = ray.train.get_context().get_world_rank()
    if not trial.resources.use_gpu:
        # A worker process may have imported torch before Ray set OMP_NUM_THREADS for it: size
        # its thread pool to the CPUs it holds, or 2 workers on 2 cores run 4 busy threads.
        torch.set_num_threads(max(1, int(trial.resources.cpus_per_worker)))
    parallel_kwargs = ddp_kwargs(stochastic_depth_from_config(trial))

    def prepare(model):
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=parallel_kwargs)

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        checkpoint = (ray.train.Checkpoint.from_directory(checkpoint_dir)
                      if checkpoint_dir is not None and rank == 0 else None)
        ray.train.report(metrics, checkpoint=checkpoint)

    def log(line: str) -> None:  # epoch lines reach the driver through MetricsLog instead
        if rank == 0 and not line.startswith("epoch"):
            print(line, flush=True)

    checkpoint = ray.train.get_checkpoint()
    device = ray.train.torch.get_device()
    if checkpoint is None:
        run_trial(trial, report, device=device, prepare_model=prepare, log=log)
        return
    with checkpoint.as_directory() as resume_dir:
        run_trial(trial, report, resume_dir=resume_dir, device=device, prepare_model=prepare,
                  log=log, replay=bool(config.get("replay_history")))


class MetricsLog(UserCallback):
    """Runs in the Train controller (on the driver's node): appends every rank-0 report to
    ``metrics.jsonl`` and writes TensorBoard scalars, both in ``run_dir``."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._writer = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Any) -> None:
        if not metrics:
            return
        m = dict(metrics[0])
        m["param_checksums"] = [w.get("param_checksum") for w in metrics]
        Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(self.run_dir) / "metrics.jsonl", "a") as f:
            f.write(json.dumps(m) + "\n")
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.run_dir)
        step = int(m.get("epoch", 0))
        for key, value in m.items():
            if isinstance(value, (int, float)) and math.isfinite(value) and key != "epoch":
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def __getstate__(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "_writer": None}


def make_trainer(trial: TrialConfig, *, storage_path: str, name: str,
                 max_failures: int = 1, callbacks: Sequence[UserCallback] = (),
                 replay_history: bool = False) -> TorchTrainer:
    """A ``TorchTrainer`` for one trial; its run ``name`` lets a restore find its checkpoints."""
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=trial_to_config(trial, replay_history),
        scaling_config=scaling_config(trial),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def is_uri(path: str) -> bool:
    return "://" in path


def storage_root(storage: str) -> str:
    """Ray wants an absolute local path or a URI."""
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


def init_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or ``$RAY_ADDRESS``) if given, else start a local Ray quietly."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Worker output stays in Ray's log files (/tmp/ray/session_latest/logs): the terminal gets
    # sd-tune's own progress lines, which come through the driver.
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False,
                              "configure_logging": True}
    if address is None:
        # "local": a new Ray of our own, even where /tmp/ray remembers an earlier `ray start`.
        # The dashboard serves Ray's state API, which Ray Train's placement-group cleaner
        # polls; it listens on loopback only.
        address = "local"
        kwargs.update(include_dashboard=True, dashboard_host="127.0.0.1")
    ray.init(address=address, **kwargs)


def _tail(path: Path, stop: threading.Event, emit: Callable[[dict[str, Any]], None]) -> None:
    seen = 0
    while True:
        done = stop.is_set()
        if path.exists():
            lines = path.read_text().splitlines()
            for line in lines[seen:]:
                emit(json.loads(line))
            seen = len(lines)
        if done:
            return
        time.sleep(0.5)


def resource_problem(trial: TrialConfig, resources: dict[str, float] | None = None) -> str | None:
    """Why the cluster can never run this trial's workers, or None if it can.

    >>> resource_problem(TrialConfig(), {"CPU": 1.0})[:64]
    'the trial needs 2 workers x 1.0 CPU = 2.0 CPUs but the Ray clust'
    """
    have = ray.cluster_resources() if resources is None else resources
    r = trial.resources
    need = trial_resources(trial)
    if need["CPU"] > have.get("CPU", 0.0) + 1e-9:
        return (f"the trial needs {r.num_workers} workers x {r.cpus_per_worker} CPU = "
                f"{need['CPU']} CPUs but the Ray cluster has {have.get('CPU', 0.0)} CPUs; lower "
                f"resources.num_workers or resources.cpus_per_worker (fractions like 0.5 are "
                f"fine)")
    if need.get("GPU", 0.0) > have.get("GPU", 0.0) + 1e-9:
        return (f"the trial needs {r.num_workers} workers x {gpus_per_worker(trial)} GPU = "
                f"{need['GPU']} GPUs but the Ray cluster has {have.get('GPU', 0.0)} "
                f"GPUs; run on a GPU cluster (--address) or set resources.use_gpu: false")
    return None


def root_cause(err: BaseException) -> str:
    """The innermost error message of a Ray failure, without the stack."""
    seen = err
    for attr in ("worker_failures", "training_failed_error"):
        inner = getattr(seen, attr, None)
        if isinstance(inner, dict) and inner:
            seen = next(iter(inner.values()))
        elif isinstance(inner, BaseException):
            seen = inner
    while seen.__cause__ is not None:
        seen = seen.__cause__
    text = str(seen).strip().splitlines()
    lines = [ln for ln in text if ln.strip() and not ln.startswith(("Traceback", "  "))]
    return lines[-1] if lines else type(seen).__name__


def run_dir(storage: str, name: str) -> Path:
    """Where ``fit_trial`` writes metrics.jsonl and TensorBoard files."""
    root = storage_root(storage)
    return Path("results", name) if is_uri(root) else Path(root, name)


def fit_trial(trial: TrialConfig, *, storage: str, name: str, max_failures: int = 1,
              emit: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """Run one trial with Ray Train (Ray must be initialised) and return Ray's ``Result``.

    Metrics go to ``<storage>/<name>/metrics.jsonl`` and TensorBoard event files in the same
    folder (a local mirror under ``results/<name>`` when ``storage`` is a URI); ``emit`` is
    called in this process with each epoch's metrics as they arrive.
    """
    root = storage_root(storage)
    out = run_dir(storage, name)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "metrics.jsonl"
    if log.exists():
        log.unlink()
    stop = threading.Event()
    tail = threading.Thread(target=_tail, args=(log, stop, emit or (lambda m: None)),
                            daemon=True)
    tail.start()
    try:
        trainer = make_trainer(trial, storage_path=root, name=name, max_failures=max_failures,
                               callbacks=[MetricsLog(str(out.resolve()))])
        return trainer.fit()
    finally:
        stop.set()
        tail.join(timeout=5)

