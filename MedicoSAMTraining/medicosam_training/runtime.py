"""How a training run uses the machine, for both trainers: precision, attention kernels, data loading
processes, the torchrun process group and the RNG states a checkpoint keeps.

Devices and CPU threads are the core's (`medicosam.device`); so is the precision rule, which
training applies with `training=True` (never fp16: see `get_autocast_dtype`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.distributed as torch_dist

#: `TrainConfig.amp` -> the core's autocast choice.
_AUTOCAST_OF_AMP = {"auto": "auto", "bf16": "bfloat16", "off": "none"}


def get_amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of training with `amp` ("auto", "bf16", "off") on `device`, or None for fp32."""
    from medicosam.device import get_autocast_dtype

    return get_autocast_dtype(device, _AUTOCAST_OF_AMP[amp], training=True)


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """The forward pass's autocast context for `dtype` (from `get_amp_dtype`); a no-op for fp32."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def use_fast_attention(choice: Optional[bool], device: torch.device) -> bool:
    """Whether training runs SDPA attention: the explicit choice, else only on CUDA (see TrainConfig)."""
    return device.type == "cuda" if choice is None else choice


def get_loader_options(num_workers: Optional[int], device: torch.device) -> Dict[str, Any]:
    """DataLoader options that keep the device fed: workers, pinned memory, prefetching.

    `num_workers=None` picks 0 on the CPU (the model needs every core; the datasets are cheap)
    and on CUDA up to 8 per GPU process from the CPUs this process may use, keeping one for the
    training loop. Workers prefetch 4 batches each; CUDA batches are pinned for async copies.
    """
    from medicosam.device import get_cpu_budget

    if num_workers is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        num_workers = min(8, get_cpu_budget() // local_processes - 1) if device.type == "cuda" else 0
    options: Dict[str, Any] = {"num_workers": max(0, num_workers), "pin_memory": device.type == "cuda"}
    if options["num_workers"]:
        options["prefetch_factor"] = 4
    return options


@dataclasses.dataclass
class Distributed:
    """This process's place in a torchrun launch (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module called init_process_group, so it also ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def get_distributed(device: torch.device) -> Distributed:
    """The process group of a torchrun launch (WORLD_SIZE > 1), started here if needed.

    NCCL on CUDA, gloo on the CPU; a single process gets rank 0 of 1 and no group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    owns = not torch_dist.is_initialized()
    if owns:
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")), owns_group=owns)


def get_rng_states() -> Dict[str, Any]:
    """Python, numpy and torch RNG states in a form `torch.load(weights_only=True)` accepts."""
    kind, key, position, has_gauss, cached = np.random.get_state()
    states: Dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                              "numpy": (kind, torch.from_numpy(key.astype(np.int64)), position, has_gauss, cached)}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    """Restore what `get_rng_states` saved (a resumed run draws what the uninterrupted one would)."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(states["torch"])
    kind, key, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), position, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
