"""Overlap of two binary masks: Dice (every evaluation's number) and IoU (propagation's stop rule).

Conventions (docs/evaluation.md): masks of any dimension, non-zero is foreground; both masks empty
scores `empty_value` (1.0: predicting nothing where there is nothing agrees), one empty scores 0.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def _get_counts(a: np.ndarray, b: np.ndarray):
    """(|A & B|, |A|, |B|) of two masks on the same grid."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise InputError(f"mask shapes {a.shape} and {b.shape} differ: compare masks on the same pixel grid")
    return np.count_nonzero(a & b), np.count_nonzero(a), np.count_nonzero(b)


def get_dice(a: np.ndarray, b: np.ndarray, empty_value: float = 1.0) -> float:
    """Dice = 2 |A & B| / (|A| + |B|)."""
    both, count_a, count_b = _get_counts(a, b)
    total = count_a + count_b
    return float(2.0 * both / total) if total else float(empty_value)


def get_iou(a: np.ndarray, b: np.ndarray, empty_value: float = 1.0) -> float:
    """Intersection over union, |A & B| / |A | B|."""
    both, count_a, count_b = _get_counts(a, b)
    union = count_a + count_b - both
    return float(both / union) if union else float(empty_value)
