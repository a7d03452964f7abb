"""Evaluation like the paper (Sec. 2.5): simulated interactive 2D and 3D segmentation, semantic Dice.

- `data`: labeled image / volume folders.
- `protocol`: what 2D and 3D share: the objects of a label map, start prompts.
- `interactive_2d`: start prompt + correction clicks, Dice per iteration.
- `interactive_3d`: central-slice prompt + propagation, settings chosen on a validation split.
- `loop`: the resumable loop both run in (finished units skipped, `max_objects`, progress).
- `metrics`: per-class semantic Dice (Dice itself: `medicosam.overlap`).
- `results`: the resumable results CSV, the run configuration and model binding beside it.
- `reports`: summary tables, markdown and plots.
- `cli`: `medicosam evaluate ...`.

The protocol, its conventions and where it differs from the paper: docs/evaluation.md.
"""

from .data import LabeledFolder, LabeledImage
from .interactive_2d import Interactive2DConfig, ObjectTrace, evaluate_interactive_2d, run_interactive_2d
from .interactive_3d import Interactive3DConfig, PropagationGrid, evaluate_interactive_3d, select_best_settings
from .metrics import get_mean_dice, get_semantic_dice
from .protocol import ObjectMask, get_objects

__all__ = [
    "Interactive2DConfig", "Interactive3DConfig", "LabeledFolder", "LabeledImage", "ObjectMask", "ObjectTrace",
    "PropagationGrid", "evaluate_interactive_2d", "evaluate_interactive_3d", "get_mean_dice", "get_objects",
    "get_semantic_dice", "run_interactive_2d", "select_best_settings",
]
