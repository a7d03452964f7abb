"""Click-to-mask on a cached embedding: official SamPredictor.predict against our predictor, same run.

    python bench/decoder.py [--arch vit_b] [--device auto] [--objects 8] [--json out.json]

Times (1) one click (one positive point, three masks, best kept) and (2) `--objects` objects on
one slice: the official path loops over `SamPredictor.predict`, ours decodes them in one batched
call. `ours` runs the official modules; `ours_fast`, on the same model, the SDPA attention (its
embedding computed under the fast path's autocast, bf16 on CUDA). The IoU of each mask with the official one checks
that the fast path segments the same thing.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import (
    ARCHS,
    add_common_arguments,
    get_bench_device,
    get_bench_sam,
    get_environment,
    get_summary,
    get_times,
    load_icbm152,
    write_report,
)
from segment_anything import SamPredictor

from medicosam.acceleration import AccelerationConfig
from medicosam.overlap import get_iou
from medicosam.predictor import VolumePredictor
from medicosam.prompts import Prompts


def get_points(mask: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` (x, y) pixels inside `mask`, drawn reproducibly."""
    rows, cols = np.nonzero(mask)
    picks = np.random.default_rng(seed).choice(len(rows), size=n, replace=False)
    return np.stack([cols[picks], rows[picks]], axis=1).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_b", choices=ARCHS)
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=None, help="timed calls (default: 50 GPU, 10 CPU)")
    add_common_arguments(parser)
    args = parser.parse_args()

    device = get_bench_device(args)
    repeat = args.repeat or (50 if device.type == "cuda" else 10)
    data = load_icbm152()
    index = int(np.argmax(data["wm"].sum(axis=(1, 2))))
    points = get_points(data["wm"][index], args.objects)
    one_label = np.array([1])

    sam = get_bench_sam(args.arch).to(device)
    predictors = {
        "ours": VolumePredictor(sam, data["t1"], model_id=args.arch),
        "ours_fast": VolumePredictor(sam, data["t1"], model_id=args.arch, acceleration=AccelerationConfig()),
    }
    official = SamPredictor(sam)
    official.set_image(predictors["ours"].window.apply(predictors["ours"].get_slice(0, index)))
    official_masks = []
    for point in points:
        masks, scores, _ = official.predict(point[None], one_label, multimask_output=True)
        official_masks.append(masks[int(np.argmax(scores))])

    def official_click():
        official.predict(points[:1], one_label, multimask_output=True)

    def official_objects():
        for point in points:
            official.predict(point[None], one_label, multimask_output=True)

    rows = [{"path": "official", "click": get_summary(get_times(official_click, device, repeat)),
             "objects": get_summary(get_times(official_objects, device, max(repeat // 5, 2)))}]
    prompts = [Prompts(points=point[None], labels=one_label) for point in points]
    for name, predictor in predictors.items():
        predictor.get_embedding(0, index)
        with torch.inference_mode():
            click = get_times(lambda p=predictor: p.predict(0, index, prompts[0]), device, repeat)
            objects = get_times(lambda p=predictor: p.predict(0, index, prompts), device, max(repeat // 5, 2))
            masks = predictor.predict(0, index, prompts).masks
        ious = [get_iou(ours, theirs) for ours, theirs in zip(masks, official_masks)]
        rows.append({"path": name, "click": get_summary(click), "objects": get_summary(objects),
                     "iou_vs_official": {"min": min(ious), "mean": float(np.mean(ious))}})
    for row in rows:
        row["click_ms"] = 1e3 * row["click"]["median_s"]
        row["objects_ms"] = 1e3 * row["objects"]["median_s"]
        row["click_ratio_vs_official"] = row["click_ms"] / rows[0]["click_ms"]
        row["objects_ratio_vs_official"] = row["objects_ms"] / rows[0]["objects_ms"]
        print(f"{row['path']:>10} click {row['click_ms']:8.2f} ms (x{row['click_ratio_vs_official']:.2f})  "
              f"{args.objects} objects {row['objects_ms']:8.2f} ms (x{row['objects_ratio_vs_official']:.2f})",
              flush=True)
    write_report({"bench": "decoder", "arch": args.arch, "objects": args.objects, **get_environment(device),
                  "rows": rows}, args.json)


if __name__ == "__main__":
    main()
