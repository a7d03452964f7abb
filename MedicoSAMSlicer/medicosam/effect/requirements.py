"""Which Python packages the Slicer effect must still install, found without importing them.

Slicer ships Python with numpy and requests, but not torch or SAM. torch and torchvision come from the
PyTorch extension (`PyTorchUtils`, which picks the CUDA build that fits the machine); everything else the
core imports at run time is installed with pip, after the user agrees. What is needed depends on where
the model runs: on a server (`medicosam serve`) the effect uses `medicosam.client` alone, so it needs
only what Slicer bundles; SAM2 models need the SAM2 family's optional packages on top of the SAM ones.
"""

from __future__ import annotations

import importlib.util
from typing import Dict, List

from ..models.families import FAMILIES, ModelFamily

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
#: Installed through the PyTorch extension, never with pip directly.
TORCH_MODULES = ("torch", "torchvision")


def _is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def is_torch_installed() -> bool:
    return all(_is_installed(module) for module in TORCH_MODULES)


def check_family_supported(family: ModelFamily) -> None:
    """InputError when this Python cannot run the model family (SAM2 needs Python 3.10: Slicer 5.10+)."""
    family.check_python()


def get_requirements(family: ModelFamily = FAMILIES["sam"], remote: bool = False) -> Dict[str, str]:
    """Import name -> pip requirement of what the effect needs: the client alone when `remote`, else the
    core's packages and the family's own (`ModelFamily.requirements`)."""
    if remote:
        return dict(CLIENT_REQUIREMENTS)
    return {**PIP_REQUIREMENTS, **family.requirements}


def get_missing_requirements(family: ModelFamily = FAMILIES["sam"], remote: bool = False) -> List[str]:
    """pip requirements of the packages that are not installed yet, in install order."""
    return [requirement for module, requirement in get_requirements(family, remote).items()
            if not _is_installed(module)]
