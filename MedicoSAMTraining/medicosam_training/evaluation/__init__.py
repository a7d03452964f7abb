"""Evaluation like the paper (Sec. 2.5): simulated interactive 2D and 3D segmentation, semantic Dice.

- `metrics`: Dice and per-class semantic Dice (2D and 3D).
- `data`: labeled image / volume folders and the objects of a label map.
- `interactive_2d`: start prompt + correction clicks, Dice per iteration.
- `interactive_3d`: central-slice prompt + propagation, settings chosen on a validation split.
- `reports`: resumable results CSV, summary tables, plots.
- `cli`: `medicosam evaluate ...`.

The protocol, its conventions and where it differs from the paper: docs/evaluation.md.
"""

from .data import LabeledFolder, LabeledImage, ObjectMask, get_objects
from .interactive_2d import Interactive2DConfig, ObjectTrace, evaluate_interactive_2d, run_interactive_2d
from .interactive_3d import Interactive3DConfig, PropagationGrid, evaluate_interactive_3d, select_best_settings
from .metrics import get_dice, get_mean_dice, get_semantic_dice

__all__ = [
    "Interactive2DConfig", "Interactive3DConfig", "LabeledFolder", "LabeledImage", "ObjectMask", "ObjectTrace",
    "PropagationGrid", "evaluate_interactive_2d", "evaluate_interactive_3d", "get_dice", "get_mean_dice",
    "get_objects", "get_semantic_dice", "run_interactive_2d", "select_best_settings",
]
