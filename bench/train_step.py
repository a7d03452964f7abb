"""One MedicoSAM-preset training iteration: our path against the naive loop, in the same run.

    python bench/train_step.py [--arch vit_b] [--batch 7] [--objects 5] [--size 1024] [--json out.json]

Ours: `medicosam_training.objective.compute_objective` (encoder once on the batch, every object of
every image in one mask-decoder call per round), SDPA attention and bf16 autocast on CUDA, fused
AdamW; optionally activation checkpointing (what `medicosam train` runs). Naive: fp32, official
attention, the encoder and one decoder call per image per round (micro-sam's `TrainableSAM.forward`
loop), i.e. the same objective run image by image.
Both do 1 + 8 decoder rounds (the `medicosam` preset, e_sem off so both paths do the same work).
Targets on an H100/H200 at batch 7, 5 objects, 1024 px: <= 150 ms per step and <= 40 GB.
On the CPU use a smaller batch (default here: 1 image at 1024 px).
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np
import torch
from common import (
    add_common_arguments,
    get_bench_device,
    get_bench_sam,
    get_environment,
    get_peak_memory_mib,
    get_summary,
    get_times,
    reset_peak_memory,
    write_report,
)

from medicosam.acceleration import fast_attention
from medicosam_training.objective import compute_objective, get_preset
from medicosam_training.phantoms import make_phantom_2d
from medicosam_training.runtime import use_fast_attention
from medicosam_training.trainer import activation_checkpointing


def get_batch(batch: int, objects: int, size: int, device: torch.device):
    """Phantom images with `objects` objects each, at the model's size (3 x size x size, 0..255)."""
    images, masks = [], []
    for i in range(batch):
        image, instances = make_phantom_2d(size, objects, "mr", np.random.default_rng(i))
        scaled = (image - image.min()) / max(float(image.max() - image.min()), 1e-6) * 255.0
        images.append(np.repeat(scaled[None].astype(np.float32), 3, axis=0))
        ids = [v for v in np.unique(instances) if v != 0][:objects]
        masks.append(np.stack([instances == v for v in ids] + [np.zeros_like(instances, bool)] * (objects - len(ids))))
    valid = torch.tensor([[m.any() for m in image_masks] for image_masks in masks])
    return (torch.from_numpy(np.stack(images)).to(device), torch.from_numpy(np.stack(masks)).to(device),
            valid.to(device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_b")
    parser.add_argument("--batch", type=int, default=None, help="default: 7 on CUDA, 1 on the CPU")
    parser.add_argument("--objects", type=int, default=5)
    parser.add_argument("--size", type=int, default=None, help="default: the model's image size")
    parser.add_argument("--repeat", type=int, default=None, help="timed steps (default: 10 on CUDA, 1 on CPU)")
    add_common_arguments(parser)
    args = parser.parse_args()

    device = get_bench_device(args)
    cuda = device.type == "cuda"
    batch = args.batch or (7 if cuda else 1)
    repeat = args.repeat or (10 if cuda else 1)
    sam = get_bench_sam(args.arch).to(device).train()
    size = args.size or sam.image_encoder.img_size
    images, masks, valid = get_batch(batch, args.objects, size, device)
    config = get_preset("medicosam", e_sem=False)
    fused = {"fused": True} if cuda else {}
    optimizer = torch.optim.AdamW(sam.parameters(), lr=1e-5, **fused)

    def step(fast: bool, per_image: bool, checkpointing: bool):
        autocast = torch.autocast("cuda", torch.bfloat16) if fast and cuda else contextlib.nullcontext()
        rng = np.random.default_rng(0)
        optimizer.zero_grad(set_to_none=True)
        sdpa = fast and use_fast_attention(None, device)  # as `medicosam train`: on CUDA only
        with activation_checkpointing(sam.image_encoder, checkpointing), fast_attention(sam, sdpa), autocast:
            chunks = [slice(i, i + 1) for i in range(batch)] if per_image else [slice(0, batch)]
            loss = sum(compute_objective(sam, images[c], masks[c], valid[c], config, rng).loss for c in chunks)
            loss.backward()  # inside the block: checkpointing recomputes the forward with these classes
        optimizer.step()

    variants = {
        "naive_fp32_per_image": dict(fast=False, per_image=True, checkpointing=False),
        "ours": dict(fast=True, per_image=False, checkpointing=False),
        "ours_checkpointing": dict(fast=True, per_image=False, checkpointing=True),
    }
    results = {}
    for name, options in variants.items():
        reset_peak_memory(device)
        try:
            times = get_times(lambda options=options: step(**options), device, repeat, warmup=1)
            results[name] = {**get_summary(times), "peak_memory_mib": get_peak_memory_mib(device)}
        except torch.cuda.OutOfMemoryError:
            results[name] = {"error": "out of memory"}
            torch.cuda.empty_cache()
    baseline = results["naive_fp32_per_image"].get("median_s")
    for result in results.values():
        if baseline and "median_s" in result:
            result["speedup_vs_naive"] = baseline / result["median_s"]
    write_report({"bench": "train_step", **get_environment(device), "arch": args.arch, "batch": batch,
                  "objects": args.objects, "size": size, "decoder_rounds": config.n_steps + 1,
                  "ours_autocast": "bf16" if cuda else "off (fp32 on the CPU)",
                  "results": results}, args.json)


if __name__ == "__main__":
    main()
