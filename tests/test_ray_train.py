"""One trial on a real Ray Train cluster started by the test session: DDP with 2 gloo workers on
real Fashion-MNIST, the metrics contract, failure of a killed worker, a forced NaN (slow); and
the checks made before a trial starts: resources node by node, shared storage."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from sd_tune.config import EPOCH_METRICS, TrialConfig, space_from_dict

# The trial tests train on Ray; the resource and storage checks below are plain functions.
real_trial = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs Debian's dataset-fashion-mnist",
)


def trial(**sets: object) -> TrialConfig:
    """A short Fashion-MNIST trial with 2 workers x 0.5 CPU, plus section.key overrides."""
    data: dict = {
        "dataset": {"name": "fashion_mnist", "max_train_samples": 6000, "max_eval_samples": 1000},
        "model": {"family": "cifar_resnet", "depth": 8},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.1, "warmup_epochs": 0.2},
        "stochastic_depth": {"method": "sample", "drop_rate": 0.2},
        "resources": {"num_workers": 2, "cpus_per_worker": 0.5},
    }
    for key, value in sets.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    return space_from_dict(data).trial


def train_worker_pids() -> list[int]:
    """PIDs of live Ray Train worker processes (their title names the actor class)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                title = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"RayTrainWorker" in title:
                pids.append(int(proc.name))
    return sorted(pids)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@real_trial
def test_fashion_mnist_two_workers_learns(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sd_tune.ray_train import POLL_S, POLL_VAR, fit_trial, run_dir

    monkeypatch.delenv(POLL_VAR, raising=False)
    seen: list[dict] = []
    result = fit_trial(trial(), storage=str(tmp_path), name="learn", emit=seen.append)
    assert result.error is None
    assert os.environ[POLL_VAR] == POLL_S  # what Ray Train hands to its controller
    metrics = read_metrics(run_dir(str(tmp_path), "learn"))
    assert metrics == seen and len(metrics) == 1
    m = metrics[0]
    for key in (*EPOCH_METRICS, "test_acc"):
        assert isinstance(m[key], (int, float)) and m[key] == m[key], key
    # 10 classes: chance is 0.10; a model trained on shuffled labels stays near it.
    assert m["val_acc"] > 0.5, m
    assert m["test_acc"] > 0.5, m
    assert m["train_time_s"] < m["wall_time_s"]
    assert result.checkpoint is not None


@pytest.mark.slow
@real_trial
def test_shuffled_labels_stay_near_chance(ray_session: None, tmp_path: Path) -> None:
    """The floor above is meaningful: the same run cannot reach it without real labels."""
    from sd_tune.ray_train import fit_trial, run_dir

    fit_trial(trial(dataset__shuffle_labels=True), storage=str(tmp_path), name="shuffled")
    (m,) = read_metrics(run_dir(str(tmp_path), "shuffled"))
    assert m["val_acc"] < 0.3, m


@pytest.mark.slow
@real_trial
@pytest.mark.parametrize("method", ["sample", "block"])
def test_ranks_hold_identical_parameters(ray_session: None, tmp_path: Path, method: str) -> None:
    from sd_tune.ray_train import fit_trial, run_dir

    t = trial(
        stochastic_depth__method=method,
        train__max_steps_per_epoch=3,
        dataset__max_train_samples=1024,
    )
    fit_trial(t, storage=str(tmp_path), name=method)
    (m,) = read_metrics(run_dir(str(tmp_path), method))
    checksums = m["param_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1], checksums


@pytest.mark.slow
@real_trial
def test_killed_worker_is_restarted_and_every_epoch_reported(
    ray_session: None, tmp_path: Path
) -> None:
    import ray

    from sd_tune.ray_train import fit_trial, run_dir

    t = trial(train__epochs=3, dataset__max_train_samples=1536)
    out = run_dir(str(tmp_path), "killed")
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            log = out / "metrics.jsonl"
            if log.exists() and log.read_text().strip():
                time.sleep(1.0)  # into epoch 2
                pids = train_worker_pids()
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    killed.append(pids[-1])
                return
            time.sleep(0.5)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = fit_trial(t, storage=str(tmp_path), name="killed", max_failures=2)
    thread.join(timeout=10)
    assert killed, "no worker was killed"
    assert result.error is None
    epochs = [m["epoch"] for m in read_metrics(out)]
    assert sorted(set(epochs)) == [1, 2, 3], epochs
    assert ray.is_initialized()


@pytest.mark.slow
@real_trial
def test_forced_nan_fails_the_trial_with_its_message(ray_session: None, tmp_path: Path) -> None:
    from sd_tune.ray_train import fit_trial, root_cause

    t = trial(train__fail_at_epoch=1)
    with pytest.raises(Exception) as info:
        result = fit_trial(t, storage=str(tmp_path), name="nan", max_failures=0)
        if result.error is not None:
            raise result.error
    message = root_cause(info.value)
    assert "non-finite" in message and "epoch 1" in message and "step" in message, message
