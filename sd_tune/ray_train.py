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
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
import ray.exceptions
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
from sd_tune.storage import is_uri
from sd_tune.storage import root as storage_root  # Ray wants an absolute local path or a URI


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


def worker_resources(trial: TrialConfig) -> dict[str, float]:
    """What one Ray Train worker of the trial holds.

    >>> worker_resources(TrialConfig())
    {'CPU': 1.0}
    """
    out = {"CPU": trial.resources.cpus_per_worker}
    gpus = gpus_per_worker(trial)
    if gpus:
        out["GPU"] = gpus
    return out


def trial_resources(trial: TrialConfig) -> dict[str, float]:
    """What one trial's workers hold together (a Tune trial's own actor holds no CPU).

    >>> trial_resources(TrialConfig())
    {'CPU': 2.0}
    """
    return {k: trial.resources.num_workers * v for k, v in worker_resources(trial).items()}


def scaling_config(trial: TrialConfig) -> ScalingConfig:
    """Workers and their resources; fractional CPUs are fine (e.g. 0.5 on a 2-core laptop)."""
    r = trial.resources
    return ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                         resources_per_worker=worker_resources(trial))


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
    node = ray.get_runtime_context().get_node_id()
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [node]
    ids: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(ids, node)
    return [str(i) for i in ids]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: the sd-tune training loop, resumed if Ray has a
    checkpoint (after a worker failure or a Tune restore)."""
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
        checkpoint = (ray.train.Checkpoint.from_directory(checkpoint_dir)
                      if checkpoint_dir is not None and rank == 0 else None)
        # One string, not a list: Tune's TensorBoard logger would try a list as a histogram.
        ray.train.report({**metrics, "worker_node_ids": node_ids}, checkpoint=checkpoint)

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
        # Ray 2.60 turns token authentication on for a new local Ray and says so in a warning
        # on every start; it stays on, the README says where the token lives.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR)
    tries = 3 if address.startswith("ray://") else 1
    for attempt in range(1, tries + 1):
        try:
            ray.init(address=address, **kwargs)
            if address == "local":
                private_token_file()
            return
        except ConnectionAbortedError as err:
            # Ray Client's proxy sometimes loses the race with the server process it starts
            # for this client (psutil.ZombieProcess in start_specific_server): try again.
            if attempt == tries:
                raise _connect_error(address, err) from err
            time.sleep(2.0)
        except (ConnectionError, TimeoutError, ray.exceptions.RayError) as err:
            raise _connect_error(address, err) from err


DRIVER_LOG = "sd_tune_driver.log"


def driver_log() -> Path:
    """Send Ray Tune's and Train's log records in this (the driver's) process to a file in
    Ray's log folder instead of the terminal, which gets sd-tune's own lines (a failed trial's
    reason, one message for a full disk) rather than Ray's traceback walls; return the file."""
    try:
        folder = Path(ray._private.worker._global_node.get_logs_dir_path())
    except Exception:  # Ray Client, or another Ray layout
        folder = Path(tempfile.gettempdir())
    path = folder / DRIVER_LOG
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name("sd_tune_driver_log")
    for name in ("ray.tune", "ray.train", "ray.air"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == "sd_tune_driver_log"]:
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
        logger.propagate = False
    return path


def private_token_file(path: Path | None = None) -> Path | None:
    """Make Ray's token file (``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``) readable by
    its owner only: Ray 2.60 writes it with mode 644, and whoever reads it can use the cluster.
    Returns the file, or None where there is none (or it is not ours to change).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     token = Path(folder, "auth_token")
    ...     _ = token.write_text("secret")
    ...     token.chmod(0o644)
    ...     _ = private_token_file(token)
    ...     oct(token.stat().st_mode & 0o777)
    '0o600'
    """
    if path is None:
        named = os.environ.get("RAY_AUTH_TOKEN_PATH")
        path = Path(named) if named else Path.home() / ".ray" / "auth_token"
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            path.chmod(mode & 0o700)
    except OSError:  # none there, or another user's
        return None
    return path


def _connect_error(address: str, err: BaseException) -> ConnectionError:
    """One line for a Ray that could not be started or joined, with what to check."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    if address == "local":
        return ConnectionError(f"could not start a local Ray: {first}")
    return ConnectionError(
        f"cannot connect to the Ray cluster at {address}: {first}; check --address or "
        f"RAY_ADDRESS, and give the cluster's token (RAY_AUTH_MODE=token with RAY_AUTH_TOKEN, "
        f"RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")


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


def _tail(path: Path, stop: threading.Event, emit: Callable[[dict[str, Any]], None],
          seen: int) -> None:
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


def alive_nodes() -> list[dict[str, Any]]:
    """``ray.nodes()`` entries of the connected cluster's alive nodes."""
    return [n for n in ray.nodes() if n.get("Alive")]


def node_resources() -> list[dict[str, float]]:
    """The total resources of every alive node of the connected Ray cluster."""
    return [{k: float(v) for k, v in n["Resources"].items()} for n in alive_nodes()]


def worker_slots(trial: TrialConfig, nodes: Sequence[dict[str, float]]) -> int:
    """How many of the trial's workers the nodes hold at once (a worker lives on one node).

    >>> worker_slots(TrialConfig(), [{"CPU": 3.0}, {"CPU": 1.5, "GPU": 1.0}])
    4
    """
    need = {k: v for k, v in worker_resources(trial).items() if v > 0}
    if not need:
        return 1 << 30
    return sum(min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in need.items())
               for node in nodes)


