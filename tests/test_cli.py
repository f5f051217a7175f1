"""The ``sd-tune`` command as a user runs it: a real subprocess, its output and exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sd_tune.cli", *args], capture_output=True,
                          text=True, timeout=120)


def call(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``sd_tune.cli.main`` in this process (no interpreter start-up: the same code and exit
    code as ``run``, for the checks that need many calls)."""
    from sd_tune.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def test_rates_prints_every_block() -> None:
    result = run("rates", "--arch", "resnet50", "--drop-rate", "0.2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split()[1:] == ["layer1.0", "Bottleneck", "0.0125"]
    assert lines[16].split()[1:] == ["layer4.2", "Bottleneck", "0.2000"]
    assert lines[-1] == "16 blocks, expected depth 14.30 of 16"


def test_user_error_is_one_line_and_exit_2() -> None:
    result = run("rates", "--arch", "resnet51")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "sd-tune rates: error: `arch` must be one of" in result.stderr
    assert "Traceback" not in result.stderr
    bad_rate = run("rates", "--drop-rate", "1.5")
    assert bad_rate.returncode == 2
    assert "`0 <= drop_rate <= 1` must hold, but got drop_rate=1.5" in bad_rate.stderr


def write_space(tmp_path: Path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("command", ["validate", "launch", "train"])
def test_bad_space_file_lists_every_problem_and_exits_2(tmp_path: Path, command: str) -> None:
    space = write_space(tmp_path, "name: bad\nmodel: {family: resnet, depth: 51}\n"
                                  "train: {epochs: 0, warmup_epochs: 0, lr: fast}\nbogus: 1\n")
    result = run(command, "--space", space)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{space}: 4 problems:" in result.stderr
    for key in ("bogus", "model.depth", "train.epochs", "train.lr"):
        assert f"  {key}: " in result.stderr


def test_missing_file_and_bad_set_exit_2(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    missing = call(capsys, "validate", "--space", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    bad_set = call(capsys, "validate", "--space", "search_spaces/smoke.yaml", "--set", "epochs")
    assert bad_set.returncode == 2 and "--set takes section.key=value" in bad_set.stderr
    wrong = call(capsys, "validate", "--space", "search_spaces/smoke.yaml", "--set",
                 "stochastic_depth.drop_rate=2")
    assert wrong.returncode == 2 and "stochastic_depth.drop_rate" in wrong.stderr


def test_validate_ok_for_every_shipped_space(capsys: pytest.CaptureFixture[str]) -> None:
    for path in sorted(Path("search_spaces").glob("*.yaml")):
        result = call(capsys, "validate", "--space", str(path))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{path}: ok:")


def test_missing_data_fails_before_ray_with_the_fix(tmp_path: Path) -> None:
    space = write_space(tmp_path, f"name: nodata\ndataset: {{name: cifar10, root: {tmp_path}}}\n")
    for command in ("launch", "train"):
        result = run(command, "--space", space, "--storage", str(tmp_path))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and str(tmp_path) in result.stderr
        assert not (tmp_path / "nodata").exists()


@pytest.mark.parametrize("command", ["report", "resume"])
def test_no_experiment_at_a_folder_or_uri_exits_2(tmp_path: Path, command: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for where in ("file:///nonexistent/smoke", str(tmp_path),
                  f"file://{tmp_path}?endpoint_override=127.0.0.1:9000&scheme=http"):
        result = call(capsys, command, where)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "is not an sd-tune experiment folder (no sd_tune_space.json)" in result.stderr
        assert where.split("?")[0] in result.stderr
    unknown = call(capsys, command, "nosuch://bucket/smoke")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "cannot read nosuch://bucket/smoke/sd_tune_space.json" in unknown.stderr


def test_storage_defaults_to_the_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """$SD_TUNE_STORAGE (what the launcher configs and the RayJob set) stands in for
    --storage; --storage wins. Seen before Ray starts: the experiment exists there."""
    for root in ("env", "flag"):
        (tmp_path / root / "smoke").mkdir(parents=True)
        (tmp_path / root / "smoke" / "sd_tune_space.json").write_text("{}")
    monkeypatch.setenv("SD_TUNE_STORAGE", str(tmp_path / "env"))
    space = ("launch", "--space", "search_spaces/smoke.yaml")
    result = call(capsys, *space)
    assert result.returncode == 2
    assert f"already exists in {tmp_path / 'env' / 'smoke'}" in result.stderr
    result = call(capsys, *space, "--storage", str(tmp_path / "flag"))
    assert result.returncode == 2
    assert f"already exists in {tmp_path / 'flag' / 'smoke'}" in result.stderr


@pytest.mark.slow
def test_gpu_space_on_a_cpu_cluster_fails_with_the_numbers(tmp_path: Path) -> None:
    space = write_space(tmp_path, "name: gpu\nresources: {num_workers: 2, use_gpu: true}\n")
    result = run("launch", "--space", space, "--storage", str(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "needs 2 workers x 1.0 GPU = 2.0 GPUs but the Ray cluster has 0.0 GPUs" in \
        result.stderr
    assert "Traceback" not in result.stderr
