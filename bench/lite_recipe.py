"""Which recipe finetunes LiteMedSAM best with Algorithm 1 on a small budget: short runs on real data.

    python bench/lite_recipe.py [--steps 60 [150 ...]] [--threads 1] [--variants A ...] [--out DIR] [--json r.json]

Training data: nilearn's ICBM152 T1 at 2 mm, every 2nd axial slice, grey matter, white matter and the
rest of the brain split into connected components as objects (`demo.write_training_data`). Each variant
trains a fresh LiteMedSAM of the `medicosam` preset (8 corrections, p_box 0.5, p_mask 0.5, e_sem with
a 16-wide decoder), batch 1, 5 objects, seed 0, `amp="auto"`, through `medicosam_training.trainer.train`,
so only the recipe differs; with several `--steps` budgets one run goes on from each budget to the next
(resumed from its `latest.pt`) and is measured at each (`split_lr@150`, ...):
- `paper`: every part trained at lr 1e-5, BatchNorms on each batch's statistics (the paper's settings);
- `paper_bn_running`: the same with the BatchNorms' running statistics kept;
- `split_lr`: every part, lr 1e-4 (prompt encoder, mask decoder) and 1e-5 (image encoder), running statistics;
- `frozen_encoder`: the image encoder frozen (statistics included), the rest at lr 1e-4;
- `frozen_encoder_1e-5`: the same at lr 1e-5;
- `recipe`: the family's recipe (`lite_sam.TRAINING_DEFAULTS`): `split_lr` with the three multimask heads
  started from the single-mask head (`multimask_heads="from-single"`; the variants above keep them);
- `medsam_control`: the family's recipe with the `medsam` preset (box only, no corrections, no e_sem): the
  paper's control, same data and budget.
Held out (never trained on): coronal 1 mm ICBM152 slices with their tissue components (`tissue`) and the
AAL atlas regions resampled onto them (`aal`, drawn on another brain), and BrainWeb's T1 and PD slices
with the left lateral ventricle (`brainweb`, another subject). Each model runs the paper's 2D protocol
(`evaluation.interactive_2d`, official fp32 path): point and box start, 7 corrections, the previous
logits fed back. `litemedsam` is the model before training. Before training, the script also measures
what BatchNorm on batch statistics does to LiteMedSAM at batch 1 (first decoder pass, same prompts).

Everything goes to OUT (models, one CSV per variant and budget; run again to continue); the table prints
as markdown with each run's training time (`-` where it resumed an earlier run's); OUT/summary_2d.md and
OUT/interactive_2d_curves.png (Dice per correction, the paper's Fig. 3a) hold every variant measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk
import torch
from common import add_common_arguments, get_bench_device, get_environment

from medicosam.models.checkpoint import load_sam
from medicosam.preprocessing import get_input_transform
from medicosam_training.configs import TrainConfig
from medicosam_training.dataset import FolderDataset2D, collate_objects
from medicosam_training.demo import get_brain_volumes, get_tissue_labels, write_training_data
from medicosam_training.evaluation.data import LabeledImage
from medicosam_training.evaluation.interactive_2d import (
    FIELDS_2D,
    KEY_FIELDS_2D,
    Interactive2DConfig,
    evaluate_interactive_2d,
)
from medicosam_training.evaluation.reports import get_summary, write_report_2d
from medicosam_training.evaluation.results import open_results
from medicosam_training.objective import compute_objective, get_preset
from medicosam_training.sample_data import get_aal_on_icbm152, get_itk_examples_dir, get_nilearn_icbm152
from medicosam_training.trainer import train

FROZEN = ("image_encoder",)
VARIANTS: Dict[str, dict] = {
    "litemedsam": {},
    "paper": dict(lr=1e-5, freeze=(), batchnorm="batch", multimask_heads="keep"),
    "paper_bn_running": dict(lr=1e-5, freeze=(), batchnorm="running", multimask_heads="keep"),
    "split_lr": dict(lr=1e-4, encoder_lr=1e-5, freeze=(), batchnorm="running", multimask_heads="keep"),
    "frozen_encoder": dict(lr=1e-4, freeze=FROZEN, batchnorm="running", multimask_heads="keep"),
    "frozen_encoder_1e-5": dict(lr=1e-5, freeze=FROZEN, batchnorm="running", multimask_heads="keep"),
    "recipe": dict(preset="medicosam"),  # the family's TRAINING_DEFAULTS: split_lr + multimask heads from-single
    "medsam_control": dict(preset="medsam"),
}
CORONAL = (90, 120, 150)  # 1 mm coronal planes of ICBM152 (233 of them): front, middle, back of the brain


def get_held_out() -> Dict[str, List[LabeledImage]]:
    arrays = {kind: sitk.GetArrayFromImage(sitk.ReadImage(str(get_nilearn_icbm152(kind))))
              for kind in ("t1", "gm", "wm")}
    t1, grey = arrays["t1"], arrays["gm"] > 127
    tissue = get_tissue_labels({"t1": t1, "gm": grey, "wm": (arrays["wm"] > 127) & ~grey})
    aal = get_aal_on_icbm152()
    folder = get_itk_examples_dir()
    ventricle = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "VentricleModel.png")))[..., 0] > 127
    return {
        "tissue": [LabeledImage(f"coronal{j}", t1[:, j], tissue[:, j]) for j in CORONAL],
        "aal": [LabeledImage(f"coronal{j}", t1[:, j], aal[:, j]) for j in CORONAL],
        "brainweb": [LabeledImage(name, sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{name}.png"))),
                                  ventricle.astype(np.uint8)) for name in ("BrainT1Slice", "BrainProtonDensitySlice")],
    }


def check_batchnorm(loaded, dataset, n_images: int = 8) -> dict:
    """First decoder pass (same prompts) on training images: BatchNorms on running vs batch-1 statistics."""
    objective = get_preset("medicosam", e_sem=False, n_steps=0)
    found = {}
    for mode in ("running", "batch"):
        loaded.sam.train(mode == "batch")
        losses, dices = [], []
        for index in range(n_images):
            batch = collate_objects([dataset[index]])
            with torch.no_grad():
                output = compute_objective(loaded.sam, batch["image"], batch["masks"], batch["valid"], objective,
                                           np.random.default_rng(index))
            losses.append(float(output.loss))
            dices.append(float(output.dice))
        found[mode] = {"loss": float(np.mean(losses)), "dice": float(np.mean(dices))}
    loaded.sam.eval()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[60],
                        help="training steps per variant; several: measured at each budget")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="lite-recipe")
    add_common_arguments(parser)
    args = parser.parse_args()
    get_bench_device(args)
    out = Path(args.out)
    data = out / "training-data"
    if not (data / "images").is_dir():
        write_training_data(data, get_brain_volumes(), n_phantoms=0, seed=0)
    held_out = get_held_out()
    report = {"bench": "lite_recipe", **get_environment(torch.device("cpu")), "steps": args.steps, "variants": {}}
    rows: List[dict] = []
    for name in args.variants:
        loaded = load_sam("litemedsam", offline=True)
        dataset = FolderDataset2D(data / "images", data / "labels", image_size=get_input_transform(loaded.sam),
                                  n_obj=5, min_size=25, label_mode="semantic", seed=0)
        if name == "litemedsam":
            report["batchnorm_at_batch_1"] = check_batchnorm(loaded, dataset)
            report["variants"][name], found = measure(loaded, held_out, out, name, None)
            rows += found
            continue
        recipe = dict(VARIANTS[name])
        preset = recipe.pop("preset", "medicosam")
        trained = 0.0  # seconds of training in this run; None once a budget resumed an earlier run's
        for steps in sorted(args.steps):
            config = TrainConfig(objective=get_preset(preset), iterations=steps, batch_size=1, decoder_features=16,
                                 out_dir=out / name, seed=0, resume=True, progress=sys.stderr.isatty(), **recipe)
            torch.manual_seed(0)
            result = train(loaded, dataset, None, config)
            resumed_other = result.start_iteration > 0 and trained == 0.0
            trained = None if resumed_other or trained is None else trained + result.seconds
            seconds = None if trained is None else round(trained, 1)
            key = name if len(args.steps) == 1 else f"{name}@{steps}"
            report["variants"][key], found = measure(loaded, held_out, out, key, seconds, VARIANTS[name])
            rows += found
    write_report_2d(rows, out)
    print(get_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def measure(loaded, held_out: Dict[str, List[LabeledImage]], out: Path, name: str, seconds,
            recipe=None) -> Tuple[dict, List[dict]]:
    """The paper's 2D protocol (point and box start, 7 corrections, logits fed back) on each held-out set:
    the report entry and the rows, which go to OUT/NAME.csv (a run again reads them back)."""
    protocol = Interactive2DConfig(n_corrections=7, use_mask_prompt=True, seed=0)
    started = time.time()
    results = open_results(out, name, {key: value for key, value in vars(protocol).items() if key != "batch_size"},
                           FIELDS_2D, KEY_FIELDS_2D, rows_per_key=protocol.n_corrections + 1)
    for dataset_name, samples in held_out.items():
        evaluate_interactive_2d(loaded, samples, protocol, model=name, dataset=dataset_name, results=results,
                                show_progress=False)
    summary = get_summary(results.rows, ("dataset", "start", "iteration"))
    entry = {"recipe": recipe or {}, "train_seconds": seconds, "eval_seconds": round(time.time() - started, 1),
             "dice": {f"{s['dataset']} {s['start']} it{s['iteration']}": round(float(s["mean"]), 3) for s in summary},
             "objects": {s["dataset"]: int(s["n"]) for s in summary}}
    print(json.dumps({name: entry}), flush=True)
    return entry, list(results.rows)


def get_table(report: dict) -> str:
    """Markdown: per variant and held-out set, point / box Dice at the start and after 7 corrections."""
    lines = ["| variant | data | point it0 | point it7 | box it0 | box it7 | train s |",
             "|---|---|---|---|---|---|---|"]
    for name, entry in report["variants"].items():
        for dataset in entry["objects"]:
            cells = [f"{entry['dice'].get(f'{dataset} {start} it{it}', float('nan')):.3f}"
                     for start in ("point", "box") for it in (0, 7)]
            lines.append(f"| {name} | {dataset} ({entry['objects'][dataset]}) | " + " | ".join(cells)
                         + f" | {entry['train_seconds'] or '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
