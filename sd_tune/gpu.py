"""A GPU node's NVIDIA driver against the CUDA build of torch, checked before a trial uses it.

A torch wheel brings its own CUDA runtime (torch 2.14.1's Linux wheel is a CUDA 13.0 build);
what it cannot bring is the kernel driver. A driver older than the CUDA major version torch
was built for makes ``torch.cuda.is_available()`` false and fails a trial deep inside its
first CUDA call. :func:`cuda_driver_problem` turns that into one message; the Ray Train glue
calls :func:`check_cuda_driver` when a GPU trial's worker starts, and ``sd-tune launch`` runs
the same check on the cluster's GPU nodes before any trial starts.

Imports only torch and the standard library.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import torch

from sd_tune.errors import SdTuneError

#: The oldest Linux driver for each CUDA major version (NVIDIA's CUDA compatibility table):
#: a driver of that branch or newer runs every minor release of that major version.
MIN_LINUX_DRIVER: dict[int, str] = {13: "580", 12: "525.60.13", 11: "450.80.02"}


class CudaDriverError(SdTuneError, RuntimeError):
    """The node's NVIDIA driver cannot run this torch build; the message says what to do."""


def cuda_version_text(version: int) -> str:
    """``cudaDriverGetVersion``'s integer as ``major.minor``.

    >>> cuda_version_text(12080), cuda_version_text(13000)
    ('12.8', '13.0')
    """
    return f"{version // 1000}.{(version % 1000) // 10}"


def cuda_driver_problem(
    torch_cuda: str | None,
    driver_cuda: int | None,
    driver_release: str | None = None,
    torch_version: str | None = None,
) -> str | None:
    """Why a driver that supports CUDA ``driver_cuda`` (``cudaDriverGetVersion``'s integer,
    e.g. 12080 for 12.8; None when no driver is found) cannot run a torch built for CUDA
    ``torch_cuda`` (``torch.version.cuda``; None for a CPU build), or None when it can.

    A driver runs every CUDA release of its own major version and older ones (CUDA minor
    version compatibility), so only the major versions are compared.

    >>> cuda_driver_problem("13.0", 13000) is None, cuda_driver_problem("12.8", 13020) is None
    (True, True)
    >>> print(cuda_driver_problem("13.0", 12080, "570.133.20", "2.14.1"))
    ... # doctest: +NORMALIZE_WHITESPACE
    the NVIDIA driver 570.133.20 supports CUDA up to 12.8, but torch 2.14.1 is built for CUDA
    13.0, which needs driver 580 or newer: use a machine image (or GPU node pool) with driver
    580 or newer (launch/README.md, "Before you spend money"), or install a torch build for
    CUDA 12.8 or older
    """
    torch_name = f"torch {torch_version}" if torch_version else "torch"
    if torch_cuda is None:
        return (
            f"{torch_name} is a CPU-only build (torch.version.cuda is None), but the trial "
            f"asks for GPUs: install a CUDA build of torch on the GPU nodes"
        )
    major, minor = (int(p) for p in torch_cuda.split(".")[:2])
    need = MIN_LINUX_DRIVER.get(major)
    need_text = f"driver {need} or newer" if need else "a newer driver"
    if driver_cuda is None or driver_cuda <= 0:
        return (
            f"no NVIDIA driver on this node (libcuda.so.1 cannot be loaded), but the trial "
            f"asks for GPUs and {torch_name} is built for CUDA {major}.{minor}, which needs "
            f"{need_text}: use a machine image (or GPU node pool) with the NVIDIA driver "
            f"installed, or set resources.use_gpu: false"
        )
    if driver_cuda // 1000 >= major:
        return None
    driver = f"the NVIDIA driver {driver_release}" if driver_release else "the NVIDIA driver"
    return (
        f"{driver} supports CUDA up to {cuda_version_text(driver_cuda)}, but {torch_name} "
        f"is built for CUDA {major}.{minor}, which needs {need_text}: use a machine image "
        f'(or GPU node pool) with {need_text} (launch/README.md, "Before you spend '
        f'money"), or install a torch build for CUDA {cuda_version_text(driver_cuda)} '
        f"or older"
    )


def driver_cuda_version() -> int | None:
    """The CUDA version this node's driver supports (``cuDriverGetVersion``, e.g. 12080), or
    None when there is no driver. Reads the driver library only: no GPU context is made."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return int(version.value)


_RELEASE = re.compile(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)")


def driver_release(proc_file: str | Path = "/proc/driver/nvidia/version") -> str | None:
    """The kernel driver's release (``580.65.06``) from ``proc_file``, or None.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    ...     _ = f.write("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  "
    ...                 "Release Build  (dvs-builder@U16)  Sun Jul 27 07:09:44 UTC 2025\\n")
    >>> driver_release(f.name)
    '580.65.06'
    >>> os.unlink(f.name)
    """
    try:
        found = _RELEASE.search(Path(proc_file).read_text())
    except OSError:
        return None
    return found.group(1) if found else None


def node_driver_problem() -> str | None:
    """:func:`cuda_driver_problem` for this node and the torch installed here."""
    return cuda_driver_problem(
        torch.version.cuda, driver_cuda_version(), driver_release(), torch.__version__.split("+")[0]
    )


def check_cuda_driver(where: str = "") -> None:
    """Raise :class:`CudaDriverError` when this node's driver cannot run this torch build;
    ``where`` (e.g. ``"node 10.0.0.5"``) prefixes the message."""
    problem = node_driver_problem()
    if problem:
        raise CudaDriverError(f"{where}: {problem}" if where else problem)
