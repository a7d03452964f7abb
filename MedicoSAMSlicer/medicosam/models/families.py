"""Model families: everything that depends on which kind of model a checkpoint holds, declared once.

A family says how its checkpoints are recognised and loaded, which engine predicts with it, which
packages it needs beyond the core (its pip extra, and what the Slicer effect offers to install), and
what it can do (`Capabilities`). Tools ask a loaded model or a registry entry for its family and
read these fields; no tool tests a family's name. The families themselves (`FAMILIES`, one
`ModelFamily` row each) are declared in `registry.py` beside their named models, so adding a family
is its module, its registry rows, its test and its docs (docs/architecture.md, "A new model family").

A family's module gives `recognises(state) -> bool` and `load(obj, *, checkpoint, path, device,
allow_custom)`; one that is trained or exported also gives `get_checked_config(state, source)` (the
config of a plain state dict, every key and shape checked), `EXPORT_NOTE` (who loads its exported
files) and, where its recipe differs from the paper's, `TRAINING_DEFAULTS` (`TrainConfig.with_recipe`);
one whose encoder feeds the semantic decoder (`semantic_encoder`) also gives `build(config)` (a model
of random weights) and `read_config(values)` (its config from `dataclasses.asdict`, as semantic
checkpoints store it).

This module imports neither torch nor the families' modules: the Slicer effect reads it before its
packages are installed, and each family's module is imported only when a model of it is used.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from typing import Any, FrozenSet, Mapping, Optional, Tuple

from ..errors import InputError
from ..options import get_option_fields
from ..propagation import PropagationConfig

#: Every `PropagationConfig` setting (`medicosam.propagation`); each family honours some of them (a new
#: setting is honoured by the families that name this whole set, the prompt-propagation ones).
PROPAGATION_SETTINGS = frozenset(field.name for field in get_option_fields(PropagationConfig))


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a family's models can do in the tools.

    Attributes:
        propagation_settings: the `PropagationConfig` fields its engine honours (the effect shows only these,
            the 3D evaluation searches only these).
        native_propagation: its engine carries a mask through the volume with its own memory of earlier
            slices (SAM2's video predictor), instead of prompting each slice from its neighbour's mask.
        fast: what "fast" (`--fast`, the effect's Fast box) does for it.
        trainable: `medicosam train` can finetune it with Algorithm 1.
        export_layouts: the files `medicosam export` can write of it (`segment_anything`: the plain SAM
            state dict `sam_model_registry` loads; `litemedsam`: LiteMedSAM's own state dict).
        semantic_encoder: its image encoder feeds the UNETR decoder (`train-semantic` 2D, `e_sem`).
        adapters_3d: MA-SAM's 3D adapters fit its encoder (`train-semantic` 3D).
        recommended_without_gpu: the effect recommends it where torch has neither CUDA nor MPS.
    """

    propagation_settings: FrozenSet[str]
    native_propagation: bool
    fast: str
    trainable: bool
    export_layouts: Tuple[str, ...]
    semantic_encoder: bool
    adapters_3d: bool
    recommended_without_gpu: bool = False


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """One kind of model.

    Attributes:
        name: short name, as the registry's `family` field spells it.
        label: what menus and listings call it.
        module: the module that implements `recognises(state) -> bool` and `load(state, ...)`.
        engine: `module:Class` of its volume predictor (answers `predict`, `propagate`, ...).
        requirements: import name -> pip requirement of the packages it needs beyond the core.
        extra: `pip install "medicosam[<extra>]"` installs them (empty: the core has them).
        min_python: the oldest Python its packages run on.
        capabilities: what it can do.
        build_environment, pip_options: how the Slicer effect runs pip for its packages (SAM2 is an sdist:
            built without its CUDA kernel, against the torch already installed).
    """

    name: str
    label: str
    module: str
    engine: str
    requirements: Mapping[str, str]
    extra: str
    min_python: Tuple[int, int]
    capabilities: Capabilities
    build_environment: Mapping[str, str] = dataclasses.field(default_factory=dict)
    pip_options: Tuple[str, ...] = ()

    def get_module(self):
        return importlib.import_module(self.module)

    def get_engine(self):
        module, name = self.engine.split(":")
        return getattr(importlib.import_module(module), name)

    def open_predictor(self, loaded, volume, fast: bool = False, **kwargs):
        """Its engine on `volume` (`fast`: see `capabilities.fast`)."""
        return self.get_engine().from_loaded(loaded, volume, fast=fast, **kwargs)

    def check_python(self, python: Tuple[int, int] = tuple(sys.version_info[:2])) -> None:
        """InputError when this Python cannot run the family (SAM2 needs 3.10: Slicer 5.10 or later)."""
        if python < self.min_python:
            version = ".".join(map(str, self.min_python))
            raise InputError(f"{self.label} models need Python {version} or later (Slicer 5.10 or later); this "
                             f"one is Python {python[0]}.{python[1]}. Choose another model, or run it on a server "
                             "(Run on: server).")

    def check(self, capability: str, action: str) -> None:
        """InputError naming what this family cannot do (`capability`: a `Capabilities` field)."""
        if not getattr(self.capabilities, capability):
            raise InputError(f"{self.label} models cannot {action}: {_CANNOT[capability]}")


_CANNOT = {
    "trainable": "choose a SAM or LiteMedSAM model to train",
    "semantic_encoder": "its encoder has no UNETR decoder here; use a SAM (ViT) or LiteMedSAM model",
    "adapters_3d": "MA-SAM's 3D adapters are written for ViT encoders; use a SAM ViT model, or the 2D semantic "
                   "model (--ndim 2)",
}

def __getattr__(name: str):
    """`FAMILIES` (and the detection order) are declared with the named models, in `registry.py`, so a
    new family's rows sit in one file; they are read from there on first use (registry imports this module)."""
    if name in ("FAMILIES", "DETECTION_ORDER"):
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_family(name: str) -> ModelFamily:
    from .registry import FAMILIES

    try:
        return FAMILIES[name]
    except KeyError:
        raise InputError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})") from None


def detect_family(state: Mapping[str, Any]) -> Optional[ModelFamily]:
    """The family whose `recognises` accepts a checkpoint's dict, or None."""
    from .registry import DETECTION_ORDER, FAMILIES

    for name in DETECTION_ORDER:
        family = FAMILIES[name]
        if family.get_module().recognises(state):
            return family
    return None
