"""The Slicer effect's parameters: names, defaults, parsing, and what they mean for the core.

Segment Editor effects keep their parameters as strings on the segment editor node (saved with the
scene). This module is the one place that knows those strings, so the effect only copies them
between widgets and the node, and every parsing rule and error message is tested without Slicer.

The propagation settings are a nested `PropagationConfig`, which checks its own values: each of its
option fields is the parameter "Propagation" + CamelCase(field name), except `slice_range` (an ROI
gives it), so a new propagation setting is stored and read without a change here.

Where the model runs (this computer or a `medicosam serve` server, its URL and token) is no scene
parameter: it belongs to the workstation, and a token saved with a scene would travel with it. The
effect keeps it in Slicer's application settings (`ServerSettings`, `qt.QSettings` keys); the token
itself only when the user asks to remember it (Slicer.ini is plain text), else for the Slicer session.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Callable, Dict, Iterable, List, Tuple

from ..device import DEVICE_CHOICES
from ..errors import InputError
from ..models.families import FAMILIES, ModelFamily
from ..models.registry import MODELS
from ..options import get_option_fields, get_value_type
from ..propagation import PropagationConfig
from .interaction import TOOL_PROMPTS

CUSTOM_MODEL = "custom"  # the "Model" value that means "use the checkpoint file in CustomCheckpoint"
TOOLS = tuple(TOOL_PROMPTS)

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
#: The effect's keyboard shortcuts (key -> action): a tool's name selects it. No key of core Slicer
#: (Segment Editor, slice and 3D views) or SlicerNNInteractive: a key bound twice on one window fires
#: neither (Testing/test_slicer_api.py). Next / previous segment are the Segment Editor's own W / Q.
SHORTCUTS = {"O": "positive", "N": "negative", "X": "box", "K": "lasso", "J": "scribble", "H": "flip",
             "A": "apply", "D": "propagate", "C": "clear", "U": "undo_prompt", "M": "refine",
             "Shift+C": "reset", "Shift+N": "new_segment"}

#: `PropagationConfig` fields that are no parameter: the effect takes the slice range from the ROI.
NOT_PARAMETERS = ("slice_range",)
#: Parameter -> its name in scenes saved before it was derived from `PropagationConfig`.
RENAMED = {"PropagationIouThreshold": "IoUThreshold", "PropagationBoxExtension": "BoxExtension",
           "PropagationMaxSlices": "PropagationSlices"}


#: Where the model runs -> its label in the "Run on" menu.
RUN_ON_LABELS = {"local": "This computer", "server": "Server (medicosam serve)"}
#: `ServerSettings` field -> its key in Slicer's application settings (qt.QSettings).
SERVER_SETTINGS_KEYS = {"run_on": "MedicoSAM/RunOn", "url": "MedicoSAM/ServerURL", "token": "MedicoSAM/ServerToken",
                        "remember_token": "MedicoSAM/RememberToken"}


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Where the model runs: "local", or "server" at `url` with `token` (Slicer's application settings;
    the token only when `remember_token`, else the effect holds it for the Slicer session)."""

    run_on: str = "local"
    url: str = ""
    token: str = ""
    remember_token: bool = False

    def __post_init__(self) -> None:
        if self.run_on not in RUN_ON_LABELS:
            raise InputError(f"unknown run_on {self.run_on!r}: use one of {', '.join(RUN_ON_LABELS)}")

    @property
    def remote(self) -> bool:
        return self.run_on == "server"

    @classmethod
    def from_application_settings(cls, get: Callable[[str], object], session_token: str = "") -> ServerSettings:
        """From `get(key)` (the effect passes `qt.QSettings().value`) and the token the effect holds for
        this Slicer session; None or "" means the default; an unknown "run on" value falls back to this
        computer. A token stored before "remember" existed counts as remembered."""
        values = {name: str(get(key) or "").strip() for name, key in SERVER_SETTINGS_KEYS.items()}
        values["run_on"] = values["run_on"] if values["run_on"] in RUN_ON_LABELS else "local"
        flag = values.pop("remember_token").lower()
        remember = flag in ("1", "true") if flag else bool(values["token"])
        return cls(**{**values, "token": values["token"] if remember else session_token}, remember_token=remember)

    def to_application_settings(self) -> Dict[str, str]:
        """What Slicer's settings keep: the token only when remembered (an empty one clears a stored one)."""
        return {**{key: getattr(self, name) for name, key in SERVER_SETTINGS_KEYS.items() if name != "remember_token"},
                SERVER_SETTINGS_KEYS["token"]: self.token if self.remember_token else "",
                SERVER_SETTINGS_KEYS["remember_token"]: "1" if self.remember_token else "0"}

    def get_url(self) -> str:
        if not self.url:
            raise InputError("'Run on: server' is selected but no server URL is set: enter it, e.g. "
                             "http://gpu-host:8765")
        return self.url


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
    cache_mb: int = _parameter("EmbeddingCacheMB", 2048)
    fast: bool = _parameter("FastInference", True)  # VolumePredictor.from_loaded(fast=...)
    propagation: PropagationConfig = dataclasses.field(default_factory=PropagationConfig)
    server: ServerSettings = dataclasses.field(default_factory=ServerSettings)  # not in the scene

    def __post_init__(self) -> None:
        choices = {"model": [*MODELS, CUSTOM_MODEL], "device": DEVICE_CHOICES, "tool": TOOLS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"unknown {name} {getattr(self, name)!r}: use one of {', '.join(allowed)}")
        if self.cache_mb < 64:
            raise InputError(f"EmbeddingCacheMB must be at least 64, got {self.cache_mb}")

    @classmethod
    def from_parameters(cls, get: Callable[[str], str]) -> EffectSettings:
        """Settings from `get(parameter_name) -> str` (the effect passes `scriptedEffect.parameter`);
        an empty string means the default, a value saved under a parameter's old name still counts."""
        values: Dict[bool, dict] = {False: {}, True: {}}
        for parameter in _get_parameters():
            text = _read(get, parameter.name)
            if text:
                values[parameter.nested][parameter.field] = parameter.parse(text)
        return cls(**values[False], propagation=PropagationConfig(**values[True]))

    @classmethod
    def get_parameter_defaults(cls, get: Callable[[str], str]) -> Dict[str, str]:
        """What the effect sets with `setParameterDefault`: the defaults, except where the scene saved a
        value under the parameter's old name (a default under the new name would hide it)."""
        return {name: _read(get, name) or value for name, value in cls().to_parameters().items()}

    def to_parameters(self) -> Dict[str, str]:
        """Parameter name -> string, as stored on the segment editor node."""
        return {parameter.name: parameter.format(getattr(self.propagation if parameter.nested else self,
                                                         parameter.field))
                for parameter in _get_parameters()}

    @property
    def checkpoint(self) -> str:
        """What to load: a registry name or the custom checkpoint path."""
        if self.model != CUSTOM_MODEL:
            return self.model
        if not self.custom_checkpoint:
            raise InputError("'Custom checkpoint' is selected but no file is chosen: pick a .pth file")
        return self.custom_checkpoint

    @property
    def family(self) -> ModelFamily:
        """The model family of a registry model; a custom file counts as SAM until it is read (a SAM2 file
        without the sam2 package then says what to install)."""
        spec = MODELS.get(self.model)
        return FAMILIES[spec.family] if spec is not None and spec.family else FAMILIES["sam"]

    @property
    def cache_bytes(self) -> int:
        return self.cache_mb * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class _Parameter:
    """One stored string: parameter `name` holds `field` of the settings, or of their `propagation`."""

    name: str
    field: str
    kind: type
    nested: bool
    optional: bool = False  # None is a value (stored as 0)

    def parse(self, text: str):
        """The value of `text`; for an optional number, 0 is None ("no limit" in the effect's spin boxes)."""
        try:
            if self.kind is bool:
                if text.lower() not in ("0", "1", "true", "false"):
                    raise ValueError(text)
                return text.lower() in ("1", "true")
            value = self.kind(text)
        except ValueError:
            raise InputError(f"parameter {self.name} = {text!r} is not a valid {self.kind.__name__}: reset it "
                             "in the effect's options") from None
        return None if self.optional and value == 0 else value

    def format(self, value) -> str:
        if isinstance(value, bool):
            return "1" if value else "0"
        return "0" if value is None else str(value)