def node_list(nodes: Sequence[dict[str, float]]) -> str:
    """Nodes' CPUs and GPUs, for messages.

    >>> node_list([{"CPU": 8.0}, {"CPU": 96.0, "GPU": 8.0}])
    '8 CPU, 96 CPU + 8 GPU'
    """
    parts = [f"{n.get('CPU', 0.0):g} CPU" + (f" + {n['GPU']:g} GPU" if n.get("GPU") else "")
             for n in nodes]
    return ", ".join(parts) or "none"


def resource_problem(trial: TrialConfig,
                     nodes: Sequence[dict[str, float]] | None = None) -> str | None:
    """Why the cluster's nodes can never hold this trial's workers together, or None.

    >>> resource_problem(TrialConfig(), [{"CPU": 1.0}])[:64]
    'the trial needs 2 workers x 1.0 CPU = 2.0 CPUs but the Ray clust'
    """
    nodes = node_resources() if nodes is None else list(nodes)
    r = trial.resources
    need = trial_resources(trial)
    have = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
    gpus = gpus_per_worker(trial)
    if need["CPU"] > have["CPU"] + 1e-9:
        return (f"the trial needs {r.num_workers} workers x {r.cpus_per_worker} CPU = "
                f"{need['CPU']} CPUs but the Ray cluster has {have['CPU']} CPUs; lower "
                f"resources.num_workers or resources.cpus_per_worker (fractions like 0.5 are "
                f"fine)")
    if need.get("GPU", 0.0) > have["GPU"] + 1e-9:
        return (f"the trial needs {r.num_workers} workers x {gpus} GPU = "
                f"{need['GPU']} GPUs but the Ray cluster has {have['GPU']} "
                f"GPUs; run on a GPU cluster (--address) or set resources.use_gpu: false")
    slots = worker_slots(trial, nodes)
    if slots < r.num_workers:
        worker = " + ".join(f"{v:g} {k}" for k, v in worker_resources(trial).items())
        return (f"the trial needs {r.num_workers} workers of {worker} each, and a worker "
                f"must fit on one node, but the cluster's nodes ({node_list(nodes)}) hold "
                f"only {slots} such workers; lower resources.cpus_per_worker or "
                f"gpus_per_worker, or use larger nodes")
    return None


SHARED_CHECK_TIMEOUT_S = 60.0


def storage_problem(storage: str) -> str | None:
    """Why ``storage`` cannot hold this cluster's results, or None.

    A URI (``s3://``, ``gs://``) is shared by nature. A local path is fine on a one-node
    cluster; on more nodes every node must see it (an NFS mount): a marker file written here
    is looked for on each node by a zero-CPU task pinned there.
    """
    root = storage_root(storage)
    nodes = alive_nodes()
    if is_uri(root) or len(nodes) < 2:
        return None
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = Path(root, f".sd_tune_shared_{os.getpid()}_{time.time_ns()}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("sd-tune shared storage check\n")
    try:
        look = ray.remote(num_cpus=0)(_sees)
        refs = {n["NodeID"]: look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(marker)) for n in nodes}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs),
                            timeout=SHARED_CHECK_TIMEOUT_S)
        seen = {node: _answer(ref) if ref in ready else None for node, ref in refs.items()}
    finally:
        marker.unlink(missing_ok=True)
    return shared_storage_problem(root, seen,
                                  {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in nodes})


def _sees(path: str) -> bool:
    return Path(path).is_file()


def _answer(ref: Any) -> bool | None:
    try:
        return bool(ray.get(ref))
    except Exception:  # the node died or refused the task: it did not answer
        return None


def shared_storage_problem(root: str, seen: dict[str, bool | None],
                           addresses: dict[str, str]) -> str | None:
    """The message for nodes that do not see ``root`` (``seen``: node id -> whether the
    marker was found there; None when the node did not answer).

    >>> shared_storage_problem("/data/r", {"a1": True, "b2": False}, {"a1": "10.0.0.1",
    ...                        "b2": "10.0.0.2"})[:78]
    '--storage /data/r is not shared: 1 of 2 nodes of the Ray cluster do not see it'
    """
    missing = [node for node, ok in seen.items() if not ok]
    if not missing:
        return None
    which = ", ".join(f"{addresses.get(n, '?')} ({n[:8]}"
                      + (", no answer" if seen[n] is None else "") + ")" for n in missing)
    return (f"--storage {root} is not shared: {len(missing)} of {len(seen)} nodes of the Ray "
            f"cluster do not see it ({which}); every node writes checkpoints and results "
            f"there, so give an s3:// or gs:// URI, or a path mounted on every node (NFS)")


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


def fit_trial(trial: TrialConfig, *, storage: str, name: str, max_failures: int = 1,
              emit: Callable[[dict[str, Any]], None] | None = None) -> Any:
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
    tail = threading.Thread(target=_tail, args=(log, stop, emit or (lambda m: None),
                                                len(read_metrics(log))), daemon=True)
    tail.start()
    try:
        trainer = make_trainer(trial, storage_path=root, name=name, max_failures=max_failures,
                               callbacks=[MetricsLog(str(out.resolve()))])
        return trainer.fit()
    finally:
        stop.set()
        tail.join(timeout=5)

