"""What a Ray cluster can grow into: its autoscaler's node types, the plan for a search whose
trials the nodes up now cannot hold, the wait for the nodes the autoscaler adds, and the GPU
nodes' driver check.

Ray 2.60 gives a driver no API for the autoscaler's node types. sd-tune reads them, in a
zero-CPU task on the head node, from the first of:

1. the GCS cluster config (``ray._private.state.state.get_cluster_config()``, the source Ray
   Train's own resource check uses; Ray 2.60's autoscalers do not fill it in yet);
2. the autoscaler's own config file: the ``--autoscaling-config`` of the autoscaler process
   (``monitor.py``) of this cluster, found by its GCS port; the cluster launcher's is
   ``~/ray_bootstrap_config.yaml``, which Tune checks too;

and how many nodes of each type are up or launching from the autoscaler's status (the JSON
that ``ray status`` reads). An autoscaler whose config cannot be read from the head (KubeRay
runs it in a sidecar) is still detected from that status: sd-tune then waits for the nodes
without knowing in advance whether any node type fits.

The wait does what Tune's pending trials do: it places one placement group per trial that
should run at once (the workers' bundles, PACK, as Ray Train places them), so the autoscaler
sees the demand and launches the nodes together, and removes them once the first is placed.
Unlike ``ray.autoscaler.sdk.request_resources``, whose request outlives the driver and keeps
the nodes up until it is cleared, a placement group goes with the driver that made it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import yaml

from sd_tune.cluster import (
    alive_nodes,
    gpus_per_worker,
    node_list,
    node_resources,
    on_each_node,
    worker_resources,
    worker_slots,
)
from sd_tune.config import TrialConfig

HEAD_RESOURCE = "node:__internal_head__"
STATUS_KEY = "__autoscaling_status"  # ray._private.ray_constants.DEBUG_AUTOSCALING_STATUS
LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts it on the head
DEFAULT_WAIT_S = 1800.0  # --wait-for-nodes: a p4d/a2 node boots and installs in ~10 min
INSPECT_TIMEOUT_S = 60.0
UNLIMITED = 1 << 20  # a node type without a maximum
_READONLY_TYPE = re.compile(r"node_[0-9a-f]{16,}")  # a cluster without an autoscaling config


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


# --------------------------------------------------------------------------- pure decisions


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


def _count(value: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in (value or {}).items()}


def _autoscaler_report(status: dict[str, Any] | None) -> dict[str, Any]:
    return (status or {}).get("autoscaler_report") or {}


def running_by_type(status: dict[str, Any] | None) -> dict[str, int]:
    """Nodes of each type up (whose raylet reports), from the autoscaler's status JSON. Nodes
    still launching are not counted: they are among what the autoscaler may add.

    >>> running_by_type({"autoscaler_report": {"active_nodes": {"head": 1, "gpu": 1},
    ...     "pending_nodes": [["10.0.0.3", "gpu", "setting-up"]], "pending_launches": {"gpu": 1}}})
    {'head': 1, 'gpu': 1}
    """
    report = _autoscaler_report(status)
    return _count(report.get("active_nodes"))


def pending_by_type(status: dict[str, Any] | None) -> dict[str, int]:
    """Nodes of each type the autoscaler is launching or setting up.

    >>> pending_by_type({"autoscaler_report": {"pending_nodes": [["10.0.0.3", "gpu", "setup"]],
    ...                                        "pending_launches": {"gpu": 1}}})
    {'gpu': 2}
    """
    report = _autoscaler_report(status)
    out: dict[str, int] = {}
    for _ip, name, _state in report.get("pending_nodes") or []:
        out[name] = out.get(name, 0) + 1
    for name, k in _count(report.get("pending_launches")).items():
        out[name] = out.get(name, 0) + k
    return out


def failures_from_status(status: dict[str, Any] | None) -> list[str]:
    """The autoscaler's launch failures, one line per node type (its availability records
    carry the cloud's error, e.g. an IAM or quota refusal).

    >>> failures_from_status({"autoscaler_report": {"failed_nodes": [["10.0.0.9", "gpu"]],
    ...     "node_availability_summary": {"node_availabilities": {"gpu": {"is_available": False,
    ...     "unavailable_node_information": {"category": "UnauthorizedOperation",
    ...     "description": "not authorized to perform: iam:PassRole"}}}}}})
    ['gpu: UnauthorizedOperation: not authorized to perform: iam:PassRole', '1 gpu node failed']
    """
    report = _autoscaler_report(status)
    out = []
    avail = (report.get("node_availability_summary") or {}).get("node_availabilities") or {}
    for name, record in sorted(avail.items()):
        info = (record or {}).get("unavailable_node_information") or {}
        if record and not record.get("is_available", True) and info:
            out.append(f"{name}: {info.get('category', '?')}: {info.get('description', '')}")
    failed: dict[str, int] = {}
    for _ip, name in report.get("failed_nodes") or []:
        failed[name] = failed.get(name, 0) + 1
    out += [f"{k} {name} node{'s' if k > 1 else ''} failed" for name, k in failed.items()]
    return out


_LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_FAILED = re.compile(r"Failed to launch \S+ node\(s\) of type (\S+?)\.?(?: \((.*)\): (.*))?$")


def launch_errors_from_log(text: str) -> list[str]:
    r"""The last launch failure of each node type in the autoscaler's log (``monitor.log``):
    the cloud's error when the provider gave one, else the last line of the traceback that
    the autoscaler logged after it.

    >>> print(launch_errors_from_log(
    ...     "2026-01-01 00:00:00,1\tINFO node_launcher.py:177 -- NodeLauncher0: Failed to "
    ...     "launch {} node(s) of type gpu.\n2026-01-01 00:00:00,2\tINFO node_launcher.py:177 "
    ...     "-- NodeLauncher0: Traceback (most recent call last):\n  File \"x.py\", line 1\n"
    ...     "ValueError: no such image\n\n2026-01-01 00:00:01,0\tINFO autoscaler.py:1 -- ok\n"))
    ['gpu: ValueError: no such image']
    """
    errors: dict[str, str] = {}
    current: str | None = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        found = _FAILED.search(line)
        if found:
            current = found.group(1)
            if found.group(2):
                errors[current] = f"{current}: {found.group(2)}: {found.group(3)}"
                current = None
            continue
        if current and "Traceback (most recent call last)" in line:
            last = ""
            for follow in lines[i + 1 :]:
                if _LOG_RECORD.match(follow):
                    break
                if follow.strip() and not follow.startswith((" ", "\t")):
                    last = follow.strip()
            if last:
                errors[current] = f"{current}: {last}"
            current = None
    return list(errors.values())


def autoscaler_from_config(
    config: dict[str, Any], running: dict[str, int], source: str
) -> Autoscaler | None:
    """The :class:`Autoscaler` a cluster-launcher config describes, with ``running`` nodes per
    type (the head counted among its type), or None when it names no node type that can be
    added.

    >>> cfg = {"max_workers": 4, "head_node_type": "head", "available_node_types": {
    ...     "head": {"resources": {"CPU": 8}, "max_workers": 0},
    ...     "gpu": {"resources": {"CPU": 96, "GPU": 8}, "min_workers": 0, "max_workers": 2}}}
    >>> a = autoscaler_from_config(cfg, {"head": 1}, "file")
    >>> [(t.name, t.max_workers, t.running) for t in a.node_types], a.max_workers
    ([('gpu', 2, 0)], 4)
    """
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    out = []
    for name, spec in types.items():
        spec = spec or {}
        resources = spec.get("resources")
        if not isinstance(resources, dict):
            continue  # a type the provider sizes itself: unknown here
        up = running.get(name, 0) - (1 if name == head else 0)
        max_workers = int(spec.get("max_workers", 0) or 0)
        if max_workers <= 0:
            continue
        out.append(
            NodeType(name, {k: float(v) for k, v in resources.items()}, max_workers, max(0, up))
        )
    if not out:
        return None
    cap = config.get("max_workers")
    return Autoscaler(tuple(out), None if cap is None else int(cap), source)


def autoscaler_from_groups(groups: Sequence[dict[str, Any]], source: str) -> Autoscaler | None:
    """The :class:`Autoscaler` of the GCS cluster config's node groups (``name``,
    ``resources``, ``max_count``; -1 is no maximum).

    >>> a = autoscaler_from_groups([{"name": "gpu", "resources": {"GPU": 8, "CPU": 96},
    ...                              "max_count": -1}], "gcs")
    >>> a.node_types[0].max_workers == UNLIMITED
    True
    """
    out = []
    for g in groups:
        count = int(g.get("max_count", 0))
        if count == 0 or not g.get("resources"):
            continue
        out.append(
            NodeType(
                str(g.get("name") or "group"),
                {k: float(v) for k, v in g["resources"].items()},
                UNLIMITED if count < 0 else count,
            )
        )
    return Autoscaler(tuple(out), None, source) if out else None


# --------------------------------------------------------------------------- what the head sees


def _arg(cmd: Sequence[str], name: str) -> str | None:
    return next((c.split("=", 1)[1] for c in cmd if c.startswith(f"--{name}=")), None)


def _monitor_config(gcs_port: str) -> tuple[bool, str | None, str | None]:
    """(whether this cluster's autoscaler process runs here, its --autoscaling-config, its
    --logs-dir)."""
    import psutil

    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmd = proc.info.get("cmdline") or []
        if not any(c.endswith("monitor.py") and "autoscaler" in c for c in cmd):
            continue
        if not any(c.startswith("--gcs-address=") and c.endswith(f":{gcs_port}") for c in cmd):
            continue
        path = _arg(cmd, "autoscaling-config")
        if path:
            path = os.path.expanduser(path)
            if not os.path.isabs(path) and proc.info.get("cwd"):
                path = os.path.join(proc.info["cwd"], path)
        return True, path, _arg(cmd, "logs-dir")
    return False, None, None


def _log_tail(path: Path, size: int = 1 << 18) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def inspect_head(gcs_address: str) -> dict[str, Any]:
    """Runs on the head node: the GCS cluster config, the autoscaler's status JSON, and its
    config (plain data for the driver)."""
    from ray.experimental.internal_kv import _internal_kv_get

    out: dict[str, Any] = {
        "groups": None,
        "status": None,
        "monitor": False,
        "path": None,
        "config": None,
        "v2": False,
        "error": None,
        "launch_errors": [],
    }
    try:
        from ray._private import state

        cc = state.state.get_cluster_config()
        if cc is not None and len(cc.node_group_configs):
            out["groups"] = [
                {"name": g.name, "resources": dict(g.resources), "max_count": int(g.max_count)}
                for g in cc.node_group_configs
            ]
    except Exception as err:  # an older or newer Ray without it: the other sources remain
        out["error"] = f"cluster config: {err}"
    raw = _internal_kv_get(STATUS_KEY)
    if raw:
        out["status"] = json.loads(raw)
    v2 = _internal_kv_get(
        ray._raylet.GCS_AUTOSCALER_V2_ENABLED_KEY,
        namespace=ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE,
    )
    out["v2"] = v2 == b"1"
    gcs_address = gcs_address or ray.get_runtime_context().gcs_address
    out["monitor"], path, logs = _monitor_config(gcs_address.rsplit(":", 1)[-1])
    if logs:
        out["launch_errors"] = launch_errors_from_log(_log_tail(Path(logs, "monitor.log")))
    if not out["monitor"] and Path(LAUNCHER_CONFIG).expanduser().is_file():
        path = str(Path(LAUNCHER_CONFIG).expanduser())
    if path:
        out["path"] = path
        try:
            out["config"] = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            out["error"] = f"{path}: {err}"
    return out


def _head_node_id() -> str | None:
    for n in alive_nodes():
        if HEAD_RESOURCE in n.get("Resources", {}):
            return n["NodeID"]
    return None


def read_head() -> dict[str, Any] | None:
    """:func:`inspect_head`, run in a zero-CPU task on the head node (None if it cannot)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = _head_node_id()
    if head is None:
        return None
    try:
        gcs = ray.get_runtime_context().gcs_address
    except Exception:  # Ray Client: the head's task finds the port itself
        gcs = ""
    task = ray.remote(num_cpus=0)(inspect_head).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)
    )
    try:
        return ray.get(task.remote(gcs), timeout=INSPECT_TIMEOUT_S)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError):
        return None


