"""Semantic Dice: per class of two label maps (2D or 3D), and the mean over the classes scored.

Dice itself is `medicosam.overlap.get_dice`, the one every evaluation reports (conventions there
and in docs/evaluation.md). Semantic Dice per class is NaN for a class absent from both the
prediction and the target of one image, so means over images (`np.nanmean`) skip images that do
not contain the class, as the paper's averages do; a class that is predicted but absent from the
target scores 0.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Mapping, Optional

import numpy as np

from medicosam.errors import InputError
from medicosam.overlap import get_dice


def get_semantic_dice(prediction: np.ndarray, target: np.ndarray,
                      classes: Optional[Iterable[int]] = None) -> Dict[int, float]:
    """Dice per class of two label maps (2D images or 3D volumes; 0 is background).

    Args:
        prediction: predicted class ids.
        target: ground-truth class ids, same shape.
        classes: the classes to score; default: every non-zero id in the target or the prediction.

    Returns:
        class id -> Dice; NaN where the class is in neither map (see the module docstring).
    """
    prediction, target = np.asarray(prediction), np.asarray(target)
    if prediction.shape != target.shape:
        raise InputError(f"prediction shape {prediction.shape} differs from target shape {target.shape}: "
                         "compare label maps on the same pixel grid")
    if classes is None:
        classes = np.union1d(np.unique(target), np.unique(prediction))
        classes = classes[classes != 0]
    return {int(c): get_dice(prediction == c, target == c, empty_value=math.nan) for c in classes}


def get_mean_dice(per_class: Mapping[int, float]) -> float:
    """Mean over the classes that are scored (NaN entries skipped); NaN when none is."""
    values = np.array([v for v in per_class.values() if not math.isnan(v)], dtype=float)
    return float(values.mean()) if values.size else math.nan
