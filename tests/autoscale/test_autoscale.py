"""sd_tune.autoscale: the decisions on node types (plain data), then autoscaling from zero
nodes on a real autoscaler: Ray's fake multi-node provider runs the cluster launcher's
autoscaler on this machine (``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...``),
and every node it adds is a real raylet with logical CPUs and GPUs. ``sd-tune launch
--address`` reads the node types from the head, accepts a space that a node type can hold and
waits for the node, refuses one that none can, and turns a node that never comes into one
error. Only the head (1 CPU) is up when that cluster starts."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_cluster import free_ports, list_nodes, stop_tree

from sd_tune.autoscale import (
    Autoscaler,
    NodeType,
    autoscaler_from_config,
    expected_trials,
    head_failures,
    is_readonly,
    launch_errors_from_log,
    running_by_type,
    scale_plan,
)
from sd_tune.config import TrialConfig, make_trial

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
needs_fashion_mnist = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs Debian's dataset-fashion-mnist",
)


def trial(**resources: object) -> TrialConfig:
    return make_trial({"resources": resources})


A100 = NodeType("gpu_8x_a100", {"CPU": 96.0, "GPU": 8.0}, 4)
HEAD = [{"CPU": 8.0}]
IMAGENET = {"num_workers": 8, "use_gpu": True, "cpus_per_worker": 8}


def test_plan_from_zero_gpu_nodes_adds_one_node_per_imagenet_trial() -> None:
    plan = scale_plan(trial(**IMAGENET), HEAD, Autoscaler((A100,), max_workers=4), trials=16)
    assert plan.problem is None and plan.wait
    assert plan.add == {"gpu_8x_a100": 4} and plan.concurrent == 4
    assert len(plan.nodes) == 5 and concurrency_of(plan) == 4
    assert plan.message == (
        "the nodes up now (8 CPU) cannot hold one trial (8 workers x 8.0 CPU = 64.0 CPUs and 8 x "
        "1.0 GPU = 8.0 GPUs); the autoscaler is expected to add 4 gpu_8x_a100 nodes (96 CPU + 8 "
        "GPU), for 4 trials at a time"
    )
    # a cap on the search, and nodes already up, lower what is added
    capped = scale_plan(trial(**IMAGENET), HEAD, Autoscaler((A100,), max_workers=4), trials=2)
    assert capped.add == {"gpu_8x_a100": 2} and capped.concurrent == 2
    one_up = NodeType("gpu_8x_a100", {"CPU": 96.0, "GPU": 8.0}, 4, running=1)
    grown = scale_plan(
        trial(**IMAGENET),
        [*HEAD, {"CPU": 96.0, "GPU": 8.0}],
        Autoscaler((one_up,), max_workers=4),
        trials=16,
    )
    assert not grown.wait and grown.add == {"gpu_8x_a100": 3} and grown.concurrent == 4


def concurrency_of(plan) -> int:
    from sd_tune.cluster import worker_slots

    return worker_slots(trial(**IMAGENET), plan.nodes) // 8


def test_plan_respects_the_cluster_cap_and_refuses_with_numbers() -> None:
    small = NodeType("gpu_4x", {"CPU": 48.0, "GPU": 4.0}, 10)
    # 4-GPU nodes: a trial spans two of them (a worker needs one node, not the trial)
    plan = scale_plan(trial(**IMAGENET), HEAD, Autoscaler((small,), max_workers=3), trials=8)
    assert plan.problem is None and plan.add == {"gpu_4x": 3} and plan.concurrent == 1
    refused = scale_plan(trial(**IMAGENET), HEAD, Autoscaler((small,), max_workers=1))
    assert refused.problem is not None and refused.concurrent == 0
    assert refused.problem.startswith(
        "the trial needs 8 workers x 8.0 CPU = 64.0 CPUs and 8 x 1.0 GPU = 8.0 GPUs, and a "
        "worker (8 CPU + 1 GPU) must fit on one node, but the Ray cluster can never hold them: "
        "the nodes up now (8 CPU) hold 0 such workers, and its autoscaler may add only 1 x "
        "gpu_4x (4 each) (gpu_4x: 48 CPU + 4 GPU, up to 10 nodes; the autoscaler starts at most "
        "1 worker nodes)"
    )
    none = scale_plan(trial(**IMAGENET), HEAD, Autoscaler((NodeType("cpu", {"CPU": 64.0}, 9),)))
    assert "no node type of its autoscaler holds one (cpu: 64 CPU, up to 9 nodes)" in none.problem


def test_cpu_trials_leave_gpu_node_types_alone() -> None:
    cpu = NodeType("cpu_node", {"CPU": 2.0}, 2)
    gpu = NodeType("a_gpu_node", {"CPU": 2.0, "GPU": 2.0}, 2)
    plan = scale_plan(trial(num_workers=2), [{"CPU": 1.0}], Autoscaler((gpu, cpu)))
    assert plan.add == {"cpu_node": 1}
    gpu_plan = scale_plan(
        trial(num_workers=2, use_gpu=True), [{"CPU": 1.0}], Autoscaler((gpu, cpu))
    )
    assert gpu_plan.add == {"a_gpu_node": 1}


def test_node_types_from_a_launcher_config_and_the_status() -> None:
    config = yaml.safe_load((REPO / "launch" / "aws-gpu.yaml").read_text())
    status = {
        "autoscaler_report": {
            "active_nodes": {"head_cpu": 1, "gpu_8x_a100": 1},
            "pending_launches": {"gpu_8x_a100": 1},
        }
    }
    found = autoscaler_from_config(config, running_by_type(status), "test")
    assert found is not None and found.max_workers == 4
    assert [(t.name, t.max_workers, t.running) for t in found.node_types] == [
        ("gpu_8x_a100", 4, 1)
    ]  # a node still launching is among what may be added
    assert config["available_node_types"]["gpu_8x_a100"]["min_workers"] == 0
    plan = scale_plan(trial(**IMAGENET), [*HEAD, {"CPU": 96.0, "GPU": 8.0}], found, trials=16)
    assert plan.add == {"gpu_8x_a100": 3} and plan.concurrent == 4


def test_status_and_log_failures() -> None:
    status = {"autoscaler_report": {"active_nodes": {"node_" + "a" * 56: 1}}}
    assert is_readonly(status) and not is_readonly(
        {"autoscaler_report": {"active_nodes": {"head_cpu": 1}}}
    )
    log = (
        "2026-01-01 00:00:00,1\tINFO node_launcher.py:177 -- NodeLauncher0: Failed to launch "
        "{} node(s) of type gpu_8x_a100. (UnauthorizedOperation): You are not authorized to "
        "perform this operation. User: arn:aws:sts::1:assumed-role/sd-tune-head is not "
        "authorized to perform: iam:PassRole\n"
    )
    assert launch_errors_from_log(log) == [
        "gpu_8x_a100: UnauthorizedOperation: You are not authorized to perform this operation. "
        "User: arn:aws:sts::1:assumed-role/sd-tune-head is not authorized to perform: "
        "iam:PassRole"
    ]
    head = {"status": None, "launch_errors": launch_errors_from_log(log)}
    assert head_failures(head) == launch_errors_from_log(log)


def test_expected_trials() -> None:
    assert expected_trials(3, None) == 3 and expected_trials(16, 2) == 2
    assert expected_trials(1, 0) == 1


# The node types: CPU nodes for the search that runs, a GPU node (logical GPUs, no driver) for
# the GPU side, and a GPU type whose nodes can never start (an object store of 1 byte makes
# the provider's `ray start` fail), for the wait that ends in an error.
NODE_TYPES = {
    "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
    "cpu_node": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 2},
    "gpu_node": {
        "resources": {"CPU": 2, "GPU": 2},
        "node_config": {},
        "min_workers": 0,
        "max_workers": 1,
    },
    "broken_gpu_node": {
        "resources": {"CPU": 2, "GPU": 8, "object_store_memory": 1},
        "node_config": {},
        "min_workers": 0,
        "max_workers": 1,
    },
}


@dataclass
class FakeCluster:
    gcs: str
    env: dict[str, str]
    root: Path


def fake_config(gcs_port: int) -> dict:
    return {
        "cluster_name": "sdt-autoscale",
        "max_workers": 4,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.5,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{gcs_port}",
        },
        "available_node_types": NODE_TYPES,
        "head_node_type": "ray.head.default",
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


# --------------------------------------------------------------------------- a real autoscaler


@pytest.fixture(scope="module")
def fake_cluster() -> Iterator[FakeCluster]:
    root = Path(tempfile.mkdtemp(prefix="sdt-as-", dir="/tmp"))
    gcs, dash, client, agent, metrics = free_ports(5)
    config = root / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(fake_config(gcs)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        # on SIGTERM a node drains for up to this long before it stops (Ray's default, 30 s,
        # was most of this module's teardown)
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="2",
        PYTHONUNBUFFERED="1",
    )
    head_env = {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        "1",
        "--port",
        str(gcs),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dash),
        "--ray-client-server-port",
        str(client),
        "--dashboard-agent-listen-port",
        str(agent),
        "--metrics-export-port",
        str(metrics),
        "--temp-dir",
        str(root / "t"),
        f"--autoscaling-config={config}",
        "--disable-usage-stats",
    ]
    dashboard = f"http://127.0.0.1:{dash}"
    procs: list[subprocess.Popen] = []
    try:
        with open(root / "head.log", "w") as out:
            procs.append(
                subprocess.Popen(
                    cmd, env=head_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        deadline = time.monotonic() + 120
        while not list_nodes(dashboard, env):
            assert procs[0].poll() is None, (root / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the head did not come up"
            time.sleep(2)
        yield FakeCluster(f"127.0.0.1:{gcs}", env, root)
    finally:
        stop_tree(procs, root, group=True)  # the provider's nodes are in the head's session


def launch(
    cluster: FakeCluster, tmp_path: Path, space: str, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "space.yaml"
    if "\nspace:" not in f"\n{space}":  # launch refuses a space that searches nothing
        space += "space: {stochastic_depth.drop_rate: {uniform: [0.0, 0.5]}}\n"
    path.write_text(space)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sd_tune.cli",
            "launch",
            "--space",
            str(path),
            "--storage",
            str(tmp_path / "store"),
            "--address",
            cluster.gcs,
            *args,
        ],
        cwd=REPO,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


SMOKE = (REPO / "search_spaces" / "smoke.yaml").read_text()


@pytest.mark.slow
@needs_fashion_mnist
def test_cpu_trial_waits_for_the_node_the_autoscaler_adds_and_runs_there(
    fake_cluster: FakeCluster, tmp_path: Path
) -> None:
    # 2 workers x 1 CPU: the 1-CPU head holds one, so one cpu_node (2 CPUs) must be added.
    out = launch(
        fake_cluster,
        tmp_path,
        SMOKE.replace("num_samples: 3", "num_samples: 1"),
        "--wait-for-nodes",
        "120",
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (
        "the nodes up now (1 CPU) cannot hold one trial (2 workers x 1.0 CPU = 2.0 CPUs); "
        "the autoscaler is expected to add 1 cpu_node node (2 CPU), for 1 trial at a time"
        in out.stdout
    )
    assert "waiting up to 120 s for them (--wait-for-nodes)" in out.stdout
    assert "nodes for a trial are up after" in out.stdout
    trials = json.loads((tmp_path / "store" / "smoke" / "trials.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["completed"]
    head = "f" * 51 + "00000"  # the fake provider's fixed head node id
    assert any(n != head for n in trials[0]["worker_node_ids"]), trials[0]


@pytest.mark.slow
@needs_fashion_mnist
def test_gpu_trial_gets_its_gpu_node_and_then_the_driver_check(
    fake_cluster: FakeCluster, tmp_path: Path
) -> None:
    # A gpu_node (2 logical GPUs) is added; this machine has no NVIDIA driver, which the
    # check on the GPU node reports before any trial starts.
    out = launch(
        fake_cluster,
        tmp_path,
        "name: gpu\nresources: {num_workers: 2, use_gpu: true}\n",
        "--wait-for-nodes",
        "120",
    )
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    assert "the autoscaler is expected to add 1 gpu_node node (2 CPU + 2 GPU)" in out.stdout
    assert "nodes for a trial are up after" in out.stdout
    error = out.stderr.strip().splitlines()
    assert len(error) == 1 and "Traceback" not in out.stderr, out.stderr
    assert error[0].startswith("sd-tune launch: error: GPU node ")
    assert "no NVIDIA driver on this node (libcuda.so.1 cannot be loaded)" in error[0]
    assert not list((tmp_path / "store").glob("gpu/trial_*"))


@pytest.mark.slow
@needs_fashion_mnist
def test_a_trial_no_node_type_can_hold_is_refused_with_the_numbers(
    fake_cluster: FakeCluster, tmp_path: Path
) -> None:
    started = time.monotonic()
    out = launch(
        fake_cluster,
        tmp_path,
        "name: huge\nresources: {num_workers: 2, use_gpu: true, gpus_per_worker: 16}\n",
    )
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    error = out.stderr.strip().splitlines()
    assert len(error) == 1 and "Traceback" not in out.stderr, out.stderr
    assert (
        "the trial needs 2 workers x 1.0 CPU = 2.0 CPUs and 2 x 16.0 GPU = 32.0 GPUs, and "
        "a worker (1 CPU + 16 GPU) must fit on one node, but the Ray cluster can never hold "
        "them: the nodes up now (" in error[0]
    )
    assert "hold 0 such workers, and no node type of its autoscaler holds one (" in error[0]
    for described in (
        "cpu_node: 2 CPU, up to 2 nodes",
        "gpu_node: 2 CPU + 2 GPU, up to 1 node",
        "broken_gpu_node: 2 CPU + 8 GPU, up to 1 node;",
    ):
        assert described in error[0], error[0]
    assert "the autoscaler starts at most 4 worker nodes" in error[0]
    assert time.monotonic() - started < 60
    assert "waiting" not in out.stdout


@pytest.mark.slow
@needs_fashion_mnist
def test_a_node_that_never_comes_up_ends_the_wait_with_one_error(
    fake_cluster: FakeCluster, tmp_path: Path
) -> None:
    # 2 workers x 4 GPUs: only broken_gpu_node (8 GPUs) holds them, and it never starts.
    out = launch(
        fake_cluster,
        tmp_path,
        "name: never\nresources: {num_workers: 2, use_gpu: true, gpus_per_worker: 4}\n",
        "--wait-for-nodes",
        "20",
    )
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    assert "the autoscaler is expected to add 1 broken_gpu_node node (2 CPU + 8 GPU)" in out.stdout
    error = out.stderr.strip().splitlines()
    assert len(error) == 1 and "Traceback" not in out.stderr, out.stderr
    assert error[0].startswith(
        "sd-tune launch: error: no node for a trial (2 workers x 1.0 "
        "CPU = 2.0 CPUs and 2 x 4.0 GPU = 8.0 GPUs) came up within 20 s "
        "(--wait-for-nodes): the autoscaler was to add 1 broken_gpu_node "
        "node"
    )
    assert (
        "the autoscaler reports: broken_gpu_node: ValueError: Attempting to cap object "
        "store memory usage at 1 bytes" in error[0]
    ), error[0]
    assert "`ray status`" in error[0]
