"""The ``sd-tune`` command as a user runs it: a real subprocess, its output and exit code."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sd_tune.cli", *args], capture_output=True,
                          text=True, timeout=120)


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
