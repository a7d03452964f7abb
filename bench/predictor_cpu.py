"""Our predictor path against the official `segment_anything.SamPredictor`, measured in the same run.

    python bench/predictor_cpu.py [--arch vit_b] [--slices 3] [--clicks 5] [--json out.json]

Times (1) embedding a slice and (2) a click-to-mask on a cached embedding, for both paths on the
same model, slices and prompts, and prints ratios ours/official (target <= 1.0). Then propagates
a real structure (nilearn white matter) with `single_point` prompts over a limited range and counts
encoder calls against the slices reached. Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from common import load_icbm152
from segment_anything import SamPredictor

from medicosam.models.config import OFFICIAL_CONFIGS, build_sam, get_tiny_config
from medicosam.predictor import VolumePredictor
from medicosam.prompts import Prompts, get_center_point
from medicosam.propagation import PropagationConfig


def _best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_b", choices=["vit_b", "tiny"])
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--propagate-slices", type=int, default=10,
                        help="slices to each side of the seed in the propagation count (a vit_b slice costs seconds)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    sam = build_sam(OFFICIAL_CONFIGS["vit_b"] if args.arch == "vit_b" else get_tiny_config())
    data = load_icbm152()
    t1, wm = data["t1"], data["wm"]
    indexes = [t1.shape[0] // 2 + d for d in range(args.slices)]
    ours = VolumePredictor(sam, t1, model_id=args.arch)
    official = SamPredictor(sam)
    images = {i: ours.window.apply(ours.get_slice(0, i)) for i in indexes}
    point = get_center_point(wm[indexes[0]])
    prompt = Prompts(points=point[None], labels=np.array([1]))

    with torch.inference_mode():
        official.set_image(images[indexes[0]])  # warm-up both paths before timing
        ours._compute_embedding(0, indexes[0])
        official_embed = sum(_best_of(lambda i=i: official.set_image(images[i]), 1) for i in indexes) / len(indexes)
        ours_embed = sum(_best_of(lambda i=i: ours._compute_embedding(0, i), 1) for i in indexes) / len(indexes)
        official.set_image(images[indexes[0]])
        ours.get_embedding(0, indexes[0])
        official_click = _best_of(lambda: official.predict(point[None], np.array([1]), multimask_output=True),
                                  args.clicks)
        ours_click = _best_of(lambda: ours.predict(0, indexes[0], prompt), args.clicks)

    seed_index = int(np.argmax(wm.sum(axis=(1, 2))))
    predictor = VolumePredictor(sam, t1, model_id=args.arch)
    start = time.perf_counter()
    seed = predictor.predict_mask(0, seed_index, Prompts(points=get_center_point(wm[seed_index])[None],
                                                         labels=np.array([1])))
    config = PropagationConfig(iou_threshold=0.0, max_slices=args.propagate_slices)
    result = predictor.propagate(0, {seed_index: seed}, config)
    propagation_s = time.perf_counter() - start
    reached = len(result.masks) + sum(v is not None for v in result.stopped_at.values())

    report = {
        "device": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "arch": args.arch,
        "embed_s": {"official": official_embed, "ours": ours_embed, "ratio": ours_embed / official_embed},
        "click_ms": {"official": 1e3 * official_click, "ours": 1e3 * ours_click,
                     "ratio": ours_click / official_click},
        "propagation": {"slices_written": len(result.masks), "slices_predicted": reached,
                        "encoder_calls": predictor.encoder_calls, "seconds": propagation_s,
                        "volume_slices": t1.shape[0]},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
