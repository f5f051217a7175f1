"""Ray Train glue: one trial as a ``TorchTrainer`` with DDP workers (gloo on CPU, nccl on GPU).

Rank 0 reports metrics and a checkpoint after every epoch; every rank calls ``report`` the
same number of times. A restarted worker group resumes from the last checkpoint. Tune is
not imported here: ``sd_tune.search`` runs this trainer inside a Tune function trainable.
Nor is torch, until a trainer is made or a worker trains: the driver's commands (``launch``,
``resume``, ``report``) use this module's helpers and never need it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import ray.exceptions
import ray.train
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
    UserCallback,
)
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

from sd_tune.cluster import gpus_per_worker, worker_resources
from sd_tune.config import TrialConfig, make_trial
from sd_tune.errors import SdTuneError
from sd_tune.storage import is_uri
from sd_tune.storage import root as storage_root  # Ray wants an absolute local path or a URI

if TYPE_CHECKING:
    from ray.train.torch import TorchTrainer


def trial_to_config(trial: TrialConfig, replay_history: bool = False) -> dict[str, Any]:
    """The ``train_loop_config`` handed to every worker: plain, picklable data.
    ``replay_history``: a resumed run reports its past epochs again (see ``run_trial``)."""
    return {"trial": trial.to_dict(), "replay_history": replay_history}


def config_to_trial(config: dict[str, Any]) -> TrialConfig:
    return make_trial(config["trial"])


def scaling_config(trial: TrialConfig) -> ScalingConfig:
    """Workers and their resources; fractional CPUs are fine (e.g. 0.5 on a 2-core laptop)."""
    r = trial.resources
    return ScalingConfig(
        num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=worker_resources(trial)
    )


def _quiet_train_reports() -> None:
    """Ray 2.60's Train worker logs every report at INFO on the console, through a logger
    named after its source file (so LoggingConfig's "ray.train" level misses it)."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: nothing to quieten
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def worker_node_ids() -> list[str]:
    """The Ray node id of every worker of this run, in rank order (a collective: every
    rank must call it)."""
    import torch

    node = ray.get_runtime_context().get_node_id()
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [node]
    ids: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(ids, node)
    return [str(i) for i in ids]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: the sd-tune training loop, resumed if Ray has a
    checkpoint (after a worker failure or a Tune restore)."""
    import ray.train.torch
    import torch

    from sd_tune.train import ddp_kwargs, run_trial, stochastic_depth_from_config

    _quiet_train_reports()
    trial = config_to_trial(config)
    if gpus_per_worker(trial) > 0:
        # Before anything touches CUDA: a driver too old for this torch build is one message.
        from sd_tune.gpu import check_cuda_driver

        check_cuda_driver(f"node {ray.util.get_node_ip_address()}")
    rank = ray.train.get_context().get_world_rank()
    if not trial.resources.use_gpu:
        # A worker process may have imported torch before Ray set OMP_NUM_THREADS for it: size
        # its thread pool to the CPUs it holds, or 2 workers on 2 cores run 4 busy threads.
        torch.set_num_threads(max(1, int(trial.resources.cpus_per_worker)))
    parallel_kwargs = ddp_kwargs(stochastic_depth_from_config(trial))

    def prepare(model):
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=parallel_kwargs)

    node_ids = ",".join(worker_node_ids())

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        checkpoint = (
            ray.train.Checkpoint.from_directory(checkpoint_dir)
            if checkpoint_dir is not None and rank == 0
            else None
        )
        # One string, not a list: Tune's TensorBoard logger would try a list as a histogram.
        ray.train.report({**metrics, "worker_node_ids": node_ids}, checkpoint=checkpoint)

    def say(line: str) -> None:
        print(line, flush=True)

    # The epoch lines reach the driver as metrics (MetricsLog, Tune), which prints them.
    kwargs: dict[str, Any] = {
        "device": ray.train.torch.get_device(),
        "prepare_model": prepare,
        "say": say,
        "progress_lines": False,
    }
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        run_trial(trial, report, **kwargs)
        return
    with checkpoint.as_directory() as resume_dir:
        run_trial(
            trial,
            report,
            resume_dir=resume_dir,
            replay=bool(config.get("replay_history")),
            **kwargs,
        )


class MetricsLog(UserCallback):
    """Runs in the Train controller (on the driver's node): appends every rank-0 report to
    ``metrics.jsonl`` and writes its metrics as TensorBoard scalars, both in ``run_dir``. The
    TensorBoard writer of ``sd-tune train``; a search's are Tune's logger (``ScalarsOnlyTBX``,
    live curves per trial) and its report (``sd_tune.report.tensorboard``)."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._writer = None

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
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


PLACEMENT_WAIT_S = 120.0  # a cluster with no autoscaler: a lost node may be back by then
START_TIMEOUT_VAR = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # Ray Train's wait per try
POLL_VAR = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # how often Train's controller polls its workers
POLL_S = "0.5"  # Ray's default, 2 s, saw each run's end up to 2 s late


def poll_often(environ: MutableMapping[str, str] | None = None) -> None:
    """Have Ray Train's controller poll its workers every :data:`POLL_S` seconds instead of
    Ray's 2, unless ``$RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` is set. The controller sees a run's
    reports and its end only when it polls: a short trial ran ~3 s longer on 2 s polls. Ray
    Train hands the variable from the process that calls ``fit`` to the controller.

    >>> env = {}
    >>> poll_often(env); env
    {'RAY_TRAIN_HEALTH_CHECK_INTERVAL_S': '0.5'}
    >>> env = {POLL_VAR: "2"}
    >>> poll_often(env); env
    {'RAY_TRAIN_HEALTH_CHECK_INTERVAL_S': '2'}
    """
    environ = os.environ if environ is None else environ
    environ.setdefault(POLL_VAR, POLL_S)


def placement_retries(wait_s: float, environ: dict[str, str] | None = None) -> int:
    """How many more times Ray Train tries to place a run's workers after a try timed out,
    so that it gives up after about ``wait_s`` seconds in all. Each try waits
    ``$RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` (60 s by default; the controller reads it on
    its node, this reads the driver's). Ray's own default retries for ever: a run that lost a
    node its workers needed hung instead of failing.

    >>> placement_retries(120), placement_retries(1800), placement_retries(5)
    (1, 29, 1)
    >>> placement_retries(30, {START_TIMEOUT_VAR: "10"})
    2
    """
    environ = os.environ if environ is None else environ
    try:
        each = float(environ.get(START_TIMEOUT_VAR, "60"))
    except ValueError:
        each = 60.0
    return max(1, math.ceil(wait_s / max(each, 1.0)) - 1)  # the first try is no retry


def make_trainer(
    trial: TrialConfig,
    *,
    storage_path: str,
    name: str,
    max_failures: int = 1,
    callbacks: Sequence[UserCallback] = (),
    replay_history: bool = False,
    placement_wait_s: float = PLACEMENT_WAIT_S,
) -> TorchTrainer:
    """A ``TorchTrainer`` for one trial; its run ``name`` lets a restore find its checkpoints.
    When its workers cannot be placed (a node was lost), it fails after about
    ``placement_wait_s`` seconds."""
    from ray.train.torch import TorchTrainer

    failures = FailureConfig(
        max_failures=max_failures, controller_failure_limit=placement_retries(placement_wait_s)
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=trial_to_config(trial, replay_history),
        scaling_config=scaling_config(trial),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=failures,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


class NoRoomForWorkers(SdTuneError, RuntimeError):
    """A Train run whose workers could not be placed on the cluster in the time allowed."""

    exit_code = 1


def fit(trainer: TorchTrainer, trial: TrialConfig, placement_wait_s: float) -> Any:
    """``trainer.fit()`` with the controller polling often (:func:`poll_often`); a run whose
    workers found no room (a node was lost) fails with a :class:`NoRoomForWorkers` that says
    so, instead of Ray's message about its own timeout variable."""
    poll_often()
    try:
        return trainer.fit()
    except Exception as err:
        if not isinstance(getattr(err, "controller_failure", None), WorkerGroupStartupTimeoutError):
            raise
        need = ", ".join(f"{v:g} {k}" for k, v in worker_resources(trial).items())
        raise NoRoomForWorkers(
            f"no room on the cluster for the trial's {trial.resources.num_workers} workers "
            f"({need} each) for {placement_wait_s:.0f} s (--wait-for-nodes): a node it ran on "
            "was lost, or other work holds what it needs"
        ) from err


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a ``metrics.jsonl`` (a line still being written, or cut short by
    a crash, is left out).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = Path(folder, "m.jsonl").write_text('{"epoch": 1}\\n{"epo')
    ...     read_metrics(Path(folder, "m.jsonl"))
    [{'epoch': 1}]
    """
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().split("\n")[:-1]:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def _tail(
    path: Path, stop: threading.Event, emit: Callable[[dict[str, Any]], None], seen: int
) -> None:
    """Emit every line appended to ``path`` after its first ``seen`` lines, until ``stop``."""
    while True:
        done = stop.is_set()
        rows = read_metrics(path)
        for row in rows[seen:]:
            emit(row)
        seen = max(seen, len(rows))
        if done:
            return
        time.sleep(0.5)


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
    """Where ``fit_trial`` writes metrics.jsonl and TensorBoard files: ``<storage>/<name>``,
    or a local mirror ``results/<name>`` when ``storage`` is a URI (Ray Train writes the
    checkpoints to ``<storage>/<name>`` there)."""
    root = storage_root(storage)
    return Path("results", name) if is_uri(root) else Path(root, name)


def fit_trial(
    trial: TrialConfig,
    *,
    storage: str,
    name: str,
    max_failures: int = 1,
    emit: Callable[[dict[str, Any]], None] | None = None,
    placement_wait_s: float = PLACEMENT_WAIT_S,
) -> Any:
    """Run one trial with Ray Train (Ray must be initialised) and return Ray's ``Result``.

    Metrics are appended to ``<storage>/<name>/metrics.jsonl`` and TensorBoard event files go
    to the same folder (a local mirror under ``results/<name>`` when ``storage`` is a URI);
    ``emit`` is called in this process with each new epoch's metrics as they arrive. A run of
    the same name that is there already continues from its last checkpoint (Ray Train finds
    it), and its earlier metrics stay.
    """
    root = storage_root(storage)
    out = run_dir(storage, name)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "metrics.jsonl"
    stop = threading.Event()
    tail = threading.Thread(
        target=_tail,
        args=(log, stop, emit or (lambda m: None), len(read_metrics(log))),
        daemon=True,
    )
    tail.start()
    try:
        trainer = make_trainer(
            trial,
            storage_path=root,
            name=name,
            max_failures=max_failures,
            callbacks=[MetricsLog(str(out.resolve()))],
            placement_wait_s=placement_wait_s,
        )
        return fit(trainer, trial, placement_wait_s)
    finally:
        stop.set()
        tail.join(timeout=5)
