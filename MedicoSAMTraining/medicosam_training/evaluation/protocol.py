"""The rules the 2D and 3D protocols share: which objects a label map holds, and how an annotation starts.

Objects (docs/evaluation.md): for each class id of a label map, either each connected component
(`records.get_class_components`, training's rule too) is one object, as in the paper's 2D protocol, or the whole
class is one object, as micro-sam's 3D evaluation does per label id. Objects smaller than
`min_size` pixels / voxels are dropped (20, the paper's 2D value). Object ids are stable:
`"<class>"` for whole classes, `"<class>.<n>"` for the n-th kept component in raster order, so a
resumed evaluation finds the same objects under the same names.

Start prompts: one positive point at the object's distance-transform centre (SAM's three masks,
the best by predicted IoU kept) or the object's exact bounding box; 3D places them on the
object's central slice.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from medicosam.errors import InputError
from medicosam.models.families import FAMILIES, ModelFamily
from medicosam.normalization import PRESETS
from medicosam.prompts import Prompts, get_box, get_center_prompt

from ..records import get_class_components

#: How an object's annotation starts.
START_PROMPTS = ("point", "box")


@dataclasses.dataclass
class ObjectMask:
    """One object of a label map, stored as its bounding box and the mask inside it (cheap in 3D)."""

    class_id: int
    object_id: str
    bbox: Tuple[slice, ...]
    crop: np.ndarray  # bool mask inside bbox
    shape: Tuple[int, ...]  # of the whole label map

    @property
    def size(self) -> int:
        return int(np.count_nonzero(self.crop))

    def get_mask(self) -> np.ndarray:
        """The object's bool mask on the whole image / volume grid."""
        mask = np.zeros(self.shape, dtype=bool)
        mask[self.bbox] = self.crop
        return mask


def get_objects(label: np.ndarray, classes: Optional[Iterable[int]] = None, min_size: int = 20,
                split_components: bool = True) -> List[ObjectMask]:
    """The objects of a label map, by class then component (raster order of the components).

    Args:
        label: class ids, 2D or 3D.
        classes: classes to use; default: every non-zero id present.
        min_size: smallest object kept, in pixels / voxels.
        split_components: one object per connected component (True) or per class (False).
    """
    label = np.asarray(label)
    class_ids = None if classes is None else sorted(set(int(c) for c in classes))
    if split_components:
        parts = ((class_id, components) for class_id, components, _ in get_class_components(label, class_ids))
    else:
        parts = ((int(c), (label == c).astype(np.int32))
                 for c in (np.unique(label) if class_ids is None else class_ids) if c != 0)
    objects: List[ObjectMask] = []
    for class_id, components in parts:
        n_kept = 0
        for value, bbox in enumerate(ndimage.find_objects(components), start=1):
            if bbox is None:
                continue
            crop = components[bbox] == value
            if np.count_nonzero(crop) < min_size:
                continue
            n_kept += 1
            object_id = f"{class_id}.{n_kept}" if split_components else str(class_id)
            objects.append(ObjectMask(class_id, object_id, bbox, crop, label.shape))
    return objects


def get_sample_objects(sample, classes: Optional[Iterable[int]] = None, min_size: int = 20,
                       split_components: bool = True) -> List[ObjectMask]:
    """The objects of a `LabeledImage`: those of its label map, or, for a segmentation file, each
    segment's own (the whole segment, or its components), so overlapping segments stay whole.

    A class with one segment keeps the label map's ids; several segments of a class are numbered
    `"<class>.<n>"` in file order.
    """
    if sample.segments is None:
        return get_objects(sample.label, classes, min_size, split_components)
    wanted = None if classes is None else {int(c) for c in classes}
    objects: List[ObjectMask] = []
    for class_id in sorted({int(c) for c in sample.segment_classes}):
        if wanted is not None and class_id not in wanted:
            continue
        segments = sample.segments[sample.segment_classes == class_id]
        found = [obj for mask in segments
                 for obj in get_objects(mask.astype(np.int32) * class_id, None, min_size, split_components)]
        for n, obj in enumerate(found, start=1):
            obj.object_id = obj.object_id if len(segments) == 1 else f"{class_id}.{n}"
        objects += found
    return objects


def check_window(preset: str) -> None:
    if preset not in PRESETS:
        raise InputError(f"unknown intensity preset {preset!r}: use one of {PRESETS}")


def check_starts(starts: Sequence[str]) -> Tuple[str, ...]:
    unknown = [s for s in starts if s not in START_PROMPTS]
    if unknown or not starts:
        raise InputError(f"unknown or missing start prompts {list(starts)}: use some of {START_PROMPTS}")
    return tuple(starts)


def get_start_prompts(mask: np.ndarray, start: str) -> Prompts:
    """The first prompt for an object: its distance-transform centre point or its exact box."""
    if start == "point":
        return get_center_prompt(mask)
    if start == "box":
        return Prompts(box=get_box(mask))
    raise InputError(f"unknown start prompt {start!r}: use one of {START_PROMPTS}")


def get_model_family(model) -> ModelFamily:
    """The family of a loaded model (`load_sam`), or of a bare `segment_anything` Sam: SAM's, or
    LiteMedSAM's for its `TinyVitSam`."""
    from torch import nn

    if not isinstance(model, nn.Module):
        return model.family
    from medicosam.models.lite_sam import get_sam_class

    return FAMILIES["lite" if isinstance(model, get_sam_class()) else "sam"]


def get_model_predictor(model, image: np.ndarray, window, fast: bool, **kwargs):
    """The predictor of a loaded model (its family's engine, `get_volume_predictor`) or of a bare `Sam`
    (`VolumePredictor`, the engine of SAM and LiteMedSAM)."""
    from torch import nn

    from medicosam.predictor import VolumePredictor, get_speed_options, get_volume_predictor

    if isinstance(model, nn.Module):
        return VolumePredictor(model, image, window, **kwargs, **get_speed_options(fast))
    kwargs.pop("model_id", None)  # a loaded model's is its file's
    return get_volume_predictor(model, image, fast=fast, window=window, **kwargs)
