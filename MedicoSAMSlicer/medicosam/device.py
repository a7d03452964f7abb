"""Torch device and CPU thread choices shared by the CLI, the Slicer effect and training."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

from .errors import MedicoSAMError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
THREADS_ENV = "MEDICOSAM_NUM_THREADS"


def get_device(name: str = "auto"):
    """`torch.device` for "auto" (CUDA, else Apple MPS, else CPU), "cpu", "cuda[:n]" or "mps"."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.split(":")[0] not in DEVICE_CHOICES[1:]:
        raise MedicoSAMError(f"unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MedicoSAMError("device 'cuda' was asked for but torch sees no CUDA GPU: use --device cpu "
                             "or install a CUDA build of torch")
    return torch.device(name)


def get_cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> Optional[int]:
    """CPUs a container's CPU quota allows (cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`), rounded
    up; None without a quota (or off Linux)."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
        quota_file, period_file = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            quota, period = int(quota_file.read_text()), int(period_file.read_text())
            return None if quota <= 0 else max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        pass
    return None


def get_cpu_budget() -> int:
    """CPUs this process can really use: its affinity mask, capped by a container's CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = get_cgroup_cpu_limit()
    return max(1, min(cpus, limit) if limit else cpus)


def configure_threads(threads: Optional[int] = None) -> int:
    """Set torch's CPU threads for this process and return how many it uses.

    `threads` (a --threads option) wins, then $MEDICOSAM_NUM_THREADS; a user's OMP_NUM_THREADS is
    left alone (torchrun sets it too); otherwise torch's default of one thread per core is capped at
    `get_cpu_budget()`: torch counts the host's cores, so a container limited to 4 CPUs on a 64-core
    host would run 32 threads that mostly wait for each other (measured here: 10x slower).
    """
    import torch

    if threads is None and os.environ.get(THREADS_ENV):
        try:
            threads = int(os.environ[THREADS_ENV])
        except ValueError:
            threads = 0
        if threads < 1:
            raise MedicoSAMError(f"{THREADS_ENV}={os.environ[THREADS_ENV]!r} is not a thread count: "
                                 "set it to a whole number >= 1 or unset it")
    if threads is not None:
        if threads < 1:
            raise MedicoSAMError(f"--threads {threads}: use 1 or more")
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(torch.get_num_threads(), get_cpu_budget()))
    return torch.get_num_threads()
