"""Which Python packages the Slicer effect must still install, found without importing them.

Slicer ships Python with numpy and requests, but not torch or SAM. torch and torchvision come from the
PyTorch extension (`PyTorchUtils`, which picks the CUDA build that fits the machine); everything else the
core imports at run time is installed with pip, after the user agrees. What is needed depends on where
the model runs: on a server (`medicosam serve`) the effect uses `medicosam.client` alone, so it needs
only what Slicer bundles; SAM2 models need the SAM2 family's optional packages on top of the SAM ones.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Dict, List

from ..errors import InputError

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
#: What `medicosam.client` needs when the model runs on a server (Slicer bundles both).
CLIENT_REQUIREMENTS: Dict[str, str] = {"requests": "requests", "urllib3": "urllib3"}
#: The SAM2 family's optional packages (the `[sam2]` extra), installed when a SAM2 model is chosen.
SAM2_REQUIREMENTS: Dict[str, str] = {
    "sam2": "sam2==1.1.0",
    "hydra": "hydra-core==1.3.8",
    "iopath": "iopath==0.1.10",
    "omegaconf": "omegaconf",
    "PIL": "pillow",
}
#: sam2 is an sdist: built without its optional CUDA kernel, against the torch already installed (pip's
#: build isolation would download a second torch).
SAM2_BUILD_ENVIRONMENT = {"SAM2_BUILD_CUDA": "0"}
SAM2_PIP_OPTIONS = "--no-build-isolation"
SAM2_MIN_PYTHON = (3, 10)
#: Installed through the PyTorch extension, never with pip directly.
TORCH_MODULES = ("torch", "torchvision")


def _is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def is_torch_installed() -> bool:
    return all(_is_installed(module) for module in TORCH_MODULES)


def check_family_supported(family: str) -> None:
    """InputError when this Python cannot run the model family (sam2 needs Python 3.10: Slicer 5.10+)."""
    if family == "sam2" and sys.version_info[:2] < SAM2_MIN_PYTHON:
        raise InputError(f"SAM2 models need Python {'.'.join(map(str, SAM2_MIN_PYTHON))} or later (Slicer 5.10 "
                         f"or later); this Slicer runs Python {sys.version_info[0]}.{sys.version_info[1]}. "
                         "Choose a SAM model, or run SAM2 on a server (Run on: server).")


def get_requirements(family: str = "sam", remote: bool = False) -> Dict[str, str]:
    """Import name -> pip requirement of what the effect needs: the client alone when `remote`."""
    if remote:
        return dict(CLIENT_REQUIREMENTS)
    return {**PIP_REQUIREMENTS, **(SAM2_REQUIREMENTS if family == "sam2" else {})}


def get_missing_requirements(family: str = "sam", remote: bool = False) -> List[str]:
    """pip requirements of the packages that are not installed yet, in install order."""
    return [requirement for module, requirement in get_requirements(family, remote).items()
            if not _is_installed(module)]
