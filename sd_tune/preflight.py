"""What a command does before its work and while it runs: the data and storage checks
(whether something is at a location, whether it can be written), the folder lock, starting
or joining Ray (with the checks that refuse what the cluster cannot run), and the signals
that stop it.

Imported by the CLI at start: its module level imports no torch and no Ray.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from sd_tune import storage as store
from sd_tune.errors import UsageError


def preflight_data(trial) -> None:
    """Fail before Ray starts when the data is not there (one message, what to do)."""
    from sd_tune.data import load_dataset

    try:
        load_dataset(trial.dataset)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err


def exists_at(location: str) -> bool:
    """Whether something is at ``location``; a location that cannot be read is a usage error."""
    try:
        return store.exists(location)
    except (OSError, ValueError) as err:  # a bad URI, no such bucket, missing credentials
        raise UsageError(f"cannot read {location}: {err}") from err


def check_storage(location: str, what: str = "--storage") -> None:
    """Fail before Ray starts when nothing can be written at ``location``."""
    if (problem := store.probe_writable(store.root(location), what)) is not None:
        raise UsageError(problem)


@contextlib.contextmanager
def locked(folder: str, command: str) -> Iterator[None]:
    """Hold ``folder``'s lock for this command; another sd-tune in it is a usage error."""
    try:
        with store.locked(folder, command):
            yield
    except store.LockHeld as err:
        raise UsageError(f"{folder} {err}") from None


def start_ray(
    address: str | None,
    trial,
    storage: str,
    *,
    trials: int = 1,
    wait_s: float | None = None,
) -> tuple[int | None, float]:
    """Start or join Ray; refuse a trial whose workers the cluster can never hold (counting
    the nodes its autoscaler may add), wait for the nodes the autoscaler is to add when none
    up can hold a trial, check the GPU nodes' driver, and refuse a ``storage`` that not
    every node sees. Returns the trials to run at once when the autoscaler's nodes count
    (None: count the nodes up), and how long a trial waits for room for its workers after a
    node was lost (``--wait-for-nodes``; by default 1800 s with an autoscaler, which may
    replace the node, else 120 s) before it fails."""
    from sd_tune import autoscale, cluster, ray_train

    try:
        cluster.init_ray(address)
    except ConnectionError as err:
        raise UsageError(str(err)) from err
    catch_sigterm()  # ray.init makes SIGTERM exit at once; it stops cleanly instead
    nodes = cluster.node_resources()
    problem = cluster.resource_problem(trial, nodes)
    scaler = autoscale.find_autoscaler() if address or os.environ.get("RAY_ADDRESS") else None
    slots = None
    if scaler is not None:
        if scaler.node_types is None:
            plan = autoscale.blind_plan(trial, nodes, trials) if problem else None
        else:
            plan = autoscale.scale_plan(trial, nodes, scaler, trials)
            if plan.problem:
                raise UsageError(plan.problem)
        if plan is not None:
            if plan.add or plan.wait:
                print(plan.message, flush=True)
            slots = plan.concurrent
            if plan.wait:
                limit = autoscale.DEFAULT_WAIT_S if wait_s is None else wait_s
                print(f"waiting up to {limit:.0f} s for them (--wait-for-nodes)", flush=True)
                problem = autoscale.wait_for_nodes(trial, plan, limit)
    if problem is None and cluster.gpus_per_worker(trial) > 0:
        problem = autoscale.gpu_driver_problem()
    if problem is None:
        problem = cluster.storage_problem(storage)
    if problem:
        raise UsageError(problem)
    if wait_s is None:
        wait_s = autoscale.DEFAULT_WAIT_S if scaler is not None else ray_train.PLACEMENT_WAIT_S
    return slots, wait_s


INTERRUPTED: list[str] = []  # the signals that asked this process to stop


def on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (``ray job stop``, a scheduler) stops like Ctrl-C: Tune and Train save and
    stop; elsewhere it raises KeyboardInterrupt."""
    INTERRUPTED.append("SIGTERM")
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def catch_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
