"""Which Python packages the Slicer effect must still install, found without importing them.

Slicer ships Python with numpy, but not torch or SAM. torch and torchvision come from the PyTorch
extension (`PyTorchUtils`, which picks the CUDA build that fits the machine); everything else the
core imports at run time is installed with pip, after the user agrees.
"""

from __future__ import annotations

import importlib.util
from typing import Dict, List

#: Import name -> pip requirement of every non-torch package the core needs inside Slicer.
PIP_REQUIREMENTS: Dict[str, str] = {
    "segment_anything": "segment-anything",
    "scipy": "scipy",
    "skimage": "scikit-image",
    "requests": "requests",
    "urllib3": "urllib3",  # requests brings it; downloads read its stream directly
    "filelock": "filelock",
    "platformdirs": "platformdirs",
    "xxhash": "xxhash",
}
#: Installed through the PyTorch extension, never with pip directly.
TORCH_MODULES = ("torch", "torchvision")


def _is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def is_torch_installed() -> bool:
    return all(_is_installed(module) for module in TORCH_MODULES)


def get_missing_requirements() -> List[str]:
    """pip requirements of the packages that are not installed yet, in install order."""
    return [requirement for module, requirement in PIP_REQUIREMENTS.items() if not _is_installed(module)]
