"""The effect's options panel as one table: each row binds one settings field to one widget.

The Slicer side (`SegmentEditorMedicoSAMLib/OptionsPanel.py`) makes a widget per row, shows the row's
field (`get_value`), writes a changed widget back (`set_value`) and shows or hides rows with
`is_row_shown`. A new setting the annotator edits is one row here. Fields are paths into
`EffectSettings`: "model", "propagation.mode" (a `PropagationConfig` field), "server.url" (a
`ServerSettings` field, kept in Slicer's application settings, not in the scene).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

from ..device import DEVICE_CHOICES
from .settings import CUSTOM_MODEL, DIRECTION_LABELS, MODE_LABELS, RUN_ON_LABELS, EffectSettings

#: Widget kinds: a menu, whole numbers, decimals, a check box, a file path, a line of text, a hidden text.
KINDS = ("choice", "integer", "number", "flag", "file", "text", "password")
#: The sections of the panel, in order: "Model" and "Propagation" fold; "prompt" rows sit with the tools.
SECTIONS = {"model": "Model", "prompt": "", "propagation": "Propagation"}


@dataclasses.dataclass(frozen=True)
class OptionRow:
    """One widget of the panel.

    Attributes:
        field: the settings field it binds ("propagation.mode"): what a model family's capabilities name.
        label: the row's label (a check box's text).
        kind: one of `KINDS`.
        section: one of `SECTIONS`.
        tip: the widget's tooltip.
        choices: value -> label of a menu; None: filled by the effect (the model menu).
        minimum, maximum, step, suffix: a number's range, step and unit.
        none_text: what a number's minimum shows when it stands for None ("until the object ends").
        placeholder: a text field's hint.
        shortcut: the `settings.SHORTCUTS` action that toggles a check box.
        where: "local" (the model runs here), "remote" (on a server) or "" (both).
    """

    field: str
    label: str
    kind: str
    section: str
    tip: str = ""
    choices: Optional[Dict[str, str]] = None
    minimum: float = 0
    maximum: float = 0
    step: float = 1
    suffix: str = ""
    none_text: str = ""
    placeholder: str = ""
    shortcut: str = ""
    where: str = ""


DEVICE_LABELS = {device: device.upper() if device != "auto" else "Auto (GPU if available)" for device in DEVICE_CHOICES}

ROWS: Tuple[OptionRow, ...] = (
    OptionRow("server.run_on", "Run on:", "choice", "model", "Where the model runs: here (needs PyTorch), or on a "
              "`medicosam serve` server (needs nothing more here). Kept in Slicer's settings, not in the scene.",
              choices=RUN_ON_LABELS),
    OptionRow("server.url", "Server URL:", "text", "model", "The URL `medicosam serve` prints at start (https:// "
              "behind a TLS proxy).", placeholder="http://gpu-host:8765", where="remote"),
    OptionRow("server.token", "Token:", "password", "model", "The token the server was started with (--token or "
              "MEDICOSAM_TOKEN); none for a server on this computer's loopback. Kept for this Slicer session "
              "unless remembered.", where="remote"),
    OptionRow("server.remember_token", "Remember the token on this computer", "flag", "model", "Keep the token in "
              "Slicer's settings (Slicer.ini, plain text) for the next sessions; off: it is forgotten when Slicer "
              "closes.", where="remote"),
    OptionRow("model", "Model:", "choice", "model", "Downloaded models load at once; others download on first use, "
              "after you agree. SAM2 models install the sam2 package first (Slicer 5.10 or later).", where="local"),
    OptionRow("custom_checkpoint", "Checkpoint file:", "file", "model", "A SAM state dict (vit_b/l/h or a "
              "MedicoSAM export).", where="local"),
    OptionRow("device", "Device:", "choice", "model", "Where the model runs on this computer.",
              choices=DEVICE_LABELS, where="local"),
    OptionRow("cache_mb", "Embedding memory:", "integer", "model", "Memory for slice embeddings; the oldest are "
              "dropped beyond it.", minimum=64, maximum=1024 * 1024, step=256, suffix=" MB", where="local"),
    OptionRow("fast", "Fast inference", "flag", "model", "Fused attention, bf16 where the device runs it natively "
              "and embeddings kept in bf16 (twice as many slices fit in memory). Off: the official fp32 SAM path, "
              "slower; use it to check a result."),
    OptionRow("refine", "Refine with the previous mask", "flag", "prompt", "Give SAM the slice's previous mask "
              "with each new prompt, so a click corrects the mask instead of starting over.", shortcut="refine"),
    OptionRow("propagation.direction", "Direction:", "choice", "propagation", "Which neighbours Propagate (D) "
              "segments; the buttons below propagate down, both ways or up in one click.",
              choices=DIRECTION_LABELS),
    OptionRow("propagation.max_slices", "Slices:", "integer", "propagation", "At most this many slices beyond the "
              "outermost applied slices.", maximum=10000, none_text="until the object ends"),
    OptionRow("propagation.mode", "Prompt from previous slice:", "choice", "propagation", "Prompt derived from the "
              "previous slice's mask.", choices=MODE_LABELS),
    OptionRow("propagation.iou_threshold", "Stop below IoU:", "number", "propagation", "Stop when a slice's mask "
              "overlaps the previous one less than this (IoU).", maximum=1.0, step=0.05),
    OptionRow("propagation.box_extension", "Box extension:", "number", "propagation", "Grow the box derived from "
              "the previous slice's mask by this fraction of its side (1 or more: by this many pixels).",
              maximum=100.0, step=0.05),
)


def get_value(settings: EffectSettings, field: str):
    """The value of `field` ("propagation.mode") in `settings`."""
    value = settings
    for name in field.split("."):
        value = getattr(value, name)
    return value


def set_value(settings: EffectSettings, field: str, value) -> EffectSettings:
    """`settings` with `field` set to `value` (each nested dataclass replaced, so each checks its values)."""
    name, _, rest = field.partition(".")
    if rest:
        return dataclasses.replace(settings, **{name: set_value(getattr(settings, name), rest, value)})
    return dataclasses.replace(settings, **{name: value})


def is_row_shown(row: OptionRow, settings: EffectSettings) -> bool:
    """Whether the panel shows `row` for `settings`: a server runs its own model, device and cache; the
    checkpoint file belongs to "Custom checkpoint"; a propagation setting shows only where the chosen
    model's family honours it (`Capabilities.propagation_settings`; SAM2 ignores mode, IoU threshold
    and box extension). A server's model is not known here: its rows all show."""
    if row.where and row.where != ("remote" if settings.server.remote else "local"):
        return False
    section, _, name = row.field.partition(".")
    if section == "propagation" and not settings.server.remote:
        return name in settings.family.capabilities.propagation_settings
    return row.field != "custom_checkpoint" or settings.model == CUSTOM_MODEL
