"""SAM2's video engine against SAM's prompt propagation: one object through one real volume, same run.

    python bench/sam2_propagation.py [--arch vit_b] [--sam2 tiny] [--fast] [--device auto] [--json out.json]

From the middle coronal slice of ICBM152 (axis 1, 197 x 189 px), the white-matter mask of that
slice is the seed of both paths, with the rule of bench/propagation.py (no IoU stop; a side ends
at its first empty mask, the border or `--max-slices`):

- `sam_prompt_propagation`: `VolumePredictor.propagate` (a prompt derived from the neighbour's
  mask, one SAM embedding per reached slice; look-ahead batching on CUDA);
- `sam2_video`: `Sam2VolumePredictor.propagate` (the slices as video frames, SAM2's memory bank).

Each reports seconds, slices predicted and written, ms per predicted slice, and peak memory: CUDA
max allocated, or on the CPU the process's peak RSS (VmHWM, reset before each path) and its growth
over the RSS before the path. `sam2_vs_sam` holds the ratios b / a of the same run. Weights are
random (seeded): speed does not depend on them, but how far a side gets does, so compare ms per
slice rather than seconds. `--arch tiny` pairs the tiny SAM with the reduced SAM2 of the tests
(both 256 px); an official SAM size pairs with an official SAM2.1 size (1024 px).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # sam2's propagate_in_video draws a progress bar per pass

import numpy as np
import torch
from common import (
    ARCHS,
    add_common_arguments,
    get_bench_device,
    get_bench_sam,
    get_environment,
    get_peak_memory_mib,
    load_icbm152,
    reset_peak_memory,
    synchronize,
    write_report,
)

from medicosam.embedding_cache import EmbeddingCache
from medicosam.predictor import VolumePredictor, get_speed_options
from medicosam.propagation import PropagationConfig
from medicosam.sam2_models import OFFICIAL_SAM2, Sam2Config, build_sam2_model, get_reduced_config
from medicosam.sam2_predictor import Sam2VolumePredictor

AXIS = 1
#: SAM2.1 sizes by registry name (`sam2.1_hiera_<name>`); `reduced` is the tests' CPU model.
SAM2_SIZES = {"reduced": None, "tiny": (96, 12), "small": (96, 16), "base_plus": (112, 24), "large": (144, 48)}
CACHE_BYTES = 8 * 1024**3


def get_bench_sam2(size: str, device: torch.device, seed: int = 0):
    """A real SAM2.1 (`sam2`'s classes and config) of `size` with seeded random weights."""
    torch.manual_seed(seed)
    config = get_reduced_config() if size == "reduced" else Sam2Config(OFFICIAL_SAM2[SAM2_SIZES[size]])
    return build_sam2_model(config, device=str(device)), config


def get_parameter_count(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def get_rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory (`VmRSS`) or its peak since the last reset (`VmHWM`)."""
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Set VmHWM back to the current RSS (Linux >= 4.0), so each path's peak is its own."""
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")


def get_paths(sam, sam2, volume: np.ndarray, fast: bool) -> dict:
    """Makers of a fresh predictor (empty cache) of each engine: one lives at a time, so the memory
    one path freed is not counted in the next one's peak."""
    return {
        "sam_prompt_propagation": lambda: VolumePredictor(sam, volume, model_id="sam",
                                                          cache=EmbeddingCache(CACHE_BYTES), **get_speed_options(fast)),
        "sam2_video": lambda: Sam2VolumePredictor(sam2, volume, model_id="sam2", cache=EmbeddingCache(CACHE_BYTES),
                                                  fast=fast),
    }


def release_freed_memory(device: torch.device) -> None:
    """Give freed memory back (Python objects, glibc's heap, CUDA's cache) before a baseline is read."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


def run_path(predictor, seed_index: int, seed: np.ndarray, config: PropagationConfig, device: torch.device) -> dict:
    """One timed propagation with its memory peak; `slices_predicted` counts the empty stop slices too."""
    steps = []
    release_freed_memory(device)
    reset_peak_memory(device)
    baseline = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else get_rss_mib()
    if device.type != "cuda":
        reset_peak_rss()
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        result = predictor.propagate(AXIS, {seed_index: seed}, config,
                                     progress=lambda done, total: steps.append(done))
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = get_peak_memory_mib(device) if device.type == "cuda" else get_rss_mib("VmHWM")
    predicted = steps[-1] if steps else 0
    row = {"seconds": seconds, "slices_predicted": predicted, "slices_written": len(result.masks),
            "ms_per_slice": 1e3 * seconds / max(predicted, 1),
            "stopped_at": result.stopped_at,
            "stopped": {side: reason.value for side, reason in result.reasons.items()},
            "peak_memory_mib": peak, "memory_growth_mib": peak - baseline,
            "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"}
    if isinstance(predictor, VolumePredictor):  # the video engine embeds frames itself, past this counter
        row["encoder_calls"] = predictor.encoder_calls
    return row


def get_ratios(sam: dict, sam2: dict) -> dict:
    return {key: sam2[key] / sam[key] if sam[key] else None
            for key in ("ms_per_slice", "seconds", "peak_memory_mib", "memory_growth_mib")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_b", choices=ARCHS, help="the SAM side")
    parser.add_argument("--sam2", default=None, choices=tuple(SAM2_SIZES),
                        help="the SAM2.1 side (default: reduced for --arch tiny, else tiny, the paper's size)")
    parser.add_argument("--fast", action="store_true", help="both engines' fast path (get_speed_options; "
                        "SAM2: bf16 autocast on CUDA), as the tools' speed switch")
    parser.add_argument("--max-slices", type=int, default=None, help="propagation range per side (default: all)")
    add_common_arguments(parser)
    args = parser.parse_args()
    sam2_size = args.sam2 or ("reduced" if args.arch == "tiny" else "tiny")

    device = get_bench_device(args)
    data = load_icbm152()
    volume, wm = data["t1"], data["wm"]
    seed_index = volume.shape[AXIS] // 2
    seed = np.take(wm, seed_index, AXIS)
    sam = get_bench_sam(args.arch).to(device)
    sam2, sam2_config = get_bench_sam2(sam2_size, device)
    config = PropagationConfig(iou_threshold=0.0, max_slices=args.max_slices)

    paths = get_paths(sam, sam2, volume, args.fast)
    with torch.inference_mode():  # first calls (allocator, oneDNN, cuBLAS) untimed
        for make_predictor in paths.values():
            make_predictor().propagate(AXIS, {seed_index: seed}, PropagationConfig(iou_threshold=0.0, max_slices=1))

    report = {"bench": "sam2_propagation", "arch": args.arch, "sam2": sam2_config.name, "sam2_size": sam2_size,
              "fast": args.fast, "axis": AXIS, "seed_index": seed_index, "seed_pixels": int(seed.sum()),
              "image_size": {"sam": int(sam.image_encoder.img_size), "sam2": sam2_config.image_size},
              "parameters": {"sam": get_parameter_count(sam), "sam2": get_parameter_count(sam2)},
              **get_environment(device)}
    report["paths"] = {name: run_path(make_predictor(), seed_index, seed, config, device)
                       for name, make_predictor in paths.items()}
    report["sam2_vs_sam"] = get_ratios(report["paths"]["sam_prompt_propagation"], report["paths"]["sam2_video"])
    for name, row in report["paths"].items():
        print(f"{name:>22} {row['seconds']:8.2f} s  {row['slices_predicted']:4d} slices  "
              f"{row['ms_per_slice']:8.1f} ms/slice  peak {row['peak_memory_mib']:8.0f} MiB "
              f"(+{row['memory_growth_mib']:.0f})", flush=True)
    ratios = report["sam2_vs_sam"]
    print(f"{'sam2 / sam':>22} ms/slice x{ratios['ms_per_slice']:.2f}  peak memory x{ratios['peak_memory_mib']:.2f}",
          flush=True)
    write_report(report, args.json)


if __name__ == "__main__":
    main()
