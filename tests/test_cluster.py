"""sd_tune/cluster.py: the checks before any trial, as plain functions (the end of this file),
and sd-tune on a real multi-node Ray cluster: two nodes on this machine's loopback, started
with `ray start` (token authentication on, as Ray 2.60 does), jobs sent with `ray job submit`
and with `launch/submit.sh`, a search through Ray Client (`ray://`), and `--address` checks
against the cluster's resources and storage. The cluster is torn down even when a test
fails, and no process of it may be left."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_tune.config import TrialConfig, space_from_dict

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
# The loopback-cluster tests; the checks' arithmetic at the end of the file needs no cluster.
needs_data = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs Debian's dataset-fashion-mnist",
)
EXCLUDES = '{"excludes": [".git", ".venv", "results", "__pycache__", ".pytest_cache"]}'


def can_hide_from_node2(path: Path) -> bool:
    """Whether a process here may get its own mount namespace (needs CAP_SYS_ADMIN)."""
    try:
        out = subprocess.run(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "mount",
                "-t",
                "tmpfs",
                "none",
                str(path),
            ],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


@dataclass
class Cluster:
    gcs: str  # host:port, for `--address`
    client: str  # ray://host:port (Ray Client)
    dashboard: str  # http://host:port, for the Jobs API
    env: dict[str, str]
    head_id: str
    node2_id: str
    root: Path
    private: Path | None  # a folder the head sees and node 2 does not (None: not possible here)
    node2_pid: int  # node 2's `ray start`: every process of the node is below it


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(children.get(p, []))
    return out


def alive(pids: set[int]) -> set[int]:
    out = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(p)
    return out


def ray_cli(cluster: Cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, *args], env=cluster.env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def list_nodes(dashboard: str, env: dict[str, str]) -> list[dict]:
    out = subprocess.run(
        [RAY, "list", "nodes", "--address", dashboard, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0 or not out.stdout.lstrip().startswith("["):
        return []  # not up yet ("No resource in the cluster")
    return [n for n in json.loads(out.stdout) if n["state"] == "ALIVE"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Head (2 CPUs) + a second node (2 CPUs and the custom resource ``node2``), each with its
    own temp dir (on one machine, a shared one lets one node's runtime-env cleanup delete the
    other's job working directory)."""
    root = Path(tempfile.mkdtemp(prefix="sdt-", dir="/tmp"))  # short: Ray's socket paths
    gcs, dash, client, agent1, agent2, metrics1, metrics2 = free_ports(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="2",
        # each try to place a Train run's workers waits this long (Ray's default is 60 s):
        # test_a_killed_node_fails_its_trial_with_one_message waits for two tries
        RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="10",
        PYTHONUNBUFFERED="1",
    )
    common = [
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        "2",
        "--disable-usage-stats",
    ]
    head_cmd = [
        RAY,
        "start",
        "--head",
        *common,
        "--port",
        str(gcs),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dash),
        "--ray-client-server-port",
        str(client),
        "--dashboard-agent-listen-port",
        str(agent1),
        "--metrics-export-port",
        str(metrics1),
        "--temp-dir",
        str(root / "h"),
    ]
    node2_cmd = [
        RAY,
        "start",
        "--address",
        f"127.0.0.1:{gcs}",
        *common,
        "--resources",
        '{"node2": 1}',
        "--dashboard-agent-listen-port",
        str(agent2),
        "--metrics-export-port",
        str(metrics2),
        "--temp-dir",
        str(root / "w"),
    ]
    private = root / "private"  # on node 2, an empty tmpfs hides what the head writes here
    private.mkdir()
    if can_hide_from_node2(private):
        node2_cmd = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount -t tmpfs none "{private}" && exec "$@"',
            "sh",
            *node2_cmd,
        ]
    procs: list[subprocess.Popen] = []
    dashboard = f"http://127.0.0.1:{dash}"
    try:
        for cmd, log in ((head_cmd, "head.log"), (node2_cmd, "node2.log")):
            with open(root / log, "w") as out:
                procs.append(
                    subprocess.Popen(
                        cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
            wanted = len(procs)
            deadline = time.monotonic() + 120
            while len(nodes := list_nodes(dashboard, env)) < wanted:
                assert all(p.poll() is None for p in procs), (root / log).read_text()[-3000:]
                assert time.monotonic() < deadline, f"no {wanted} nodes: {nodes}"
                time.sleep(2)
        node2 = [n["node_id"] for n in nodes if "node2" in n["resources_total"]]
        head = [n["node_id"] for n in nodes if n["is_head_node"]]
        assert len(node2) == 1 and len(head) == 1, nodes
        hidden = private if node2_cmd[0] == "unshare" else None
        yield Cluster(
            f"127.0.0.1:{gcs}",
            f"ray://127.0.0.1:{client}",
            dashboard,
            env,
            head[0],
            node2[0],
            root,
            hidden,
            procs[1].pid,
        )
    finally:
        stop_tree(procs, root)


def stop_tree(procs: list[subprocess.Popen], root: Path, *, group: bool = False) -> None:
    """SIGTERM the processes (their whole session with ``group``), SIGKILL what is left after
    60 s, remove ``root`` (unless SD_TUNE_KEEP_CLUSTER_LOGS is set, to read Ray's logs after),
    and fail if any process of theirs had to be killed."""
    tree = set().union(*(descendants(p.pid) for p in procs)) if procs else set()
    for p in procs:
        if group:
            os.killpg(p.pid, signal.SIGTERM)
        else:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(1)
    left = alive(tree)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    if not os.environ.get("SD_TUNE_KEEP_CLUSTER_LOGS"):
        shutil.rmtree(root, ignore_errors=True)
    assert not left, f"Ray processes left after SIGTERM: {sorted(left)}"


def job_status(cluster: Cluster, job_id: str) -> str:
    out = ray_cli(cluster, "job", "status", "--address", cluster.dashboard, job_id)
    text = out.stdout + out.stderr  # "Status for job 'x': RUNNING" or "Job 'x' succeeded"
    found = re.search(rf"job '{job_id}': ([A-Z]+)", text) or re.search(
        rf"Job '{job_id}' (succeeded|failed|stopped)", text
    )
    if found:
        return found.group(1).upper()
    return "UNKNOWN: " + out.stdout + out.stderr


def check_results(cluster: Cluster, exp_dir: Path, n: int = 3) -> list[dict]:
    """The experiment is complete; every trial names the nodes its two workers ran on."""
    data = json.loads((exp_dir / "trials.json").read_text())
    trials = data["trials"]
    assert [t["status"] for t in trials] == ["completed"] * n, trials
    for name in ("trials.csv", "pareto.json", "time_to_accuracy.json", "summary.md"):
        assert (exp_dir / name).is_file(), name
    for t in trials:
        assert len(t["worker_node_ids"]) == 2, t
        assert set(t["worker_node_ids"]) <= {cluster.head_id, cluster.node2_id}, t
        assert len(t["history"]) == 2
    return trials


def wait_for(cluster: Cluster, job_id: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while (status := job_status(cluster, job_id)) in ("RUNNING", "PENDING"):
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(5)
    return status


def job_logs(cluster: Cluster, job_id: str) -> str:
    return ray_cli(cluster, "job", "logs", "--address", cluster.dashboard, job_id).stdout


@pytest.mark.slow
@needs_data
def test_ray_job_submit_runs_the_search_across_both_nodes(cluster: Cluster) -> None:
    store = cluster.root / "store"
    job_id = "sdt-job-submit"
    submitted = ray_cli(
        cluster,
        "job",
        "submit",
        "--address",
        cluster.dashboard,
        "--submission-id",
        job_id,
        "--no-wait",
        "--working-dir",
        ".",
        "--runtime-env-json",
        EXCLUDES,
        "--",
        "sd-tune",
        "launch",
        "--space",
        "search_spaces/smoke.yaml",
        "--storage",
        str(store),
        "--set",
        "search.num_samples=2",
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    status = wait_for(cluster, job_id)
    logs = job_logs(cluster, job_id)
    assert status == "SUCCEEDED", logs[-5000:]
    assert "2 trials, 2 at a time" in logs
    trials = check_results(cluster, store / "smoke", n=2)
    nodes = {n for t in trials for n in t["worker_node_ids"]}
    assert cluster.node2_id in nodes, trials  # some trial's workers ran on the second node


@pytest.mark.slow
@needs_data
def test_submit_sh_runs_the_search(cluster: Cluster) -> None:
    store = cluster.root / "store2"
    env = {
        **cluster.env,
        "RAY_ADDRESS": cluster.dashboard,
        "SD_TUNE_JOB_ID": "sdt-submit-sh",
        "RAY": RAY,
    }
    out = subprocess.run(
        [
            "bash",
            "launch/submit.sh",
            "--space",
            "search_spaces/smoke.yaml",
            "--storage",
            str(store),
            "--name",
            "viash",
            "--set",
            "search.num_samples=2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "job id: sdt-submit-sh" in out.stdout
    assert "ray job logs -f sdt-submit-sh" in out.stdout
    status = wait_for(cluster, "sdt-submit-sh")
    assert status == "SUCCEEDED", job_logs(cluster, "sdt-submit-sh")[-5000:]
    check_results(cluster, store / "viash", n=2)


def launch(
    env: dict[str, str], space: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    """``sd-tune launch --space SPACE ARGS`` in a subprocess from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "sd_tune.cli", "launch", "--space", space, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@needs_data
def test_ray_client_address_runs_the_search(cluster: Cluster, tmp_path: Path) -> None:
    out = launch(
        cluster.env,
        "search_spaces/smoke.yaml",
        "--set",
        "search.num_samples=2",
        "--storage",
        str(tmp_path),
        "--address",
        cluster.client,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 trials, 2 at a time" in out.stdout
    check_results(cluster, tmp_path / "smoke", n=2)


def launch_with_address(
    cluster: Cluster, tmp_path: Path, space: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    path = tmp_path / "space.yaml"
    path.write_text(space + "space: {stochastic_depth.drop_rate: {uniform: [0.0, 0.5]}}\n")
    return launch(
        cluster.env,
        str(path),
        "--storage",
        str(tmp_path / "store"),
        "--address",
        cluster.gcs,
        timeout=timeout,
    )


@pytest.mark.slow
@needs_data
def test_gpu_space_on_the_cpu_cluster_fails_at_once(cluster: Cluster, tmp_path: Path) -> None:
    started = time.monotonic()
    out = launch_with_address(
        cluster, tmp_path, "name: gpu\nresources: {num_workers: 2, use_gpu: true}\n"
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "needs 2 workers x 1.0 GPU = 2.0 GPUs but the Ray cluster has 0.0 GPUs" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "store" / "gpu" / "trial_").exists()
    assert time.monotonic() - started < 60


@pytest.mark.slow
@needs_data
def test_worker_larger_than_any_node_fails_with_the_nodes(cluster: Cluster, tmp_path: Path) -> None:
    # 4 CPUs in all, but no node holds one 3-CPU worker
    out = launch_with_address(
        cluster, tmp_path, "name: big\nresources: {num_workers: 1, cpus_per_worker: 3}\n"
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "a worker must fit on one node" in out.stderr
    assert "(2 CPU, 2 CPU) hold only 0 such workers" in out.stderr


@pytest.mark.slow
@needs_data
def test_storage_that_a_node_cannot_see_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    if cluster.private is None:
        pytest.skip(
            "no mount namespaces here (unshare needs CAP_SYS_ADMIN): node 2 cannot "
            "be given a folder of its own"
        )
    store = cluster.private / "store"
    out = launch(
        cluster.env, "search_spaces/smoke.yaml", "--storage", str(store), "--address", cluster.gcs
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert (
        f"--storage {store} is not shared: 1 of 2 nodes of the Ray cluster do not see it"
        in out.stderr
    )
    assert f"({cluster.node2_id[:8]})" in out.stderr and "s3://" in out.stderr
    assert "Traceback" not in out.stderr
    assert not list(store.glob("smoke/trial_*"))


@pytest.mark.slow
@needs_data
def test_wrong_token_fails_with_what_to_check(cluster: Cluster, tmp_path: Path) -> None:
    env = {**cluster.env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    out = launch(
        env, "search_spaces/smoke.yaml", "--storage", str(tmp_path), "--address", cluster.gcs
    )
    assert out.returncode == 2, out.stdout + out.stderr
    error = [ln for ln in out.stderr.splitlines() if ln.startswith("sd-tune launch: error:")]
    assert error and f"cannot connect to the Ray cluster at {cluster.gcs}" in error[0]
    assert "RAY_AUTH_TOKEN" in error[0] and "Traceback" not in out.stderr


@pytest.mark.slow
@needs_data
def test_job_driver_has_the_runtime_env_vars(cluster: Cluster) -> None:
    """launch/kuberay-rayjob.yaml gives the bucket as the runtime environment's
    SD_TUNE_STORAGE and no --storage (sd-tune reads the variable, tests/test_cli.py): the
    job's driver process has the variable."""
    job_id = "sdt-env-vars"
    submitted = ray_cli(
        cluster,
        "job",
        "submit",
        "--address",
        cluster.dashboard,
        "--submission-id",
        job_id,
        "--no-wait",
        "--runtime-env-json",
        json.dumps({"env_vars": {"SD_TUNE_STORAGE": "gs://bucket/prefix"}}),
        "--",
        "python",
        "-c",
        "import os; print('storage=' + os.environ['SD_TUNE_STORAGE'])",
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert wait_for(cluster, job_id, timeout=180) == "SUCCEEDED"
    assert "storage=gs://bucket/prefix" in job_logs(cluster, job_id)


@pytest.mark.slow
@needs_data
def test_a_killed_node_fails_its_trial_with_one_message(cluster: Cluster, tmp_path: Path) -> None:
    """Node 2 dies mid-trial (every process of it SIGKILLed, as when the machine is lost): the
    trial, whose 3 workers no longer fit on the head's 2 CPUs, fails after --wait-for-nodes
    with one line, keeps its finished epochs, and the search ends; it never hangs (Ray
    Train's default retries the placement of its workers for ever). Last of the cluster
    tests: node 2 stays down."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sd_tune.cli", "launch", "--space", "search_spaces/smoke.yaml",
         "--storage", str(tmp_path), "--name", "nodekill", "--address", cluster.gcs,
         "--wait-for-nodes", "20", "--set", "resources.num_workers=3",
         "--set", "train.epochs=4", "--set", "dataset.max_train_samples=2048",
         "--set", "search.num_samples=1"],
        cwd=REPO, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "epoch 1/4" in line:
                break
        node2 = alive(descendants(cluster.node2_pid))
        for pid in node2:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        lines += proc.communicate(timeout=400)[0].splitlines(keepends=True)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = "".join(lines)
    assert node2, "node 2 had no process to kill"
    assert "Traceback" not in out, out
    records = json.loads((tmp_path / "nodekill" / "trials.json").read_text())["trials"]
    assert len(records) == 1, records
    trial = records[0]
    # a failed trial is a result of the search, as in test_failed_trial_is_reported...
    assert trial["status"] == "failed" and proc.returncode == 0, (proc.returncode, out)
    assert (
        f"failed {trial['trial_id']}: no room on the cluster for the trial's 3 workers "
        "(1 CPU each) for 20 s (--wait-for-nodes): a node it ran on was lost" in out
    ), out
    assert [h["epoch"] for h in trial["history"]][:1] == [1], trial["history"]
    assert took < 300, f"the search ended {took:.0f} s after the node died"


# ------------------------------------------------------------ the checks, no cluster needed


def resources(**values: object) -> TrialConfig:
    """A trial of 2 workers x 0.5 CPU (as tests/test_ray_train.py's), with these resources."""
    return space_from_dict(
        {"resources": {"num_workers": 2, "cpus_per_worker": 0.5, **values}}
    ).trial


def closed_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_address_problem_names_the_address_nothing_answers_at() -> None:
    from sd_tune.cluster import address_problem

    port = closed_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        problem = address_problem(address)
        assert problem is not None and problem.startswith(
            f"cannot connect to the Ray cluster at {address}: nothing answers at "
            f"127.0.0.1:{port} (Connection refused); check --address or RAY_ADDRESS"
        ), problem
    unknown = address_problem("no-such-host.invalid:6379")
    assert unknown is not None and "the host 'no-such-host.invalid' is unknown" in unknown
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert address_problem(f"127.0.0.1:{server.getsockname()[1]}") is None
    assert address_problem("auto") is None and address_problem("local") is None


def test_worker_slots_count_node_by_node() -> None:
    from sd_tune.cluster import worker_slots

    gpu = resources(use_gpu=True, cpus_per_worker=8)
    nodes = [{"CPU": 8.0}, {"CPU": 96.0, "GPU": 8.0}, {"CPU": 96.0, "GPU": 8.0}]
    assert worker_slots(gpu, nodes) == 16
    assert worker_slots(gpu, [{"CPU": 20.0, "GPU": 8.0}]) == 2  # CPUs bound it
    half = resources(cpus_per_worker=0.5)
    assert worker_slots(half, [{"CPU": 2.0}, {"CPU": 1.0}]) == 6


def test_resource_problem_says_what_never_fits() -> None:
    from sd_tune.cluster import resource_problem

    two = resources(cpus_per_worker=1)
    assert resource_problem(two, [{"CPU": 1.0}, {"CPU": 1.0}]) is None
    gpu = resources(use_gpu=True)
    assert (
        "needs 2 workers x 1.0 GPU = 2.0 GPUs but the Ray cluster has 0.0 GPUs"
        in resource_problem(gpu, [{"CPU": 8.0}])
    )
    # 4 GPUs in all, but two 2-GPU workers need a node each with 2 GPUs
    big = resources(use_gpu=True, gpus_per_worker=2, cpus_per_worker=1)
    msg = resource_problem(big, [{"CPU": 4.0, "GPU": 1.0}] * 2 + [{"CPU": 4.0, "GPU": 2.0}])
    assert msg is not None and "2 workers of 1 CPU + 2 GPU each" in msg
    assert "(4 CPU + 1 GPU, 4 CPU + 1 GPU, 4 CPU + 2 GPU) hold only 1 such workers" in msg


def test_shared_storage_problem_names_the_nodes_that_miss_it() -> None:
    from sd_tune.cluster import shared_storage_problem

    addresses = {"aaaaaaaa11": "10.0.0.1", "bbbbbbbb22": "10.0.0.2", "cccccccc33": "10.0.0.3"}
    assert shared_storage_problem("/nfs/r", dict.fromkeys(addresses, True), addresses) is None
    msg = shared_storage_problem(
        "/tmp/r", {"aaaaaaaa11": True, "bbbbbbbb22": False, "cccccccc33": None}, addresses
    )
    assert msg is not None
    assert msg.startswith("--storage /tmp/r is not shared: 2 of 3 nodes")
    assert "10.0.0.2 (bbbbbbbb)" in msg and "10.0.0.3 (cccccccc, no answer)" in msg
    assert "s3://" in msg and "10.0.0.1" not in msg


def test_fractional_gpus_share_a_gpu_in_the_arithmetic() -> None:
    """0.25 GPU per worker: four workers share one GPU; the checks count fractions."""
    from sd_tune.cluster import resource_problem, worker_resources, worker_slots

    quarter = resources(use_gpu=True, gpus_per_worker=0.25, num_workers=1, cpus_per_worker=2)
    assert worker_resources(quarter) == {"CPU": 2.0, "GPU": 0.25}
    assert worker_slots(quarter, [{"CPU": 16.0, "GPU": 1.0}]) == 4
    assert worker_slots(quarter, [{"CPU": 6.0, "GPU": 1.0}]) == 3  # CPUs bound it
    assert worker_slots(quarter, [{"CPU": 64.0, "GPU": 8.0}]) == 32
    assert resource_problem(quarter, [{"CPU": 16.0, "GPU": 0.25}]) is None
    msg = resource_problem(quarter, [{"CPU": 16.0, "GPU": 0.2}])
    assert msg is not None and "needs 1 workers x 0.25 GPU = 0.25 GPUs" in msg
    two = resources(use_gpu=True, gpus_per_worker=0.5, num_workers=2, cpus_per_worker=1)
    # two half-GPU workers fit one GPU, and two 0.4-GPU leftovers on two nodes do not
    assert resource_problem(two, [{"CPU": 4.0, "GPU": 1.0}]) is None
    msg = resource_problem(two, [{"CPU": 4.0, "GPU": 0.6}, {"CPU": 4.0, "GPU": 0.4}])
    assert msg is not None and "hold only 1 such workers" in msg