@functools.cache
def _get_parameters() -> Tuple[_Parameter, ...]:
    own = [_Parameter(field.metadata["parameter"], field.name, type(field.default), False)
           for field in dataclasses.fields(EffectSettings) if "parameter" in field.metadata]
    nested = [_Parameter("Propagation" + field.name.title().replace("_", ""), field.name,
                         get_value_type(PropagationConfig, field)[0], True, field.default is None)
              for field in get_option_fields(PropagationConfig) if field.name not in NOT_PARAMETERS]
    return (*own, *nested)


def _read(get: Callable[[str], str], name: str) -> str:
    text = str(get(name) or "").strip()
    if not text and name in RENAMED:
        text = str(get(RENAMED[name]) or "").strip()
    return text


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """One entry of the effect's model menu."""

    name: str
    label: str
    downloaded: bool


def get_model_choices(cached: Iterable, python: Tuple[int, int] = tuple(sys.version_info[:2]),
                      has_gpu: bool = True) -> List[ModelChoice]:
    """The promptable models of the registry (decoders are not), each marked downloaded or not (or
    needing a newer Slicer, for families whose packages need a newer Python), then the custom-checkpoint
    entry. Without a GPU (torch sees neither CUDA nor MPS) the families that run fast on a CPU come
    first and say so: ViT-B takes 6-16 s per slice there, LiteMedSAM well under one.
    `cached` is `models.download.list_cached_models()`."""
    complete = {entry.name for entry in cached if entry.complete}
    choices = []
    for name, spec in MODELS.items():
        if spec.family is None:
            continue
        family = FAMILIES[spec.family]
        size = f", {spec.size / 1e6:.0f} MB" if spec.size else ""
        state = "downloaded" if name in complete else f"not downloaded{size}"
        if python < family.min_python:
            state = "needs Slicer 5.10 or later"
        elif not has_gpu and family.capabilities.recommended_without_gpu:
            state += ", recommended without a GPU"
        prefix = "" if family.name == "sam" else f"{family.label}, "
        choices.append(ModelChoice(name, f"{name} ({prefix}{state})", name in complete))
    if not has_gpu:
        choices.sort(key=lambda choice: not FAMILIES[MODELS[choice.name].family].capabilities.recommended_without_gpu)
    choices.append(ModelChoice(CUSTOM_MODEL, "Custom checkpoint file...", True))
    return choices
