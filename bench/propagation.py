"""A volume's worth of slices: the official per-slice loop against our predictor, same run.

    python bench/propagation.py [--arch vit_b] [--device auto] [--slices 200] [--json out.json]

Two workloads on real ICBM152 coronal slices (axis 1, 197 x 189 px):

1. `all_slices`: embed and segment every one of `--slices` slices with one positive point each
   (the white-matter centre). Official: `SamPredictor.set_image` + `predict` per slice (one
   encoder call per slice). Ours: `VolumePredictor.get_embeddings` (`--batch-size` slices per
   encoder call) then `predict` per slice. Data-independent, so both do the same work.
2. `propagation`: micro-sam's rule (`medicosam.propagation`, single_point prompts, no IoU stop)
   from the middle slice; official = the same rule calling set_image + predict per slice,
   ours = `VolumePredictor.propagate` with look-ahead batching.

Paths: `official`; `ours` (official modules, fp32, one slice per call); `ours_fast` (SDPA, bf16
autocast on CUDA, batched, bf16 cache). Each reports seconds, encoder calls, and the IoU of its
masks with the official ones.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from common import (
    ARCHS,
    add_common_arguments,
    get_bench_device,
    get_bench_sam,
    get_environment,
    load_icbm152,
    synchronize,
    write_report,
)
from segment_anything import SamPredictor

from medicosam.acceleration import AccelerationConfig
from medicosam.embedding_cache import EmbeddingCache
from medicosam.overlap import get_iou
from medicosam.predictor import VolumePredictor
from medicosam.prompts import Prompts, get_center_point
from medicosam.propagation import PropagationConfig, propagate_mask

AXIS = 1


def get_prompt(mask: np.ndarray) -> Prompts:
    """One positive point: the centre of `mask`, or of the slice when the mask is empty."""
    point = get_center_point(mask) if mask.any() else np.array([mask.shape[1] / 2, mask.shape[0] / 2])
    return Prompts(points=np.asarray(point, np.float32)[None], labels=np.array([1]))


class OfficialLoop:
    """The naive per-slice path: set_image + predict on every slice (no cache, no batching)."""

    def __init__(self, sam, window, volume: np.ndarray):
        self.predictor, self.window, self.volume = SamPredictor(sam), window, volume
        self.encoder_calls = 0

    def predict_mask(self, axis: int, index: int, prompts: Prompts) -> np.ndarray:
        """Same signature as `VolumePredictor.predict_mask`."""
        self.predictor.set_image(self.window.apply(np.take(self.volume, index, axis)))
        self.encoder_calls += 1
        masks, scores, _ = self.predictor.predict(prompts.points, prompts.labels, multimask_output=True)
        return masks[int(np.argmax(scores))]


def get_paths(sam, volume: np.ndarray, arch: str, device: torch.device) -> dict:
    """Fresh official loop and predictors (empty caches) for each workload."""
    ours = VolumePredictor(sam, volume, model_id=arch, cache=EmbeddingCache(8 * 1024**3))
    fast = VolumePredictor(copy.deepcopy(sam), volume, model_id=arch, cache=EmbeddingCache(8 * 1024**3),
                           acceleration=AccelerationConfig(), cache_dtype="bfloat16")
    return {"official": OfficialLoop(sam, ours.window, volume), "ours": ours, "ours_fast": fast}


def run_all_slices(paths: dict, indexes: list, prompts: dict, batch_size: int, device: torch.device) -> dict:
    results, reference = {}, {}
    for name, path in paths.items():
        synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            if name != "official":
                path.get_embeddings(AXIS, indexes, batch_size=batch_size if name == "ours_fast" else 1)
            masks = {i: path.predict_mask(AXIS, i, prompts[i]) for i in indexes}
        synchronize(device)
        seconds = time.perf_counter() - start
        reference = reference or masks
        ious = [get_iou(masks[i], reference[i]) for i in indexes]
        results[name] = {"seconds": seconds, "ms_per_slice": 1e3 * seconds / len(indexes),
                         "encoder_calls": path.encoder_calls, "slices": len(indexes),
                         "iou_vs_official": {"min": float(min(ious)), "mean": float(np.mean(ious))}}
        if name != "official":
            results[name]["cache_mib"] = path.cache.nbytes / 2**20
    return results


def run_propagation(paths: dict, seed_index: int, seed: np.ndarray, n_slices: int, config: PropagationConfig,
                    lookahead: int, device: torch.device) -> dict:
    results, reference = {}, None
    for name, path in paths.items():
        synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            if name == "official":
                result = propagate_mask(lambda i, p, loop=path: loop.predict_mask(AXIS, i, p), {seed_index: seed},
                                        n_slices, config)
            else:
                result = path.propagate(AXIS, {seed_index: seed}, config,
                                        lookahead=lookahead if name == "ours_fast" else 1)
        synchronize(device)
        seconds = time.perf_counter() - start
        reference = reference or result.masks
        common = [i for i in reference if i in result.masks]
        ious = [get_iou(result.masks[i], reference[i]) for i in common] or [0.0]
        results[name] = {"seconds": seconds, "slices_written": len(result.masks),
                         "encoder_calls": path.encoder_calls,
                         "stopped": {side: reason.value for side, reason in result.reasons.items()},
                         "iou_vs_official": {"min": float(min(ious)), "mean": float(np.mean(ious)),
                                             "common_slices": len(common)}}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_b", choices=ARCHS)
    parser.add_argument("--slices", type=int, default=200, help="slices of workload 1 (the volume has 233)")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per encoder call (ours_fast)")
    parser.add_argument("--max-slices", type=int, default=None, help="propagation range per side (default: all)")
    parser.add_argument("--skip-propagation", action="store_true")
    add_common_arguments(parser)
    args = parser.parse_args()

    device = get_bench_device(args)
    data = load_icbm152()
    volume, wm = data["t1"], data["wm"]
    n_total = volume.shape[AXIS]
    first = (n_total - min(args.slices, n_total)) // 2
    indexes = list(range(first, first + min(args.slices, n_total)))
    prompts = {i: get_prompt(np.take(wm, i, AXIS)) for i in indexes}
    sam = get_bench_sam(args.arch).to(device)

    warm = get_paths(sam, volume, args.arch, device)  # first calls (allocator, oneDNN, cuBLAS) untimed
    with torch.inference_mode():
        for path in warm.values():
            path.predict_mask(AXIS, indexes[0], prompts[indexes[0]])

    report = {"bench": "propagation", "arch": args.arch, "axis": AXIS, "batch_size": args.batch_size,
              **get_environment(device)}
    report["all_slices"] = run_all_slices(get_paths(sam, volume, args.arch, device), indexes, prompts,
                                          args.batch_size, device)
    if not args.skip_propagation:
        seed_index = n_total // 2
        seed = warm["official"].predict_mask(AXIS, seed_index, get_prompt(np.take(wm, seed_index, AXIS)))
        config = PropagationConfig(iou_threshold=0.0, max_slices=args.max_slices)
        report["propagation"] = run_propagation(get_paths(sam, volume, args.arch, device), seed_index, seed,
                                                n_total, config, args.batch_size, device)
    for workload in ("all_slices", "propagation"):
        for name, row in report.get(workload, {}).items():
            print(f"{workload:>12} {name:>10} {row['seconds']:9.2f} s  encoder calls {row['encoder_calls']:4d}  "
                  f"IoU vs official mean {row['iou_vs_official']['mean']:.4f}", flush=True)
    write_report(report, args.json)


if __name__ == "__main__":
    main()
