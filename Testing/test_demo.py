"""The README's main job, `medicosam demo`, run as a user runs it: a fresh process, no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import SimpleITK as sitk
import torch

from medicosam.models.config import build_sam, detect_config


def test_demo_trains_exports_and_segments_in_3d(tmp_path):
    # No time limit: a loaded machine makes the demo slow, not wrong (its time is bench/demo.py's).
    out = tmp_path / "demo"
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MEDICOSAM_NUM_THREADS")}
    completed = subprocess.run([sys.executable, "-m", "medicosam.cli", "demo", "--out", str(out)],
                               env={**env, "MEDICOSAM_OFFLINE": "1"}, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "training (1 CPU thread (the command's default))" in completed.stderr  # the progress line says why

    summary = json.loads((out / "summary.json").read_text())
    for name in summary["outputs"]:
        assert (out / name).is_file(), name
    assert summary["iterations"] == 300
    assert summary["threads"] == "1 CPU thread (the command's default)"
    assert summary["image"] == "icbm152_t1_2mm.nii.gz" and summary["image"] in summary["outputs"]
    assert list(Path(summary["tensorboard_log"]).glob("events.out.tfevents.*"))
    assert 0.0 <= summary["dice_trained"] <= 1.0 and 0.0 <= summary["dice_untrained"] <= 1.0
    # What the demo shows: training helps on a structure it never saw, on the clicked slice and in 3D
    # (0.53 vs 0.19 and 0.39 vs 0.15 on this machine; the margins leave room for another CPU's rounding).
    details = summary["details"]
    assert details["trained"]["clicked_slice_dice"] > details["untrained"]["clicked_slice_dice"] + 0.1
    assert summary["dice_trained"] > summary["dice_untrained"] + 0.05

    mask = sitk.ReadImage(str(out / "white_matter_mask.nii.gz"))
    image = sitk.ReadImage(str(out / "icbm152_t1_2mm.nii.gz"))
    assert mask.GetSize() == image.GetSize() and mask.GetSpacing() == image.GetSpacing()
    assert sitk.GetArrayFromImage(mask).any()

    state = torch.load(out / "medicosam_tiny.pt", weights_only=True)
    build_sam(detect_config(state)).load_state_dict(state)  # plain SAM keys, strict


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
