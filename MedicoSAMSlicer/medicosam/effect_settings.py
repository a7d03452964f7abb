"""The Slicer effect's parameters: names, defaults, parsing, and what they mean for the core.

Segment Editor effects keep their parameters as strings on the segment editor node (saved with the
scene). This module is the one place that knows those strings, so the effect only copies them
between widgets and the node, and every parsing rule and error message is tested without Slicer.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Iterable, List

from .device import DEVICE_CHOICES
from .errors import MedicoSAMError
from .models.registry import MODELS

CUSTOM_MODEL = "custom"  # the "Model" value that means "use the checkpoint file in CustomCheckpoint"
TOOLS = ("positive", "negative", "box")

#: Labels for the propagation modes of `medicosam.prompts.PROPAGATION_MODES`, in menu order.
MODE_LABELS = {
    "single_point": "Centre point",
    "points": "Points",
    "box": "Box",
    "box_mask": "Box + mask",
    "points_mask": "Points + mask",
}
DIRECTION_LABELS = {"both": "Both directions", "up": "Up (increasing slice index)",
                    "down": "Down (decreasing slice index)"}
#: The effect's keyboard shortcuts (key -> action). No key of core Slicer (Segment Editor, slice and 3D
#: views) or SlicerNNInteractive: a key bound twice on one window fires neither (Testing/test_slicer_api.py).
SHORTCUTS = {"O": "positive", "N": "negative", "X": "box", "A": "apply", "D": "propagate", "C": "clear",
             "M": "refine"}

#: Segment tags holding the IDs of each segment's prompt nodes (+ / - point lists, ROI): saved with the
#: segmentation, so a reopened scene keeps each segment's markups.
MARKUPS_TAGS = {"positive": "MedicoSAM.PositiveNodeID", "negative": "MedicoSAM.NegativeNodeID",
                "roi": "MedicoSAM.ROINodeID"}
#: Names of the nodes the effect creates: the negative list's name holds "negative", so its points stay
#: negative when it is saved and read by `medicosam segment --markups` (`markups.is_negative_list`).
MARKUPS_NAMES = {"positive": "MedicoSAM positive", "negative": "MedicoSAM negative", "roi": "MedicoSAM ROI"}


class SettingsError(MedicoSAMError, ValueError):
    """An effect parameter with a value the effect cannot use."""


def _parameter(name: str, default):
    return dataclasses.field(default=default, metadata={"parameter": name})


@dataclasses.dataclass
class EffectSettings:
    """Typed view of the effect's parameters (defaults are what a new scene gets)."""

    model: str = _parameter("Model", "medicosam_vit_b")
    custom_checkpoint: str = _parameter("CustomCheckpoint", "")
    device: str = _parameter("Device", "auto")
    tool: str = _parameter("Tool", "positive")
    refine: bool = _parameter("Refine", True)
    direction: str = _parameter("PropagationDirection", "both")
    max_slices: int = _parameter("PropagationSlices", 0)  # 0: until the object ends
    mode: str = _parameter("PropagationMode", "single_point")
    iou_threshold: float = _parameter("IoUThreshold", 0.5)
    box_extension: float = _parameter("BoxExtension", 0.05)
    cache_mb: int = _parameter("EmbeddingCacheMB", 2048)
    fast: bool = _parameter("FastInference", True)  # VolumePredictor.from_loaded(fast=...)

    def __post_init__(self) -> None:
        choices = {"model": [*MODELS, CUSTOM_MODEL], "device": DEVICE_CHOICES, "tool": TOOLS,
                   "direction": list(DIRECTION_LABELS), "mode": list(MODE_LABELS)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SettingsError(f"unknown {name} {getattr(self, name)!r}: use one of {', '.join(allowed)}")
        if self.max_slices < 0:
            raise SettingsError(f"PropagationSlices must be 0 (no limit) or more, got {self.max_slices}")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise SettingsError(f"IoUThreshold must be in 0..1, got {self.iou_threshold}")
        if self.box_extension < 0:
            raise SettingsError(f"BoxExtension must be 0 or more, got {self.box_extension}")
        if self.cache_mb < 64:
            raise SettingsError(f"EmbeddingCacheMB must be at least 64, got {self.cache_mb}")

    @classmethod
    def from_parameters(cls, get: Callable[[str], str]) -> EffectSettings:
        """Settings from `get(parameter_name) -> str` (the effect passes `scriptedEffect.parameter`);
        an empty string means the default."""
        values = {}
        for field in dataclasses.fields(cls):
            text = str(get(field.metadata["parameter"]) or "").strip()
            if text:
                values[field.name] = _parse(field, text)
        return cls(**values)

    def to_parameters(self) -> Dict[str, str]:
        """Parameter name -> string, as stored on the segment editor node."""
        return {field.metadata["parameter"]: _format(getattr(self, field.name))
                for field in dataclasses.fields(self)}

    @property
    def checkpoint(self) -> str:
        """What to load: a registry name or the custom checkpoint path."""
        if self.model != CUSTOM_MODEL:
            return self.model
        if not self.custom_checkpoint:
            raise SettingsError("'Custom checkpoint' is selected but no file is chosen: pick a .pth file")
        return self.custom_checkpoint

    @property
    def cache_bytes(self) -> int:
        return self.cache_mb * 1024 * 1024

    def get_propagation_config(self):
        """The `PropagationConfig` these settings ask for."""
        from .propagation import PropagationConfig

        return PropagationConfig(mode=self.mode, iou_threshold=self.iou_threshold,
                                 box_extension=self.box_extension, direction=self.direction,
                                 max_slices=self.max_slices or None)


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """One entry of the effect's model menu."""

    name: str
    label: str
    downloaded: bool


def get_model_choices(cached: Iterable) -> List[ModelChoice]:
    """SAM models of the registry (decoders are not promptable), each marked downloaded or not,
    then the custom-checkpoint entry. `cached` is `models.download.list_cached_models()`."""
    complete = {entry.name for entry in cached if entry.complete}
    choices = []
    for name, spec in MODELS.items():
        if spec.format != "sam":
            continue
        size = f", {spec.size / 1e6:.0f} MB" if spec.size else ""
        state = "downloaded" if name in complete else f"not downloaded{size}"
        choices.append(ModelChoice(name, f"{name} ({state})", name in complete))
    choices.append(ModelChoice(CUSTOM_MODEL, "Custom checkpoint file...", True))
    return choices


def _parse(field: dataclasses.Field, text: str):
    kind = type(field.default)
    try:
        if kind is bool:
            if text.lower() not in ("0", "1", "true", "false"):
                raise ValueError(text)
            return text.lower() in ("1", "true")
        return kind(text)
    except ValueError:
        raise SettingsError(f"parameter {field.metadata['parameter']} = {text!r} is not a valid "
                            f"{kind.__name__}: reset it in the effect's options") from None


def _format(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
