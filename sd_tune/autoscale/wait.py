"""The wait for the nodes the autoscaler adds (one placement group per trial that should run at
once, removed once the first is placed), and the GPU nodes' driver check."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray

from sd_tune.autoscale.head import (
    INSPECT_TIMEOUT_S,
    head_failures,
    pending_by_type,
    read_head,
)
from sd_tune.autoscale.plan import (
    Plan,
    timeout_message,
)
from sd_tune.cluster import (
    alive_nodes,
    node_list,
    node_resources,
    on_each_node,
    worker_resources,
)
from sd_tune.config import TrialConfig


def wait_for_nodes(
    trial: TrialConfig,
    plan: Plan,
    timeout_s: float,
    say: Callable[[str], None] = print,
    poll_s: float = 2.0,
    report_every_s: float = 30.0,
) -> str | None:
    """Place ``plan.concurrent`` placement groups of the trial's workers (the demand Tune's
    pending trials make) and wait up to ``timeout_s`` for the first to be placed; remove them
    all before returning. Returns None when a trial's nodes are up, else the message."""
    from ray.util.placement_group import placement_group, remove_placement_group

    bundles = [worker_resources(trial)] * trial.resources.num_workers
    groups = [placement_group(bundles, strategy="PACK") for _ in range(max(1, plan.concurrent))]
    start = time.monotonic()
    last = start
    try:
        refs = [g.ready() for g in groups]
        while True:
            left = timeout_s - (time.monotonic() - start)
            ready, _ = ray.wait(refs, num_returns=1, timeout=max(0.0, min(poll_s, left)))
            if ready:
                up = node_resources()
                say(
                    f"nodes for a trial are up after {time.monotonic() - start:.0f} s "
                    f"({node_list(up)})"
                )
                return None
            if left <= 0:
                return timeout_message(
                    trial, plan, timeout_s, node_resources(), head_failures(read_head())
                )
            if time.monotonic() - last >= report_every_s:
                last = time.monotonic()
                say(_progress(time.monotonic() - start, read_head()))
    finally:
        for g in groups:
            remove_placement_group(g)


def _progress(elapsed: float, head: dict[str, Any] | None) -> str:
    status = (head or {}).get("status")
    pending = pending_by_type(status)
    what = ", ".join(f"{k} {name}" for name, k in pending.items()) or "nothing"
    fails = head_failures(head)
    return f"waiting for nodes: {elapsed:.0f} s, the autoscaler is launching {what}" + (
        f"; failures: {'; '.join(fails)}" if fails else ""
    )


def gpu_driver_problem(timeout_s: float = INSPECT_TIMEOUT_S) -> str | None:
    """:func:`sd_tune.gpu.node_driver_problem` on every alive node with GPUs (a zero-CPU
    task pinned to each), or None when every one can run this torch build. A node that does
    not answer (gone, or slower than ``timeout_s``) is left to the trial's own check."""
    from sd_tune.gpu import node_driver_problem

    nodes = [n for n in alive_nodes() if n.get("Resources", {}).get("GPU", 0) > 0]
    problems = on_each_node(node_driver_problem, nodes, timeout_s=timeout_s)
    for n in nodes:
        problem = problems[n["NodeID"]]
        if problem:
            return f"GPU node {n['NodeManagerAddress']} ({n['NodeID'][:8]}): {problem}"
    return None