def is_readonly(status: dict[str, Any] | None) -> bool:
    """Whether the status is that of Ray's read-only autoscaler (a cluster started without an
    autoscaling config: each node its own type ``node_<id>``, nothing can be added)."""
    active = _autoscaler_report(status).get("active_nodes") or {}
    return bool(active) and all(_READONLY_TYPE.fullmatch(name) for name in active)


def find_autoscaler(head: dict[str, Any] | None = None) -> Autoscaler | None:
    """The connected cluster's autoscaler as the head sees it, or None when it has none."""
    head = read_head() if head is None else head
    if head is None:
        return None
    if head.get("groups"):
        found = autoscaler_from_groups(head["groups"], "the GCS cluster config")
        if found:
            return found
    status = head.get("status")
    if head.get("config"):
        return autoscaler_from_config(
            head["config"], running_by_type(status), f"the autoscaler's config {head.get('path')}"
        )
    if head.get("monitor"):
        return None  # its autoscaler process runs here without a config: read-only
    if (status and status.get("autoscaler_report") and not is_readonly(status)) or head.get("v2"):
        return Autoscaler(None, None, "the autoscaler's status (its config is not on the head)")
    return None


# --------------------------------------------------------------------------- the wait


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


def head_failures(head: dict[str, Any] | None) -> list[str]:
    """The launch failures the autoscaler reports (its status, else its log)."""
    found = failures_from_status((head or {}).get("status"))
    kinds = {f.split(":", 1)[0] for f in found}
    logged = [e for e in (head or {}).get("launch_errors") or [] if e.split(":", 1)[0] not in kinds]
    return found + logged


def _progress(elapsed: float, head: dict[str, Any] | None) -> str:
    status = (head or {}).get("status")
    pending = pending_by_type(status)
    what = ", ".join(f"{k} {name}" for name, k in pending.items()) or "nothing"
    fails = head_failures(head)
    return f"waiting for nodes: {elapsed:.0f} s, the autoscaler is launching {what}" + (
        f"; failures: {'; '.join(fails)}" if fails else ""
    )


# --------------------------------------------------------------------------- GPU drivers


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


def expected_trials(num_samples: int, max_concurrent: int | None) -> int:
    """How many trials a search wants at once: every sample, capped by the search's limit.

    >>> expected_trials(16, None), expected_trials(16, 2)
    (16, 2)
    """
    cap = num_samples if max_concurrent is None else min(num_samples, max_concurrent)
    return max(1, cap)
