"""sd_tune.gpu: the NVIDIA driver check, fed fake torch CUDA builds and driver versions, and
run for real on this machine (which has no NVIDIA driver)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sd_tune.gpu import (
    CudaDriverError,
    check_cuda_driver,
    cuda_driver_problem,
    driver_cuda_version,
    driver_release,
    node_driver_problem,
)


def test_a_driver_too_old_for_the_torch_build_is_one_message() -> None:
    # torch 2.14.1 (CUDA 13.0) on the 570 driver of GCP's common-cu128-ubuntu-2204-nvidia-570
    msg = cuda_driver_problem("13.0", 12080, "570.133.20", "2.14.1")
    assert msg == (
        "the NVIDIA driver 570.133.20 supports CUDA up to 12.8, but torch 2.14.1 is built for "
        "CUDA 13.0, which needs driver 580 or newer: use a machine image (or GPU node pool) "
        'with driver 580 or newer (launch/README.md, "Before you spend money"), or install a '
        "torch build for CUDA 12.8 or older"
    )
    assert "\n" not in msg
    # without the release string (no /proc/driver/nvidia/version, e.g. in some containers)
    assert cuda_driver_problem("12.4", 11080).startswith(
        "the NVIDIA driver supports CUDA up to 11.8, but torch is built for CUDA 12.4, which "
        "needs driver 525.60.13 or newer"
    )


@pytest.mark.parametrize(
    ("torch_cuda", "driver"),
    [
        ("13.0", 13000),  # exact
        ("13.0", 13020),  # newer driver
        ("12.8", 13000),  # newer major: backward compatible
        ("12.8", 12020),  # older minor, same major: CUDA minor version compatibility
    ],
)
def test_drivers_that_run_the_build(torch_cuda: str, driver: int) -> None:
    assert cuda_driver_problem(torch_cuda, driver, "580.65.06") is None


def test_no_driver_and_a_cpu_build() -> None:
    assert cuda_driver_problem("13.0", None).startswith(
        "no NVIDIA driver on this node (libcuda.so.1 cannot be loaded), but the trial asks for "
        "GPUs and torch is built for CUDA 13.0, which needs driver 580 or newer"
    )
    assert cuda_driver_problem("13.0", 0) == cuda_driver_problem("13.0", None)
    assert cuda_driver_problem(None, 13000, torch_version="2.14.1").startswith(
        "torch 2.14.1 is a CPU-only build (torch.version.cuda is None)"
    )


def test_driver_release_from_proc_formats(tmp_path: Path) -> None:
    proprietary = tmp_path / "p"
    proprietary.write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.133.20  Fri Mar "
        " 7 2025\nGCC version:  gcc version 11.4.0\n"
    )
    assert driver_release(proprietary) == "570.133.20"
    assert driver_release(tmp_path / "missing") is None


def test_this_machine() -> None:
    """The real readers: this machine's answer, whatever it is, is consistent."""
    version = driver_cuda_version()
    problem = node_driver_problem()
    if version is None:  # no NVIDIA driver here (the CPU build machine)
        assert problem is not None and problem.startswith("no NVIDIA driver on this node")
        with pytest.raises(CudaDriverError, match=r"^node 10\.0\.0\.1: no NVIDIA driver"):
            check_cuda_driver("node 10.0.0.1")
    else:
        assert problem == cuda_driver_problem(
            torch.version.cuda, version, driver_release(), torch.__version__.split("+")[0]
        )
