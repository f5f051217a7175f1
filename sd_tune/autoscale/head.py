"""Reading the autoscaler from the head node: its node types (the GCS cluster config, or the
autoscaler's own config file found by its GCS port), the nodes up, launching and failed (the
JSON ``ray status`` reads), and its launch errors from its log."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
import yaml

from sd_tune.autoscale.plan import (
    UNLIMITED,
    Autoscaler,
    NodeType,
)
from sd_tune.cluster import (
    alive_nodes,
)

HEAD_RESOURCE = "node:__internal_head__"


STATUS_KEY = "__autoscaling_status"  # ray._private.ray_constants.DEBUG_AUTOSCALING_STATUS


LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts it on the head


INSPECT_TIMEOUT_S = 60.0


_READONLY_TYPE = re.compile(r"node_[0-9a-f]{16,}")  # a cluster without an autoscaling config


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


def head_failures(head: dict[str, Any] | None) -> list[str]:
    """The launch failures the autoscaler reports (its status, else its log)."""
    found = failures_from_status((head or {}).get("status"))
    kinds = {f.split(":", 1)[0] for f in found}
    logged = [e for e in (head or {}).get("launch_errors") or [] if e.split(":", 1)[0] not in kinds]
    return found + logged
