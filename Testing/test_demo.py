"""The README's main job, `medicosam demo`, run as a user runs it: a fresh process, no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import SimpleITK as sitk
import torch

from medicosam.models.config import build_sam, detect_config


def test_demo_trains_exports_and_segments_in_3d(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "MEDICOSAM_OFFLINE": "1"}
    start = time.monotonic()
    completed = subprocess.run([sys.executable, "-m", "medicosam.cli", "demo", "--out", str(out)], env=env,
                               capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - start
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert elapsed < 600

    summary = json.loads((out / "summary.json").read_text())
    for name in summary["outputs"]:
        assert (out / name).is_file(), name
    assert summary["iterations"] == 300
    assert 0.0 <= summary["dice_trained"] <= 1.0 and 0.0 <= summary["dice_untrained"] <= 1.0

    mask = sitk.ReadImage(str(out / "white_matter_mask.nii.gz"))
    image = sitk.ReadImage(str(out / "icbm152_t1_2mm.nii.gz"))
    assert mask.GetSize() == image.GetSize() and mask.GetSpacing() == image.GetSpacing()
    assert sitk.GetArrayFromImage(mask).any()

    state = torch.load(out / "medicosam_tiny.pt", weights_only=True)
    build_sam(detect_config(state)).load_state_dict(state)  # plain SAM keys, strict
