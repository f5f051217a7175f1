"""launch/: the cluster-launcher configs pass Ray's own validation, the KubeRay RayJob has what
KubeRay requires, and submit.sh / ray_submit_entry.py build the right commands; the defects a
schema check cannot see (IAM, driver, memory, volume access mode, data mount, the image) are
checked against what the files say. No cloud, no cluster and no Ray instance are started."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
CLUSTER_CONFIGS = {"aws-gpu.yaml": "s3://", "gcp-gpu.yaml": "gs://"}
IMAGENET = yaml.safe_load((ROOT / "search_spaces" / "imagenet.yaml").read_text())


def _load(name: str) -> dict:
    return yaml.safe_load((LAUNCH / name).read_text())


def _prepared(name: str) -> dict:
    """What `ray up` validates: the file merged with the provider's defaults.yaml
    (prepare_config, the first step of Ray's _bootstrap_config; it reads no cloud)."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(_load(name)))


def _commands(config: dict) -> list[str]:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    return [c for k in keys for c in config.get(k) or []]


@pytest.mark.parametrize("name", sorted(CLUSTER_CONFIGS))
def test_cluster_config_passes_ray_validation(name):
    from ray.autoscaler._private.util import validate_config

    raw = _load(name)
    validate_config(_prepared(name))
    # prepare_config only adds defaults: everything that matters is in the file itself
    for key in (
        "cluster_name",
        "max_workers",
        "provider",
        "auth",
        "available_node_types",
        "head_node_type",
        "file_mounts",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        assert key in raw, key


@pytest.mark.parametrize("name", sorted(CLUSTER_CONFIGS))
def test_cluster_config_nodes(name):
    config = _prepared(name)
    types_ = config["available_node_types"]
    head = types_[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_types = {
        k: v
        for k, v in types_.items()
        if k != config["head_node_type"] and v["resources"].get("GPU", 0) > 0
    }
    assert gpu_types, "no GPU worker node type"
    r = IMAGENET["resources"]
    for key, t in gpu_types.items():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= config["max_workers"], key
        assert t["max_workers"] > 0, key
        assert t["min_workers"] == 0, key  # sd-tune waits for the autoscaler's nodes
        # one node holds a whole ImageNet trial: 8 workers x 1 GPU x 8 CPUs
        assert t["resources"]["GPU"] >= r["num_workers"] * r.get("gpus_per_worker", 1), key
        assert t["resources"]["CPU"] >= r["num_workers"] * r["cpus_per_worker"], key


@pytest.mark.parametrize("name", sorted(CLUSTER_CONFIGS))
def test_cluster_config_installs_sd_tune_from_the_mounted_repo(name):
    config = _prepared(name)
    mounts = config["file_mounts"]
    repo = [remote for remote, local in mounts.items() if local in (".", "./")]
    assert repo == ["~/sd-tune"]
    setup = config["setup_commands"]
    # no apt-get but for the NFS client of the data mount (uv brings Python)
    assert all("install -y -q nfs-common" in c for c in _commands(config) if "apt-get" in c)
    install = [i for i, c in enumerate(setup) if "pip install" in c and "-e ~/sd-tune" in c]
    torch = [i for i, c in enumerate(setup) if "pip install" in c and "torch==" in c]
    assert install and torch and torch[0] < install[0]
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands run on both
        assert config[key][: len(setup)] == setup


@pytest.mark.parametrize("name", sorted(CLUSTER_CONFIGS))
def test_cluster_config_dashboard_auth_and_storage(name):
    config = _prepared(name)
    text = json.dumps(config)
    assert "0.0.0.0" not in text
    head_start = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    uris = re.findall(r"SD_TUNE_STORAGE=([^\s'\"]+)", " ".join(config["setup_commands"]))
    assert uris and all(u.startswith(CLUSTER_CONFIGS[name]) for u in uris), uris


def test_kuberay_rayjob():
    job = _load("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    entry = spec["entrypoint"].split()
    assert entry[:2] == ["sd-tune", "launch"]
    assert entry[entry.index("--space") + 1] == "search_spaces/imagenet.yaml"
    # the bucket comes from the runtime environment (s3:// on EKS, gs:// on GKE), which the
    # job's driver gets and sd-tune reads when --storage is not given
    assert "--storage" not in entry and "$" not in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int)
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and runtime_env["working_dir"]
    assert re.match(r"(s3|gs)://\S+", runtime_env["env_vars"]["SD_TUNE_STORAGE"])
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"]
    groups = [head, *cluster["workerGroupSpecs"]]
    for g in groups:
        params = g["rayStartParams"]
        assert isinstance(params, dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()), params
    assert cluster["workerGroupSpecs"]
    for g in cluster["workerGroupSpecs"]:
        assert g["groupName"]
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        container = g["template"]["spec"]["containers"][0]
        assert container["image"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 8


# What a schema check cannot see ----------------------------------------------------------------


def _statement(policy: dict, action: str) -> dict:
    found = [
        st
        for st in policy["Statement"]
        if action in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
    ]
    assert len(found) == 1, action
    return found[0]


def test_aws_iam_lets_the_head_start_workers_with_their_profile():
    """Ray's default head role (AmazonEC2FullAccess + AmazonS3FullAccess) has no iam:PassRole,
    so RunInstances with a worker profile is refused: the config names its own profiles, and
    launch/aws-iam/ holds their policies."""
    config = _prepared("aws-gpu.yaml")
    types_ = config["available_node_types"]
    head = types_[config["head_node_type"]]["node_config"]
    worker = types_["gpu_8x_a100"]["node_config"]
    assert head["IamInstanceProfile"] == {"Name": "sd-tune-head"}
    assert worker["IamInstanceProfile"] == {"Name": "sd-tune-worker"}
    iam = LAUNCH / "aws-iam"
    trust = json.loads((iam / "ec2-trust-policy.json").read_text())
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    head_policy = json.loads((iam / "head-policy.json").read_text())
    worker_policy = json.loads((iam / "worker-policy.json").read_text())
    assert (
        _statement(head_policy, "iam:PassRole")["Resource"] == "arn:aws:iam::*:role/sd-tune-worker"
    )
    # EC2 resolves resolve:ssm: ImageIds with the caller's rights: the head's, for workers
    ssm = _statement(head_policy, "ssm:GetParameters")["Resource"]
    assert worker["ImageId"].startswith("resolve:ssm:/aws/service/deeplearning/")
    assert re.fullmatch(
        ssm.replace("*", ".*"),
        "arn:aws:ssm:us-west-2::parameter" + worker["ImageId"].removeprefix("resolve:ssm:"),
    )
    bucket = re.search(
        r"SD_TUNE_STORAGE=s3://([^/\s']+)", " ".join(config["setup_commands"])
    ).group(1)
    for policy in (head_policy, worker_policy):  # both write results and checkpoints
        assert _statement(policy, "s3:PutObject")["Resource"] == f"arn:aws:s3:::{bucket}/*"
        assert _statement(policy, "s3:ListBucket")["Resource"] == f"arn:aws:s3:::{bucket}"
    assert "iam:PassRole" not in json.dumps(worker_policy)


def test_aws_ami_is_resolved_by_ec2_and_ray_keeps_it():
    from ray.autoscaler._private.aws.config import _check_ami

    config = _prepared("aws-gpu.yaml")
    ids = {k: t["node_config"]["ImageId"] for k, t in config["available_node_types"].items()}
    assert len(set(ids.values())) == 1
    assert next(iter(ids.values())) == (
        "resolve:ssm:/aws/service/deeplearning/ami/x86_64/"
        "base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
    )
    checked = copy.deepcopy(config)
    _check_ami(checked)  # Ray's own check: keeps an ImageId it does not know
    assert {
        k: t["node_config"]["ImageId"] for k, t in checked["available_node_types"].items()
    } == ids


def test_gcp_image_has_a_driver_for_torchs_cuda():
    from sd_tune.gpu import MIN_LINUX_DRIVER

    config = _prepared("gcp-gpu.yaml")
    disk = config["available_node_types"]["gpu_8x_a100"]["node_config"]["disks"][0]
    family = disk["initializeParams"]["sourceImage"].rsplit("/", 1)[1]
    driver = int(re.search(r"nvidia-(\d+)$", family).group(1))
    torch_cuda_major = 13  # torch 2.14.1's Linux wheel (scripts/setup.sh pins it)
    assert driver >= int(MIN_LINUX_DRIVER[torch_cuda_major]), family
    assert "torch==2.14.1" in (ROOT / "scripts" / "setup.sh").read_text()


@pytest.mark.parametrize(
    ("name", "placeholder", "value"),
    [
        ("aws-gpu.yaml", "EFS=fs-XXXXXXXX", "EFS=fs-0123abcd"),
        ("gcp-gpu.yaml", "NFS=FILESTORE_IP:/imagenet", "NFS=10.0.0.2:/imagenet"),
    ],
)
def test_data_mount_is_on_and_refuses_its_placeholder(name, placeholder, value, tmp_path):
    """The mount command runs (with sudo and mountpoint replaced by stand-ins): it stops
    with a message while the placeholder is there, and mounts at imagenet.yaml's root."""
    config = _load(name)
    mounts = [c for c in config["setup_commands"] if "mount -t nfs" in c]
    assert len(mounts) == 1 and placeholder in mounts[0]
    root = IMAGENET["dataset"]["root"]
    stubs = 'sudo() { echo "sudo $*"; }; mountpoint() { return 1; }; '
    done = subprocess.run(["bash", "-c", stubs + mounts[0]], capture_output=True, text=True)
    assert done.returncode == 1 and f"launch/{name}: put your" in done.stderr
    done = subprocess.run(
        ["bash", "-c", stubs + mounts[0].replace(placeholder, value)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    mount = done.stdout.splitlines()[-1].split()
    assert mount[:3] == ["sudo", "mount", "-t"] and mount[-1] == root
    assert value.split("=", 1)[1].split(":")[0] in mount[-2]


# Allocatable memory (GiB) of the machines the RayJob's comments name: the machine's memory
# less GKE's reservation (a2/a3) or EKS's kube-reserved (p4d/p5), rounded down.
ALLOCATABLE_GIB = {
    "a2-highgpu-8g": 614,
    "a3-highgpu-8g": 1700,
    "p4d.24xlarge": 1100,
    "p5.48xlarge": 1950,
}


def _gib(quantity: str) -> float:
    units = {"Gi": 1.0, "Mi": 1 / 1024, "Ti": 1024.0}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_kuberay_pods_fit_the_machines_and_share_the_volume():
    job = _load("kuberay-rayjob.yaml")
    text = (LAUNCH / "kuberay-rayjob.yaml").read_text()
    cluster = job["spec"]["rayClusterSpec"]
    for machine in ALLOCATABLE_GIB:
        assert machine in text, machine
    for g in cluster["workerGroupSpecs"]:
        pod = g["template"]["spec"]
        res = pod["containers"][0]["resources"]
        memory = _gib(res["requests"]["memory"])
        assert memory == _gib(res["limits"]["memory"])
        # the memory-backed /dev/shm counts against the limit too
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"]
        assert _gib(shm) < memory <= min(ALLOCATABLE_GIB.values()) - 10
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for spec in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for v in spec["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    pvc = yaml.safe_load((LAUNCH / "kuberay-imagenet-pvc.yaml").read_text())
    assert pvc["kind"] == "PersistentVolumeClaim" and claims == {pvc["metadata"]["name"]}
    assert set(pvc["spec"]["accessModes"]) <= {"ReadWriteMany", "ReadOnlyMany"}
    assert pvc["spec"]["storageClassName"]


def test_dockerfile_builds_what_the_rayjob_runs():
    docker = (ROOT / "Dockerfile").read_text()
    lines = [ln for ln in docker.splitlines() if ln and not ln.startswith("#")]
    ray_pin = re.search(
        r"ray\[default,tune,train\]>=([\d.]+)", (ROOT / "pyproject.toml").read_text()
    ).group(1)
    assert lines[0] == f"FROM rayproject/ray:{ray_pin}.0-py311-gpu"
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for pin in re.findall(r'"(torch(?:vision)?==[\d.]+)"', setup):
        assert pin in docker, pin
    job = _load("kuberay-rayjob.yaml")
    workdir = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"]
    assert f"WORKDIR {workdir}" in lines and any(ln.startswith("COPY") for ln in lines)
    assert any(f"pip install --no-cache-dir -e {workdir}" in ln for ln in lines)
    ignored = (ROOT / ".dockerignore").read_text().split()
    for name in (".git", ".venv", "results"):
        assert name in ignored


# submit.sh ------------------------------------------------------------------------------------


def _submit(args, tmp_path, **env_extra):
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SD_TUNE_")) and k != "RAY"
    }
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token unless a test makes one
    env.update(env_extra)
    return subprocess.run(
        ["bash", str(LAUNCH / "submit.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_submit_sh_syntax_and_help(tmp_path):
    subprocess.run(["bash", "-n", str(LAUNCH / "submit.sh")], check=True)
    done = _submit(["-h"], tmp_path)
    assert done.returncode == 0 and "usage: launch/submit.sh" in done.stdout


def test_submit_sh_needs_ray_address(tmp_path):
    done = _submit(["--storage", "s3://b/p"], tmp_path)
    assert done.returncode != 0
    assert "RAY_ADDRESS is not set" in done.stderr


def test_submit_sh_needs_shared_storage(tmp_path):
    done = _submit([], tmp_path, RAY_ADDRESS="http://127.0.0.1:8265")
    assert done.returncode != 0 and "SD_TUNE_STORAGE" in done.stderr
    done = _submit(["--storage", "results"], tmp_path, RAY_ADDRESS="http://127.0.0.1:8265")
    assert done.returncode != 0 and "--storage must be" in done.stderr


@pytest.mark.parametrize("token", [False, True])
def test_submit_sh_submits_a_ray_job(tmp_path, token):
    fake = tmp_path / "ray"
    out = tmp_path / "args"
    fake.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {out}\necho "${{RAY_AUTH_MODE:-}}" > {out}.mode\n'
    )
    fake.chmod(0o755)
    if token:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("secret")
    done = _submit(
        ["--set", "train.epochs=1"],
        tmp_path,
        RAY=str(fake),
        RAY_ADDRESS="http://127.0.0.1:8265",
        SD_TUNE_STORAGE="s3://b/p",
    )
    assert done.returncode == 0, done.stderr
    args = out.read_text().splitlines()
    job_id = args[args.index("--submission-id") + 1]
    assert args[:2] == ["job", "submit"]
    assert args[args.index("--address") + 1] == "http://127.0.0.1:8265"
    assert "--no-wait" in args and args[args.index("--working-dir") + 1] == "."
    runtime_env = json.loads(args[args.index("--runtime-env-json") + 1])
    assert runtime_env["excludes"]
    assert args[args.index("--") + 1 :] == ["sd-tune", "launch"]
    assert json.loads(runtime_env["env_vars"]["SD_TUNE_JOB_ARGS"]) == [
        "--space",
        "search_spaces/imagenet.yaml",
        "--storage",
        "s3://b/p",
        "--set",
        "train.epochs=1",
    ]
    assert runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "120"
    assert f"job id: {job_id}" in done.stdout
    assert f"ray job logs -f {job_id}" in done.stdout
    assert f"ray job status {job_id}" in done.stdout
    assert (out.parent / "args.mode").read_text().strip() == ("token" if token else "")


def test_submit_sh_prints_the_ray_cli_it_ran(tmp_path):
    """Follow-up commands name the CLI that submitted (e.g. .venv/bin/ray), not a bare ray."""
    bin_dir = tmp_path / "venv-bin"
    bin_dir.mkdir()
    fake = bin_dir / "ray"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    done = _submit(
        ["--storage", "s3://b/p"],
        tmp_path,
        RAY=str(fake),
        RAY_ADDRESS="http://127.0.0.1:8265",
        SD_TUNE_JOB_ID="j1",
    )
    assert done.returncode == 0, done.stderr
    for verb in ("logs -f", "status", "stop"):
        assert f"RAY_ADDRESS=http://127.0.0.1:8265 {fake} job {verb} j1" in done.stdout


FAKE_RAY = """#!{python}
# `ray job submit` as a job runs: the runtime environment's env_vars set, the words after `--`
# joined ({join}) and run through `sh -c`, as Ray's job manager runs an entrypoint.
import json, os, shlex, subprocess, sys
args = sys.argv[1:]
env = dict(os.environ)
env.update(json.loads(args[args.index("--runtime-env-json") + 1]).get("env_vars", {{}}))
words = args[args.index("--") + 1:]
entrypoint = {join}
sys.exit(subprocess.run(["sh", "-c", entrypoint], env=env).returncode)
"""


@pytest.mark.parametrize("join", ["' '.join(words)", "shlex.join(words)"])
def test_submit_sh_runs_no_value_as_a_command(tmp_path, join):
    """A `--set` or `--name` value holding `$(...)` or backticks reaches sd-tune as text and
    runs nothing, whether the ray CLI joins the entrypoint's words with plain spaces (older
    CLIs) or quotes them (Ray 2.60's)."""
    fake = tmp_path / "ray"
    fake.write_text(FAKE_RAY.format(python=sys.executable, join=join))
    fake.chmod(0o755)
    marker, tick = tmp_path / "marker", tmp_path / "tick"
    bin_dir = Path(sys.executable).parent  # the real sd-tune
    done = _submit(
        [
            "--space",
            "search_spaces/smoke.yaml",
            "--set",
            f"train.epochs=$(touch {marker})",
            "--name",
            f"x`touch {tick}`",
        ],
        tmp_path,
        RAY=str(fake),
        RAY_ADDRESS="http://127.0.0.1:8265",
        SD_TUNE_STORAGE="s3://b/p",
        PATH=f"{bin_dir}:{os.environ['PATH']}",
    )
    assert not marker.exists() and not tick.exists()
    # sd-tune got the values as they were typed, and refused them as values
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--name must be one folder name" in done.stderr
    assert f"but got 'x`touch {tick}`'" in done.stderr


def test_submit_sh_makes_the_token_private(tmp_path):
    fake = tmp_path / "ray"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    (tmp_path / ".ray").mkdir()
    token = tmp_path / ".ray" / "auth_token"
    token.write_text("secret")
    token.chmod(0o644)  # as Ray 2.60 writes it
    done = _submit(
        ["--storage", "s3://b/p"], tmp_path, RAY=str(fake), RAY_ADDRESS="http://127.0.0.1:8265"
    )
    assert done.returncode == 0, done.stderr
    assert token.stat().st_mode & 0o777 == 0o600


def test_a_job_reads_its_arguments_as_data(monkeypatch, capsys):
    from sd_tune.cli import main

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["sd-tune", "validate"])
    monkeypatch.setenv(
        "SD_TUNE_JOB_ARGS",
        json.dumps(
            ["--space", "search_spaces/smoke.yaml", "--set", "search.num_samples=$(reboot)"]
        ),
    )
    assert main() == 2
    assert "search.num_samples: must be an integer, but got '$(reboot)'" in capsys.readouterr().err
    monkeypatch.setenv("SD_TUNE_JOB_ARGS", "--space x")
    assert main() == 2
    assert "$SD_TUNE_JOB_ARGS must be a JSON list of strings" in capsys.readouterr().err


# ray_submit_entry.py --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def entry():
    spec = importlib.util.spec_from_file_location(
        "ray_submit_entry", LAUNCH / "ray_submit_entry.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entry_knows_the_cli_subcommands(entry):
    source = (ROOT / "sd_tune" / "cli.py").read_text()
    assert set(re.findall(r'add_parser\(\s*"(\w+)"', source)) == entry.SUBCOMMANDS


def test_entry_builds_the_sd_tune_arguments(entry):
    env = {"SD_TUNE_STORAGE": "s3://b/p"}
    assert entry.build_argv(["--space", "search_spaces/imagenet.yaml"], env) == [
        "launch",
        "--space",
        "search_spaces/imagenet.yaml",
        "--address",
        "auto",
        "--storage",
        "s3://b/p",
    ]
    assert entry.build_argv([], {}) == ["launch", "--address", "auto"]
    assert entry.build_argv(["launch", "--storage=gs://x", "--address", "ray://h:10001"], env) == [
        "launch",
        "--storage=gs://x",
        "--address",
        "ray://h:10001",
    ]
    assert entry.build_argv(["resume", "s3://b/p/imagenet"], env) == [
        "resume",
        "s3://b/p/imagenet",
        "--address",
        "auto",
    ]
    assert entry.build_argv(["validate", "--space", "x.yaml"], env) == [
        "validate",
        "--space",
        "x.yaml",
    ]


def test_entry_main_runs_the_cli_from_the_repo(entry, tmp_path, monkeypatch):
    seen = {}

    def fake_main(argv):
        seen.update(argv=argv, cwd=Path.cwd())
        return 0

    cli = types.ModuleType("sd_tune.cli")
    cli.main = fake_main
    monkeypatch.setitem(sys.modules, "sd_tune", types.ModuleType("sd_tune"))
    monkeypatch.setitem(sys.modules, "sd_tune.cli", cli)
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("SD_TUNE_HOME", str(tmp_path))
    monkeypatch.delenv("SD_TUNE_STORAGE", raising=False)
    assert entry.main(["--space", "search_spaces/smoke.yaml"]) == 0
    assert seen == {
        "argv": ["launch", "--space", "search_spaces/smoke.yaml", "--address", "auto"],
        "cwd": tmp_path.resolve(),
    }
