"""Torch device, precision and CPU thread choices shared by the CLI, the Slicer effect and training."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

from .errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
AUTOCAST_CHOICES = ("auto", "bfloat16", "float16", "none")
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
        raise InputError(f"unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but torch sees no CUDA GPU: use --device cpu "
                             "or install a CUDA build of torch")
    return torch.device(name)


def has_fast_cpu_bf16() -> bool:
    """True on CPUs with AMX tiles, where oneDNN runs bf16 matrix products natively."""
    import torch

    check = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch >= 2.3; absent: assume no
    return bool(check is not None and check())


def get_autocast_dtype(device, autocast: str = "auto", training: bool = False):
    """The autocast dtype on `device`, or None for plain fp32: the one precision rule of inference
    (`medicosam.acceleration.get_autocast`) and both trainers.

    "auto" is bf16 where the device runs it natively: CUDA GPUs that support it, and CPUs with AMX
    tiles (Sapphire Rapids and later: ~1.7x on the ViT-b encoder); fp32 on other CPUs and MPS, where
    bf16 is emulated, hence slower. A CUDA GPU without bf16 runs inference in fp16. The one difference
    `training` makes: training never uses fp16, whose small gradients underflow without loss scaling
    (the trainers do none), so there "auto" falls back to fp32 and "float16" is refused.
    """
    import torch

    if autocast not in AUTOCAST_CHOICES:
        raise InputError(f"unknown autocast {autocast!r}: use one of {AUTOCAST_CHOICES}")
    if training and autocast == "float16":
        raise InputError("float16 training needs loss scaling, which MedicoSAM's trainers do not do: use "
                         "bfloat16 (\"auto\") or fp32 (\"none\")")
    device = torch.device(device)
    if autocast == "none":
        return None
    if autocast != "auto":
        return getattr(torch, autocast)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else (None if training else torch.float16)
    return torch.bfloat16 if device.type == "cpu" and has_fast_cpu_bf16() else None


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


def get_thread_source(threads: Optional[int] = None) -> Optional[str]:
    """Where the user chose the thread count: "--threads", $MEDICOSAM_NUM_THREADS or $OMP_NUM_THREADS
    (in that order of precedence); None when nobody did."""
    if threads is not None:
        return "--threads"
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        if os.environ.get(name):
            return f"${name}"
    return None


def get_busy_cpus(budget: int) -> int:
    """How many of this process's `budget` CPUs other work keeps busy now: the 1-minute load average
    (os.getloadavg counts the whole host) scaled to this process's share of the host's CPUs, rounded;
    0 where the load is unknown."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0
    return min(budget, round(load * budget / max(budget, os.cpu_count() or 1)))


_chosen = (0, "")  # (threads, why) of the last configure_threads call, for describe_threads


def configure_threads(threads: Optional[int] = None, load_aware: bool = False,
                      default: Optional[int] = None) -> int:
    """Set torch's CPU threads for this process and return how many it uses.

    `threads` (a --threads option) wins, then $MEDICOSAM_NUM_THREADS; a user's OMP_NUM_THREADS is
    left alone (torchrun sets it too); otherwise torch's default of one thread per core is capped at
    `get_cpu_budget()`: torch counts the host's cores, so a container limited to 4 CPUs on a 64-core
    host would run 32 threads that mostly wait for each other (measured here: 10x slower).
    `load_aware` (long CPU jobs: `medicosam train`) also leaves out the CPUs other work keeps busy
    (`get_busy_cpus`): an OpenMP thread on a busy core stalls all others at every barrier (measured:
    a tiny-SAM training on 2 cores under a load of 5 ran 20x slower with 2 threads than with 1).
    `default` replaces that choice by a command's own count (`medicosam demo`: 1, reproducible).
    """
    import torch

    global _chosen
    source = get_thread_source(threads)
    if threads is None and source == f"${THREADS_ENV}":
        try:
            threads = int(os.environ[THREADS_ENV])
        except ValueError:
            threads = 0
        if threads < 1:
            raise InputError(f"{THREADS_ENV}={os.environ[THREADS_ENV]!r} is not a thread count: "
                                 "set it to a whole number >= 1 or unset it")
    if threads is not None:
        if threads < 1:
            raise InputError(f"--threads {threads}: use 1 or more")
        torch.set_num_threads(threads)
    elif source is None and default is not None:
        torch.set_num_threads(default)
        source = "the command's default"
    elif source is None:
        budget = get_cpu_budget()
        busy = get_busy_cpus(budget) if load_aware else 0
        torch.set_num_threads(max(1, min(torch.get_num_threads(), budget - busy)))
        source = (f"{budget} usable CPUs, {busy} busy with other work" if load_aware
                  else f"{budget} usable CPUs")
    _chosen = (torch.get_num_threads(), source)
    return torch.get_num_threads()


def describe_threads() -> str:
    """"N CPU threads (why)" for a progress line: the count torch uses now and, when it is the one
    `configure_threads` set, the reason."""
    import torch

    threads = torch.get_num_threads()
    why = f" ({_chosen[1]})" if _chosen[0] == threads and _chosen[1] else ""
    return f"{threads} CPU thread{'s' if threads > 1 else ''}{why}"
