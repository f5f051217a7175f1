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

A package: ``plan`` (the scale plan, no Ray calls), ``head`` (reading the autoscaler from the
head node), ``wait`` (the wait for added nodes, the GPU driver check).
"""

from __future__ import annotations

from sd_tune.autoscale.head import (
    HEAD_RESOURCE,
    INSPECT_TIMEOUT_S,
    LAUNCHER_CONFIG,
    STATUS_KEY,
    autoscaler_from_config,
    autoscaler_from_groups,
    failures_from_status,
    find_autoscaler,
    head_failures,
    inspect_head,
    is_readonly,
    launch_errors_from_log,
    pending_by_type,
    read_head,
    running_by_type,
)
from sd_tune.autoscale.plan import (
    DEFAULT_WAIT_S,
    UNLIMITED,
    Autoscaler,
    NodeType,
    Plan,
    addable,
    blind_plan,
    expected_trials,
    scale_plan,
    timeout_message,
)
from sd_tune.autoscale.wait import gpu_driver_problem, wait_for_nodes

__all__ = [
    "DEFAULT_WAIT_S",
    "HEAD_RESOURCE",
    "INSPECT_TIMEOUT_S",
    "LAUNCHER_CONFIG",
    "STATUS_KEY",
    "UNLIMITED",
    "Autoscaler",
    "NodeType",
    "Plan",
    "addable",
    "autoscaler_from_config",
    "autoscaler_from_groups",
    "blind_plan",
    "expected_trials",
    "failures_from_status",
    "find_autoscaler",
    "gpu_driver_problem",
    "head_failures",
    "inspect_head",
    "is_readonly",
    "launch_errors_from_log",
    "pending_by_type",
    "read_head",
    "running_by_type",
    "scale_plan",
    "timeout_message",
    "wait_for_nodes",
]
