"""The scale plan: which node types an autoscaler can add for a search whose trials the nodes up
now cannot hold, how many trials then run at once, and the message when the wait ends. No Ray
calls: plain data in, plain data out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sd_tune.cluster import (
    gpus_per_worker,
    node_list,
    worker_resources,
    worker_slots,
)
from sd_tune.config import TrialConfig

UNLIMITED = 1 << 20  # a node type without a maximum


DEFAULT_WAIT_S = 1800.0  # --wait-for-nodes: a p4d/a2 node boots and installs in ~10 min


@dataclass(frozen=True)
class NodeType:
    """A node type the autoscaler may start: resources of one node, how many it may run, and
    how many it runs or is launching now."""

    name: str
    resources: dict[str, float]
    max_workers: int
    running: int = 0

    def describe(self) -> str:
        """``"gpu_8x_a100: 96 CPU + 8 GPU"``."""
        return f"{self.name}: {node_list([self.resources])}"


@dataclass(frozen=True)
class Autoscaler:
    """What the driver sees of the cluster's autoscaler: its node types (None when they cannot
    be read from here) and its cap on worker nodes of all types together (None: no cap)."""

    node_types: tuple[NodeType, ...] | None
    max_workers: int | None = None
    source: str = ""


@dataclass
class Plan:
    """What ``sd-tune`` expects of the autoscaler for a search: nodes to add per type, the
    cluster once they are up (what concurrency is counted on), and the trials at once."""

    add: dict[str, int]
    nodes: list[dict[str, float]]
    concurrent: int
    message: str
    problem: str | None = None
    wait: bool = True  # whether the nodes up now cannot hold one trial
    types: dict[str, NodeType] = field(default_factory=dict)


def _preference(trial: TrialConfig, t: NodeType) -> tuple:
    """How Ray's autoscaler ranks node types for a request, roughly: it keeps GPU nodes for
    GPU work, then prefers the node the request fills most (min, then mean utilisation)."""
    slots = worker_slots(trial, [t.resources])
    need = {k: v for k, v in worker_resources(trial).items() if v > 0}
    used = [min(1.0, slots * v / t.resources[k]) for k, v in need.items() if t.resources.get(k)]
    wastes_gpus = "GPU" not in need and t.resources.get("GPU", 0) > 0
    return (wastes_gpus, -min(used, default=0.0), -sum(used) / max(1, len(used)), -slots, t.name)


def addable(trial: TrialConfig, scaler: Autoscaler) -> list[tuple[NodeType, int]]:
    """(node type, how many more the autoscaler may start) for the types that hold at least
    one of the trial's workers, in the order Ray's autoscaler would pick them (GPU nodes only
    for GPU trials, fullest first); the cluster's cap on worker nodes is shared among them in
    that order.

    >>> t = TrialConfig()  # 2 workers x 1 CPU
    >>> big, small = NodeType("big", {"CPU": 4.0}, 3, running=1), NodeType("s", {"CPU": 1.0}, 5)
    >>> gpu = NodeType("gpu", {"CPU": 2.0, "GPU": 1.0}, 4)
    >>> [(n.name, k) for n, k in addable(t, Autoscaler((small, gpu, big), max_workers=4))]
    [('big', 2), ('s', 1)]
    """
    types = [t for t in scaler.node_types or () if worker_slots(trial, [t.resources]) > 0]
    types.sort(key=lambda t: _preference(trial, t))
    running = sum(t.running for t in scaler.node_types or ())
    room = UNLIMITED if scaler.max_workers is None else max(0, scaler.max_workers - running)
    out = []
    for t in types:
        more = min(max(0, t.max_workers - t.running), room)
        if more:
            out.append((t, more))
            room -= more
    return out


def _trial_needs(trial: TrialConfig) -> str:
    r = trial.resources
    parts = [
        f"{r.num_workers} workers x {r.cpus_per_worker} CPU = "
        f"{r.num_workers * r.cpus_per_worker} CPUs"
    ]
    gpus = gpus_per_worker(trial)
    if gpus:
        parts.append(f"{r.num_workers} x {gpus} GPU = {r.num_workers * gpus} GPUs")
    return " and ".join(parts)


def scale_plan(
    trial: TrialConfig, nodes: Sequence[dict[str, float]], scaler: Autoscaler, trials: int = 1
) -> Plan:
    """How the autoscaler gets the cluster (``nodes``: each alive node's total resources) to
    ``trials`` trials at once, or, in ``problem``, why no node type could ever hold a trial.

    >>> t = TrialConfig()  # 2 workers x 1 CPU
    >>> gpu = Autoscaler((NodeType("cpu4", {"CPU": 4.0}, 2),))
    >>> p = scale_plan(t, [{"CPU": 1.0}], gpu, trials=3)
    >>> p.add, p.concurrent, p.problem
    ({'cpu4': 2}, 3, None)
    >>> print(scale_plan(t, [{"CPU": 1.0}], Autoscaler((NodeType("s", {"CPU": 0.5}, 4),))).problem)
    ... # doctest: +NORMALIZE_WHITESPACE
    the trial needs 2 workers x 1.0 CPU = 2.0 CPUs, and a worker (1 CPU) must fit on one node,
    but the Ray cluster can never hold them: the nodes up now (1 CPU) hold 1 such worker, and no
    node type of its autoscaler holds one (s: 0.5 CPU, up to 4 nodes); lower
    resources.num_workers, cpus_per_worker or gpus_per_worker, or give the cluster's
    autoscaler a node type that holds a worker (available_node_types in the launcher config)
    """
    r = trial.resources
    nodes = [dict(n) for n in nodes]
    slots_now = worker_slots(trial, nodes)
    types = {t.name: t for t in scaler.node_types or ()}
    more = addable(trial, scaler)
    slots_max = slots_now + sum(worker_slots(trial, [t.resources]) * k for t, k in more)
    wait = slots_now < r.num_workers
    if slots_max < r.num_workers:
        worker = node_list([worker_resources(trial)])
        listed = "; ".join(
            f"{t.describe()}, up to {t.max_workers} node"
            + ("s" if t.max_workers != 1 else "")
            + (f", {t.running} up" if t.running else "")
            for t in scaler.node_types or ()
        )
        held = (
            "no node type of its autoscaler holds one"
            if not more
            else "its autoscaler may add only "
            + ", ".join(
                f"{k} x {t.name} ({worker_slots(trial, [t.resources])} each)" for t, k in more
            )
        )
        cap = (
            f"; the autoscaler starts at most {scaler.max_workers} worker nodes"
            if scaler.max_workers is not None
            else ""
        )
        problem = (
            f"the trial needs {_trial_needs(trial)}, and a worker ({worker}) must fit "
            f"on one node, but the Ray cluster can never hold them: the nodes up now "
            f"({node_list(nodes)}) hold {slots_now} such worker"
            f"{'s' if slots_now != 1 else ''}, and {held} ({listed or 'none'}{cap}); "
            f"lower resources.num_workers, cpus_per_worker or gpus_per_worker, or give "
            f"the cluster's autoscaler a node type that holds a worker "
            f"(available_node_types in the launcher config)"
        )
        return Plan({}, nodes, 0, "", problem, wait, types)
    need = max(1, trials) * r.num_workers
    add: dict[str, int] = {}
    slots = slots_now
    planned = list(nodes)
    for t, k in more:
        per = worker_slots(trial, [t.resources])
        while k and slots < need:
            add[t.name] = add.get(t.name, 0) + 1
            planned.append(dict(t.resources))
            slots += per
            k -= 1
    concurrent = max(1, min(max(1, trials), slots // r.num_workers))
    added = ", ".join(
        f"{k} {name} node{'s' if k > 1 else ''} ({node_list([types[name].resources])})"
        for name, k in add.items()
    )
    now = (
        f"the nodes up now ({node_list(nodes)}) cannot hold one trial ({_trial_needs(trial)})"
        if wait
        else f"the nodes up now ({node_list(nodes)}) hold {slots_now // r.num_workers}"
        f" trial{'s' if slots_now // r.num_workers != 1 else ''} at once"
    )
    if add:
        message = (
            f"{now}; the autoscaler is expected to add {added}, for {concurrent} "
            f"trial{'s' if concurrent != 1 else ''} at a time"
        )
    else:
        message = f"{now}; no node needs to be added"
    return Plan(add, planned, concurrent, message, None, wait, types)


def blind_plan(trial: TrialConfig, nodes: Sequence[dict[str, float]], trials: int) -> Plan:
    """The plan when an autoscaler runs but its node types cannot be read from here: wait for
    it, and count concurrency on the nodes up once the first trial fits."""
    message = (
        f"the nodes up now ({node_list(nodes)}) cannot hold one trial "
        f"({_trial_needs(trial)}); the cluster has an autoscaler whose node types "
        f"cannot be read from here, so sd-tune asks it for {max(1, trials)} "
        f"trial{'s' if trials != 1 else ''}' workers and waits"
    )
    return Plan({}, [dict(n) for n in nodes], max(1, trials), message)


def timeout_message(
    trial: TrialConfig,
    plan: Plan,
    waited_s: float,
    nodes: Sequence[dict[str, float]],
    failures: Sequence[str],
) -> str:
    """The error when the nodes for a trial did not come up within the wait.

    >>> t = TrialConfig()
    >>> p = Plan({"cpu4": 1}, [], 1, "")
    >>> print(timeout_message(t, p, 600, [{"CPU": 1.0}], ["cpu4: InsufficientInstanceCapacity"]))
    ... # doctest: +NORMALIZE_WHITESPACE
    no node for a trial (2 workers x 1.0 CPU = 2.0 CPUs) came up within 600 s (--wait-for-nodes):
    the autoscaler was to add 1 cpu4 node, and the nodes up are 1 CPU; the autoscaler reports:
    cpu4: InsufficientInstanceCapacity. Check `ray status` on the head and the autoscaler's log
    (/tmp/ray/session_latest/logs/monitor.*): cloud quotas for the instance type, the IAM
    permissions of the head node, the zone's capacity (launch/README.md, "Before you spend
    money"); or raise --wait-for-nodes
    """
    asked = ", ".join(f"{k} {name} node{'s' if k > 1 else ''}" for name, k in plan.add.items())
    report = "; ".join(failures) if failures else "no failed launch"
    return (
        f"no node for a trial ({_trial_needs(trial)}) came up within {waited_s:.0f} s "
        f"(--wait-for-nodes): the autoscaler was to add {asked or 'nodes for it'}, and the "
        f"nodes up are {node_list(nodes)}; the autoscaler reports: {report}. Check `ray "
        f"status` on the head and the autoscaler's log (/tmp/ray/session_latest/logs/"
        f"monitor.*): cloud quotas for the instance type, the IAM permissions of the head "
        f'node, the zone\'s capacity (launch/README.md, "Before you spend money"); or '
        f"raise --wait-for-nodes"
    )


def expected_trials(num_samples: int, max_concurrent: int | None) -> int:
    """How many trials a search wants at once: every sample, capped by the search's limit.

    >>> expected_trials(16, None), expected_trials(16, 2)
    (16, 2)
    """
    cap = num_samples if max_concurrent is None else min(num_samples, max_concurrent)
    return max(1, cap)
