"""What every benchmark shares: device and environment description, models, real data, timing, JSON.

Benchmarks run with random (seeded) weights: speed does not depend on them. The relative-position
tables, zero in a fresh SAM, are filled with small random values so that the bias path the fast
attention has to reproduce is really exercised by the parity numbers.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from medicosam.models.config import OFFICIAL_CONFIGS, build_sam, get_tiny_config

ARCHS = ("vit_b", "vit_l", "vit_h", "tiny")

#: Where bench/prepare_gpu.sh stores ICBM152 as numpy (for machines without nilearn / SimpleITK).
VOLUME_ENV = "MEDICOSAM_BENCH_VOLUME"


def add_common_arguments(parser) -> None:
    """--device, --threads and --json, which every benchmark takes."""
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: medicosam.device.configure_threads's choice)")
    parser.add_argument("--json", default=None, help="also write the report here")


def get_bench_device(args) -> torch.device:
    """The device of `add_common_arguments`' options, after setting the CPU thread count."""
    from medicosam.device import configure_threads, get_device

    configure_threads(args.threads)
    return get_device(args.device)


def get_device_name(device: torch.device) -> str:
    """GPU name, or the CPU model name from /proc/cpuinfo (what `lscpu` prints)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def get_environment(device: torch.device) -> dict:
    return {
        "device": get_device_name(device), "device_type": device.type,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__, "cuda": torch.version.cuda, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
    }


def get_bench_sam(arch: str, seed: int = 0):
    """A real SAM of `arch` with seeded random weights and non-zero relative-position tables."""
    torch.manual_seed(seed)
    sam = build_sam(get_tiny_config() if arch == "tiny" else OFFICIAL_CONFIGS[arch])
    with torch.no_grad():
        for name, parameter in sam.image_encoder.named_parameters():
            if "rel_pos" in name:
                parameter.normal_(0.0, 0.1)
    return sam


def load_icbm152() -> Dict[str, np.ndarray]:
    """ICBM152 T1 (uint8) and white matter (bool), 197 x 233 x 189 KJI, 1 mm.

    From nilearn + SimpleITK when installed, else from the .npz that bench/prepare_gpu.sh wrote
    (path in $MEDICOSAM_BENCH_VOLUME): the GPU machine has neither package.
    """
    path = os.environ.get(VOLUME_ENV)
    if path:
        with np.load(path) as data:
            return {"t1": data["t1"], "wm": data["wm"] > 127}
    import SimpleITK as sitk

    from medicosam_training.sample_data import get_nilearn_icbm152

    read = {kind: sitk.GetArrayFromImage(sitk.ReadImage(str(get_nilearn_icbm152(kind)))) for kind in ("t1", "wm")}
    return {"t1": read["t1"], "wm": read["wm"] > 127}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def get_times(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int = 1) -> List[float]:
    """Wall seconds of `repeat` calls after `warmup` untimed ones, synchronised on CUDA."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def get_summary(times: List[float]) -> dict:
    return {"median_s": float(np.median(times)), "min_s": float(min(times)), "n": len(times)}


def get_peak_memory_mib(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def get_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def write_report(report: dict, path: Optional[str]) -> None:
    """Print the report as JSON and write it to `path` when given."""
    text = json.dumps(report, indent=2)
    print(text, flush=True)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
