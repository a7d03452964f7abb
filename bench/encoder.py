"""SAM image encoder: the official fp32 path against our fast paths, measured in the same run.

    python bench/encoder.py [--arch vit_b] [--device auto] [--batch-sizes 1 8] [--json out.json]

Variants (same weights, one model, the attention path chosen per call as the predictor does):
`official` (segment_anything as shipped, fp32), `official_bf16` (bf16 autocast only), `sdpa` (our
attention, fp32), `sdpa_bf16`, `sdpa_bf16_compile` (+ torch.compile of the encoder, which stays, so
it runs last; its first call, the compile, is reported apart). Each row gives ms per image, images
per second, peak CUDA memory, and the cosine similarity / max abs difference of the features
against `official` on the same real slices.
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
    get_cosine,
    get_environment,
    get_peak_memory_mib,
    get_summary,
    get_times,
    load_icbm152,
    reset_peak_memory,
    synchronize,
    write_report,
)

from medicosam.acceleration import AccelerationConfig, compile_encoder, fast_attention, get_autocast
from medicosam.normalization import get_intensity_window
from medicosam.preprocessing import get_resized_image

#: name -> (what each call runs, whether the encoder is compiled first)
VARIANTS = {
    "official": (AccelerationConfig(sdpa=False, autocast="none"), False),
    "official_bf16": (AccelerationConfig(sdpa=False, autocast="bfloat16"), False),
    "sdpa": (AccelerationConfig(autocast="none"), False),
    "sdpa_bf16": (AccelerationConfig(autocast="bfloat16"), False),
    "sdpa_bf16_compile": (AccelerationConfig(autocast="bfloat16"), True),
}
GPU_VARIANTS = list(VARIANTS)
CPU_VARIANTS = ["official", "sdpa", "sdpa_bf16"]


def get_inputs(sam, batch_size: int, device: torch.device) -> torch.Tensor:
    """`batch_size` real axial ICBM152 slices, preprocessed exactly as SamPredictor does."""
    t1 = load_icbm152()["t1"]
    window = get_intensity_window(t1, "auto")
    size = sam.image_encoder.img_size
    middle = t1.shape[0] // 2
    images = [get_resized_image(window.apply(t1[middle + i]), size) for i in range(batch_size)]
    tensor = torch.as_tensor(np.stack(images), device=device).permute(0, 3, 1, 2).contiguous()
    return sam.preprocess(tensor)


def run_variant(sam, name: str, inputs: torch.Tensor, device: torch.device, repeat: int, warmup: int):
    """(timing row, features of the last call) for one variant at one batch size."""
    config, compiled = VARIANTS[name]
    row = {"variant": name, "batch": len(inputs)}

    def forward():
        with torch.inference_mode(), fast_attention(sam.image_encoder, config.sdpa), \
                get_autocast(device, config.autocast):
            return sam.image_encoder(inputs)

    reset_peak_memory(device)
    if compiled:  # the first call (re)compiles for this shape: time it apart
        row["first_call_s"] = get_times(forward, device, repeat=1, warmup=0)[0]
    times = get_times(forward, device, repeat, warmup)
    features = forward()
    synchronize(device)
    row.update(get_summary(times))
    row["ms_per_img"] = 1e3 * row["median_s"] / len(inputs)
    row["img_per_s"] = len(inputs) / row["median_s"]
    row["peak_mib"] = get_peak_memory_mib(device)
    return row, features.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_b", choices=ARCHS)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 8 (GPU), 1 (CPU)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                        help=f"default: all on GPU, {' '.join(CPU_VARIANTS)} on CPU")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls (default: 20 GPU, 1 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: 3 GPU, 1 CPU)")
    add_common_arguments(parser)
    args = parser.parse_args()

    device = get_bench_device(args)
    gpu = device.type == "cuda"
    batch_sizes = args.batch_sizes or ([1, 8] if gpu else [1])
    variants = args.variants or (GPU_VARIANTS if gpu else CPU_VARIANTS)
    repeat = args.repeat or (20 if gpu else 1)
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    # the reference first, compiled variants last (compiling is for good)
    variants = sorted(["official"] + [v for v in variants if v != "official"], key=lambda v: VARIANTS[v][1])

    sam = get_bench_sam(args.arch).to(device)
    inputs = {batch_size: get_inputs(sam, batch_size, device) for batch_size in batch_sizes}
    rows, references, official_ms = [], {}, {}
    for name in variants:  # variant-major: a compiled encoder is compiled once, then reused
        if VARIANTS[name][1]:
            compile_encoder(sam)
        for batch_size in batch_sizes:
            row, features = run_variant(sam, name, inputs[batch_size], device, repeat, warmup)
            reference = references.setdefault(batch_size, features)
            row["cosine_vs_official"] = get_cosine(features, reference)
            row["max_abs_diff"] = float((features - reference).abs().max())
            row["speedup_vs_official"] = official_ms.setdefault(batch_size, row["ms_per_img"]) / row["ms_per_img"]
            rows.append(row)
            print(f"{name:>18} bs={batch_size:<3} {row['ms_per_img']:9.2f} ms/img {row['img_per_s']:8.2f} img/s "
                  f"x{row['speedup_vs_official']:5.2f} cos={row['cosine_vs_official']:.6f}", flush=True)
    write_report({"bench": "encoder", "arch": args.arch, **get_environment(device), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
