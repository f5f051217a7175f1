"""The Ray cluster sd-tune runs on: starting or joining it, and the checks made before any
trial starts (the workers' resources against the nodes, node by node; storage that every node
sees). The command line calls these; the Train glue (``sd_tune.ray_train``) and the search use
the resource arithmetic.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
import time
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import ray
import ray.exceptions

from sd_tune.config import TrialConfig
from sd_tune.storage import is_uri
from sd_tune.storage import root as storage_root


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


PREEMPTION_VAR = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def no_preemption_watch(environ: MutableMapping[str, str] | None = None) -> None:
    """Nothing preempts a Ray of our own: turn off Ray Train's preemption watcher (an actor,
    so a process, per Train run) unless ``$RAY_TRAIN_ENABLE_PREEMPTION_WATCHER`` is set.
    Called before a local Ray starts: its processes inherit the variable, and Train passes it
    from a trial's process to its controller.

    >>> env = {}
    >>> no_preemption_watch(env); env
    {'RAY_TRAIN_ENABLE_PREEMPTION_WATCHER': '0'}
    >>> env = {PREEMPTION_VAR: "1"}
    >>> no_preemption_watch(env); env
    {'RAY_TRAIN_ENABLE_PREEMPTION_WATCHER': '1'}
    """
    environ = os.environ if environ is None else environ
    environ.setdefault(PREEMPTION_VAR, "0")


def init_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or ``$RAY_ADDRESS``) if given, else start a local Ray quietly."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Worker output stays in Ray's log files (/tmp/ray/session_latest/logs): the terminal gets
    # sd-tune's own progress lines, which come through the driver.
    kwargs: dict[str, Any] = {
        "logging_level": "WARNING",
        "log_to_driver": False,
        "configure_logging": True,
    }
    if address is None:
        # "local": a new Ray of our own, even where /tmp/ray remembers an earlier `ray start`.
        # The dashboard serves Ray's state API, which Ray Train's placement-group cleaner
        # polls; it listens on loopback only.
        address = "local"
        kwargs.update(include_dashboard=True, dashboard_host="127.0.0.1")
        no_preemption_watch()
        # Ray 2.60 turns token authentication on for a new local Ray and says so in a warning
        # on every start; it stays on, the README says where the token lives.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
    if (problem := address_problem(address)) is not None:
        raise ConnectionError(problem)
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


CONNECT_TIMEOUT_S = 5.0
CONNECT_TRIES = 3


def _host_port(address: str) -> tuple[str, int] | None:
    """The host and port of ``host:port`` or ``ray://host:port`` (Ray Client's default port
    10001 when none is given), or None for what Ray resolves itself (``auto``, ``local``).

    >>> _host_port("ray://head:10001"), _host_port("10.0.0.1:6379"), _host_port("auto")
    (('head', 10001), ('10.0.0.1', 6379), None)
    >>> _host_port("[::1]:6379")
    ('::1', 6379)
    """
    rest = address.removeprefix("ray://")
    if rest in ("auto", "local") or not rest:
        return None
    host, sep, port = rest.rpartition(":")
    if not sep:
        return (rest, 10001) if address.startswith("ray://") else None
    if not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def address_problem(address: str) -> str | None:
    """Why nothing can be reached at a Ray ``address`` (a TCP connection to its host and port
    is refused or times out), or None. Ray itself retries such an address for many minutes
    without saying which address it waits for."""
    target = _host_port(address)
    if target is None:
        return None
    why = ""
    for attempt in range(CONNECT_TRIES):
        try:
            with socket.create_connection(target, timeout=CONNECT_TIMEOUT_S):
                return None
        except socket.gaierror as err:
            why = f"the host {target[0]!r} is unknown ({err.strerror or err})"
            break
        except TimeoutError:  # a slow network may answer the next try
            why = f"no answer within {CONNECT_TIMEOUT_S:g} s, {attempt + 1} tries"
            continue
        except OSError as err:  # refused, unreachable: an answer, no need to ask again
            why = err.strerror or str(err)
        break
    return (
        f"cannot connect to the Ray cluster at {address}: nothing answers at "
        f"{target[0]}:{target[1]} ({why}); check --address or RAY_ADDRESS (the head node's "
        f"host:port, e.g. 10.0.0.1:6379, or ray://host:10001 for Ray Client), and that the "
        f"cluster is up (`ray status` on the head node)"
    )


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
        f"RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
    )


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
    return sum(
        min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in need.items()) for node in nodes
    )


def node_list(nodes: Sequence[dict[str, float]]) -> str:
    """Nodes' CPUs and GPUs, for messages.

    >>> node_list([{"CPU": 8.0}, {"CPU": 96.0, "GPU": 8.0}])
    '8 CPU, 96 CPU + 8 GPU'
    """
    parts = [
        f"{n.get('CPU', 0.0):g} CPU" + (f" + {n['GPU']:g} GPU" if n.get("GPU") else "")
        for n in nodes
    ]
    return ", ".join(parts) or "none"


def resource_problem(
    trial: TrialConfig, nodes: Sequence[dict[str, float]] | None = None
) -> str | None:
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
        return (
            f"the trial needs {r.num_workers} workers x {r.cpus_per_worker} CPU = "
            f"{need['CPU']} CPUs but the Ray cluster has {have['CPU']} CPUs; lower "
            f"resources.num_workers or resources.cpus_per_worker (fractions like 0.5 are "
            f"fine)"
        )
    if need.get("GPU", 0.0) > have["GPU"] + 1e-9:
        return (
            f"the trial needs {r.num_workers} workers x {gpus} GPU = "
            f"{need['GPU']} GPUs but the Ray cluster has {have['GPU']} "
            f"GPUs; run on a GPU cluster (--address) or set resources.use_gpu: false"
        )
    slots = worker_slots(trial, nodes)
    if slots < r.num_workers:
        worker = node_list([worker_resources(trial)])
        return (
            f"the trial needs {r.num_workers} workers of {worker} each, and a worker "
            f"must fit on one node, but the cluster's nodes ({node_list(nodes)}) hold "
            f"only {slots} such workers; lower resources.cpus_per_worker or "
            f"gpus_per_worker, or use larger nodes"
        )
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
    marker = Path(root, f".sd_tune_shared_{os.getpid()}_{time.time_ns()}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("sd-tune shared storage check\n")
    try:
        answers = on_each_node(_sees, nodes, str(marker), timeout_s=SHARED_CHECK_TIMEOUT_S)
    finally:
        marker.unlink(missing_ok=True)
    seen = {node: None if a is None else bool(a) for node, a in answers.items()}
    return shared_storage_problem(
        root, seen, {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in nodes}
    )


def _sees(path: str) -> bool:
    return Path(path).is_file()


def on_each_node(
    fn: Any, nodes: Sequence[dict[str, Any]], *args: Any, timeout_s: float
) -> dict[str, Any]:
    """``{node id: fn(*args)}`` run in a zero-CPU task pinned to each of ``nodes``
    (``ray.nodes()`` entries); None for a node that did not answer within ``timeout_s`` (all
    tasks wait together), died or refused the task."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(fn)
    refs = {
        n["NodeID"]: task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(*args)
        for n in nodes
    }
    if not refs:
        return {}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    return {node: _answer(ref) if ref in ready else None for node, ref in refs.items()}


def _answer(ref: Any) -> Any:
    try:
        return ray.get(ref)
    except Exception:  # the node died or refused the task: it did not answer
        return None


def shared_storage_problem(
    root: str, seen: dict[str, bool | None], addresses: dict[str, str]
) -> str | None:
    """The message for nodes that do not see ``root`` (``seen``: node id -> whether the
    marker was found there; None when the node did not answer).

    >>> shared_storage_problem("/data/r", {"a1": True, "b2": False}, {"a1": "10.0.0.1",
    ...                        "b2": "10.0.0.2"})[:78]
    '--storage /data/r is not shared: 1 of 2 nodes of the Ray cluster do not see it'
    """
    missing = [node for node, ok in seen.items() if not ok]
    if not missing:
        return None
    which = ", ".join(
        f"{addresses.get(n, '?')} ({n[:8]}" + (", no answer" if seen[n] is None else "") + ")"
        for n in missing
    )
    return (
        f"--storage {root} is not shared: {len(missing)} of {len(seen)} nodes of the Ray "
        f"cluster do not see it ({which}); every node writes checkpoints and results "
        f"there, so give an s3:// or gs:// URI, or a path mounted on every node (NFS)"
    )
