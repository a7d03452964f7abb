"""`medicosam demo`: the whole mission on one CPU in minutes, with real MR data and no network.

1. Training data: axial slices of nilearn's MNI ICBM152 T1 (2 mm) with grey- and white-matter
   components as objects, plus procedural CT/MR/US phantoms (`phantoms.py`).
2. Train a tiny SAM (256 px, real `segment_anything` classes) with the `medicosam` preset.
3. Export it as a plain SAM checkpoint and load it back through the core, as any user would.
4. Segment a held-out structure in 3D: one hemisphere's white matter in a slab of 20 axial slices (40 mm) that
   training never saw, from one point on the slab's central slice, then propagation limited to the
   slab; the same `VolumePredictor` path the Slicer effect and `medicosam segment` use.
5. Write the mask (NIfTI on the volume's grid, beside that volume), a PNG overlay as Slicer's axial
   view shows it, and a summary with Dice, the thread count and the TensorBoard log.

One CPU thread by default (the CLI): the same seed then gives the same result bit for bit; with more
threads torch's CPU sums vary between runs and the training amplifies that (docs/training.md).

The template is a population average (smoother than a scan), and a tiny model trained for minutes
from random weights is no MedicoSAM: the demo shows the pipeline end to end, honestly measured.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

DEMO_SPACING_MM = 2


@dataclasses.dataclass
class DemoConfig:
    """Sizes of the demo; the defaults finish in a few minutes on 2 CPU cores."""

    out_dir: Path = Path("demo-output")
    preset: str = "medicosam"
    iterations: int = 300
    batch_size: int = 4
    n_obj: int = 5
    lr: float = 3e-3
    image_size: int = 128
    n_phantoms: int = 48
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


def segment_from_one_point(loaded, volume: np.ndarray, target: np.ndarray, central: int, half_width: int):
    """One point at the target's centre on the central slice, then propagation limited to the slab:
    the path the Slicer effect takes for a click and "Propagate N slices".

    Each next slice is prompted with the previous mask's box and the mask itself (micro-sam's "mask"
    mode), and the slab's extent is the only stop: a tiny model's masks change more from slice to slice
    than the default IoU stop (0.5) allows, which ended the trained model's propagation after one slice.
    Both models get the same settings."""
    from medicosam.predictor import get_volume_predictor
    from medicosam.prompts import get_center_prompt
    from medicosam.propagation import PropagationConfig, get_volume_mask

    predictor = get_volume_predictor(loaded, volume)
    prompt = get_center_prompt(target[central])
    seed = predictor.predict_mask(0, central, prompt)
    config = PropagationConfig(mode="box_mask", iou_threshold=0.0, max_slices=half_width)
    mask = get_volume_mask(predictor.propagate(0, {central: seed}, config).masks, target.shape, 0)
    mask[central + half_width:] = False  # propagation reaches one slice past the slab's top
    return mask, prompt.points[0], predictor.encoder_calls


def get_axial_flips(ijk_to_ras: np.ndarray) -> Tuple[bool, bool]:
    """(flip rows, flip columns) that show a K slice (rows J, columns I) as Slicer's axial view does:
    radiological convention, patient's right on the screen's left, anterior up. For volumes whose I
    axis runs right-left and J axis anterior-posterior (the demo's); the raw array order of the
    ICBM152 template is that view turned by 180 degrees."""
    return bool(ijk_to_ras[1, 1] > 0), bool(ijk_to_ras[0, 0] > 0)  # J towards A, I towards R


def write_overlay(path: Path, t1: np.ndarray, target: np.ndarray, mask: np.ndarray, index: int, point,
                  ijk_to_ras: np.ndarray, dice: float) -> None:
    """PNG of the prompted slice as Slicer's axial view shows it, with R/L/A/P labels and the 3D Dice:
    prediction in red, reference outline in green, the click in yellow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    flip_rows, flip_cols = get_axial_flips(ijk_to_ras)
    axes = tuple(axis for axis, flip in ((0, flip_rows), (1, flip_cols)) if flip)
    outline = target[index] & ~ndimage.binary_erosion(target[index])
    image, predicted, outline = (np.flip(a, axes) for a in (t1[index], mask[index], outline))
    height, width = image.shape
    x, y = (width - 1 - point[0] if flip_cols else point[0]), (height - 1 - point[1] if flip_rows else point[1])
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.imshow(image, cmap="gray")
    ax.imshow(np.ma.masked_where(~predicted, predicted), cmap="autumn", alpha=0.5)
    ax.imshow(np.ma.masked_where(~outline, outline), cmap="summer", alpha=1.0)
    ax.plot(x, y, "y*", markersize=12)
    for label, (u, v, align) in {"R": (0.02, 0.5, "left"), "L": (0.98, 0.5, "right"), "A": (0.5, 0.98, "center"),
                                 "P": (0.5, 0.02, "center")}.items():
        ax.text(u, v, label, transform=ax.transAxes, color="white", fontsize=14, fontweight="bold", ha=align,
                va="center" if label in "RL" else ("top" if label == "A" else "bottom"))
    ax.set_title(f"axial slice {index}: Dice {dice:.3f} (3D)\nprediction (red), reference (green), click (yellow)",
                 fontsize=10)
    ax.axis("off")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def run_demo(config: DemoConfig) -> dict:
    """Train, export, reload, segment in 3D and report; returns the summary it writes."""
    import SimpleITK as sitk
    import torch

    from medicosam.device import describe_threads
    from medicosam.models.checkpoint import export_sam, load_sam
    from medicosam.models.config import build_sam, get_tiny_config
    from medicosam.overlap import get_dice
    from medicosam.volume_io import read_volume, write_mask

    from .dataset import FolderDataset2D
    from .objective import get_preset
    from .trainer import TrainConfig, train

    start = time.time()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    volumes = get_brain_volumes()
    half_width = 10
    target, central = get_held_out_target(volumes, half_width)
    data_dir = write_training_data(out / "training-data", volumes, config.n_phantoms, config.seed, held_out=target)
    image_size = config.image_size
    dataset = FolderDataset2D(data_dir / "images", data_dir / "labels", image_size=image_size,
                              n_obj=config.n_obj, min_size=25, label_mode="semantic", seed=config.seed)

    torch.manual_seed(config.seed)
    sam = build_sam(get_tiny_config(image_size=config.image_size))
    untrained = export_sam(sam, out / "untrained.pt")
    objective = get_preset(config.preset)
    train_config = TrainConfig(objective=objective, lr=config.lr, batch_size=config.batch_size,
                               iterations=config.iterations, out_dir=out / "run", seed=config.seed,
                               decoder_features=8)
    result = train(sam, dataset, None, train_config)
    checkpoint = export_sam(sam, out / "medicosam_tiny.pt")

    image_path = out / "icbm152_t1_2mm.nii.gz"
    sitk.WriteImage(volumes["image"], str(image_path))
    volume = read_volume(image_path)
    scores = {}
    for name, path in (("untrained", untrained), ("trained", checkpoint)):
        loaded = load_sam(path, allow_custom=True)
        mask, point, encoder_calls = segment_from_one_point(loaded, volumes["t1"], target, central, half_width)
        scores[name] = {"dice": get_dice(mask, target), "clicked_slice_dice": get_dice(mask[central], target[central]),
                        "slices": int(mask.any(axis=(1, 2)).sum()), "encoder_calls": encoder_calls}
        if name == "trained":
            write_mask(mask.astype(np.uint8), volume, out / "white_matter_mask.nii.gz")
            write_overlay(out / "white_matter_overlay.png", volumes["t1"], target, mask, central, point,
                          volume.ijk_to_ras, scores[name]["dice"])
    summary = {
        "preset": config.preset, "iterations": result.iteration, "training_seconds": round(result.seconds, 1),
        "threads": describe_threads(), "training_images": len(dataset),
        "image": image_path.name, "mask": "white_matter_mask.nii.gz (on the grid of image)",
        "tensorboard_log": str(Path(train_config.out_dir) / "logs"),
        "held_out_structure": f"one hemisphere's white matter in axial slices {central - half_width}.."
                              f"{central + half_width - 1} (2 mm), never seen in training",
        "reference_slices": int(target.any(axis=(1, 2)).sum()),
        "prompt": "1 positive point on the central slice, propagation limited to the slab",
        "dice_trained": round(scores["trained"]["dice"], 3), "dice_untrained": round(scores["untrained"]["dice"], 3),
        "details": scores, "total_seconds": round(time.time() - start, 1),
        "outputs": ["medicosam_tiny.pt", image_path.name, "white_matter_mask.nii.gz", "white_matter_overlay.png",
                    "summary.json"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


#: The paper's central comparison (section 2.2): same data, same budget, three objectives.
COMPARED_PRESETS = ("medsam", "simpleft", "medicosam")


def get_coronal_samples(volumes: Dict[str, object], step: int = 6) -> list:
    """Held-out evaluation images: coronal slices (training saw axial ones) with GM = 1, WM = 2."""
    from .evaluation.data import LabeledImage

    labels = get_tissue_labels(volumes)
    labels[labels == 3] = 0
    first, last = np.flatnonzero(labels.any(axis=(0, 2)))[[0, -1]]
    return [LabeledImage(f"coronal{j:03d}", volumes["t1"][:, j, :], labels[:, j, :])
            for j in range(int(first) + step, int(last) - step + 1, step)]


def run_compare_presets(config: DemoConfig, n_corrections: int = 7) -> dict:
    """Train one tiny SAM per preset (same data, initial weights and iterations), evaluate all three
    with the paper's 2D protocol on held-out coronal slices, and write CSV, summary and plots."""
    import torch

    from medicosam.models.config import build_sam, get_tiny_config

    from .dataset import FolderDataset2D
    from .evaluation.interactive_2d import FIELDS_2D, Interactive2DConfig, evaluate_interactive_2d
    from .evaluation.reports import write_report_2d, write_table_csv
    from .objective import get_preset
    from .trainer import TrainConfig, train

    start = time.time()
    out = Path(config.out_dir)
    volumes = get_brain_volumes()
    data_dir = write_training_data(out / "training-data", volumes, config.n_phantoms, config.seed)
    dataset = FolderDataset2D(data_dir / "images", data_dir / "labels", image_size=config.image_size,
                              n_obj=config.n_obj, min_size=25, label_mode="semantic", seed=config.seed)
    samples = get_coronal_samples(volumes)
    protocol = Interactive2DConfig(n_corrections=n_corrections, seed=config.seed)
    rows, seconds = [], {}
    for preset in ("untrained",) + COMPARED_PRESETS:
        torch.manual_seed(config.seed)
        sam = build_sam(get_tiny_config(image_size=config.image_size))
        if preset != "untrained":
            result = train(sam, dataset, None, TrainConfig(
                objective=get_preset(preset), lr=config.lr, batch_size=config.batch_size,
                iterations=config.iterations, out_dir=out / f"run-{preset}", seed=config.seed, decoder_features=8))
            seconds[preset] = round(result.seconds, 1)
        run = evaluate_interactive_2d(sam.eval(), samples, protocol, model=preset, dataset="icbm152-coronal")
        rows += run.rows
    write_table_csv([{field: row[field] for field in FIELDS_2D} for row in rows], out / "results_2d.csv")
    write_report_2d(rows, out)
    final = {}
    for row in rows:
        if int(row["iteration"]) in (0, n_corrections):
            final.setdefault((row["model"], row["start"], int(row["iteration"])), []).append(float(row["dice"]))
    table = {f"{model} {start} it{it}": round(float(np.mean(v)), 3) for (model, start, it), v in final.items()}
    summary = {"iterations": config.iterations, "training_seconds": seconds, "mean_dice": table,
               "evaluation_images": len(samples), "total_seconds": round(time.time() - start, 1)}
    (out / "compare_presets.json").write_text(json.dumps(summary, indent=2))
    return summary
