"""Dice, the one number every MedicoSAM evaluation reports (interactive 2D / 3D and semantic).

Conventions (docs/evaluation.md):
- Dice = 2 |P & T| / (|P| + |T|) on binary masks of any dimension, the standard definition the
  paper (and micro-sam's evaluation) uses.
- Both masks empty: Dice is `empty_value` (1.0 by default: predicting "nothing" where there is
  nothing is correct). One empty, the other not: 0.0.
- Semantic Dice per class is NaN for a class absent from both the prediction and the target of
  one image, so means over images (`np.nanmean`) skip images that do not contain the class, as
  the paper's averages do; a class that is predicted but absent from the target scores 0.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Mapping, Optional

import numpy as np

from medicosam.errors import MedicoSAMError


class MetricError(MedicoSAMError, ValueError):
    """Masks that cannot be compared (different shapes)."""


def _check_shapes(prediction: np.ndarray, target: np.ndarray) -> None:
    if prediction.shape != target.shape:
        raise MetricError(f"prediction shape {prediction.shape} differs from target shape {target.shape}: "
                          "compare masks on the same pixel grid")


def get_dice(prediction: np.ndarray, target: np.ndarray, empty_value: float = 1.0) -> float:
    """Dice of two binary masks (any dimension; non-zero is foreground).

    Args:
        prediction: predicted mask.
        target: ground-truth mask, same shape.
        empty_value: the score when both masks are empty (1.0: nothing predicted where nothing is).
    """
    prediction, target = np.asarray(prediction, dtype=bool), np.asarray(target, dtype=bool)
    _check_shapes(prediction, target)
    total = np.count_nonzero(prediction) + np.count_nonzero(target)
    if total == 0:
        return float(empty_value)
    return float(2.0 * np.count_nonzero(prediction & target) / total)


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
    _check_shapes(prediction, target)
    if classes is None:
        classes = np.union1d(np.unique(target), np.unique(prediction))
        classes = classes[classes != 0]
    return {int(c): get_dice(prediction == c, target == c, empty_value=math.nan) for c in classes}


def get_mean_dice(per_class: Mapping[int, float]) -> float:
    """Mean over the classes that are scored (NaN entries skipped); NaN when none is."""
    values = np.array([v for v in per_class.values() if not math.isnan(v)], dtype=float)
    return float(values.mean()) if values.size else math.nan
