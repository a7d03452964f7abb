#!/usr/bin/env bash
# Stage, on this (CPU) machine, what the GPU machine lacks for bench/run_gpu.sh: it has torch,
# torchvision, numpy, scipy, pillow, pyyaml, tqdm and portalocker but no segment_anything, sam2,
# SimpleITK or nilearn, and no network.
# Writes .bench_gpu/ (git-ignored through .git/info/exclude, ~9 MB): the installed segment_anything
# and sam2 packages (with hydra, omegaconf, antlr4 and iopath, all pure Python) and ICBM152 T1 +
# white matter as one .npz (third-party data: carried, never committed).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=.bench_gpu
grep -qxF "/$STAGE/" .git/info/exclude 2>/dev/null || echo "/$STAGE/" >> .git/info/exclude
rm -rf "$STAGE" && mkdir -p "$STAGE/site"
python - "$STAGE" <<'PY'
import importlib
import shutil
import sys
from pathlib import Path

import numpy as np
import segment_anything
import SimpleITK as sitk

from medicosam_training.sample_data import get_nilearn_icbm152

stage = Path(sys.argv[1])
shutil.copytree(Path(segment_anything.__file__).parent, stage / "site" / "segment_anything",
                ignore=shutil.ignore_patterns("__pycache__"))
# bench/sam2_propagation.py: sam2 and what it imports that the device image lacks (all pure Python)
for name in ("sam2", "hydra", "omegaconf", "antlr4", "iopath"):
    shutil.copytree(Path(importlib.import_module(name).__file__).parent, stage / "site" / name,
                    ignore=shutil.ignore_patterns("__pycache__", "csrc"))
arrays = {kind: sitk.GetArrayFromImage(sitk.ReadImage(str(get_nilearn_icbm152(kind)))) for kind in ("t1", "wm")}
np.savez_compressed(stage / "icbm152.npz", **arrays)
print("staged", sorted(str(p.relative_to(stage)) for p in stage.iterdir()))
PY
du -sh "$STAGE"
