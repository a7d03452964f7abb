"""Names the training package's commands offer, kept free of torch: `medicosam --help` (and every other
command) registers these sub-commands at start, so their modules must import fast."""

from __future__ import annotations

from typing import Dict

#: Finetuning strategies of the paper (section 2.2) as overrides of `objective.ObjectiveConfig`.
PRESETS: Dict[str, Dict[str, object]] = {
    "medsam": {"n_steps": 0, "p_box": 1.0, "p_mask": 0.0},
    "simpleft": {"n_steps": 0, "p_box": 0.5, "p_mask": 0.0},
    "medicosam": {"n_steps": 8, "p_box": 0.5, "p_mask": 0.5, "e_sem": True},
    "medicosam-nomask": {"n_steps": 8, "p_box": 0.5, "p_mask": 0.0},
}

#: The MONAI baselines of `semantic.baselines`.
ARCHITECTURES = ("unet", "swin_unetr")
