"""Simulated interactive 3D segmentation: a prompt on an object's central slice, then propagation.

Per object (a class of the label volume, or each connected component with `split_components`):
the central slice along `axis` is the middle of the object's extent, floor((first + last) / 2),
as in micro-sam; objects with fewer than `min_slice_size` pixels there are skipped (micro-sam's
rule). The start prompt is the one of the 2D protocol (distance-transform centre point with the
best of SAM's three masks, or the exact box); the predicted mask on that slice is the seed that
`VolumePredictor.propagate` carries through the volume. Dice is measured on the whole volume.

Propagation settings (mode x IoU threshold x box extension) are chosen by a grid search on a
validation split, one best setting per model and start prompt (mean Dice over the validation
objects), and only that setting is then run on the test split. The reference implementation
instead reports the best setting per test volume, an oracle (docs/evaluation.md).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from medicosam.normalization import get_intensity_window
from medicosam.predictor import VolumePredictor, get_speed_options
from medicosam.prompts import PROPAGATION_MODES, Prompts
from medicosam.propagation import PropagationConfig, get_volume_mask

from .data import LabeledImage, ObjectMask, get_objects, warn_if_blank, warn_if_no_objects
from .interactive_2d import EvaluationError, EvaluationRun, check_starts, check_window, get_start_prompts
from .metrics import get_dice
from .reports import ResultsCSV, get_progress_bar

#: Columns of the 3D results CSV (one row per object, start and propagation setting) and the unit key.
FIELDS_3D = ("model", "dataset", "split", "image", "class", "object", "start", "slice", "mode", "iou_threshold",
             "box_extension", "seed_dice", "dice")
KEY_FIELDS_3D = ("model", "dataset", "split", "image", "object", "start", "mode", "iou_threshold", "box_extension")


@dataclasses.dataclass
class Interactive3DConfig:
    """Which objects are evaluated, and along which array axis they are propagated."""

    axis: int = 0  # KJI array axis (0 = K: axial slices of an axial scan)
    min_size: int = 20  # smallest object in voxels
    min_slice_size: int = 10  # smallest object area on its central slice (micro-sam: 10)
    split_components: bool = False  # False: one object per class (micro-sam's 3D evaluation)
    classes: Optional[Tuple[int, ...]] = None
    window: str = "auto"  # intensity preset per volume (medicosam.normalization.PRESETS)
    fast: bool = False  # medicosam.predictor.get_speed_options; off: the official fp32 path, as the paper

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2):
            raise EvaluationError(f"axis must be 0, 1 or 2 (KJI array axes), got {self.axis}")
        check_window(self.window)
        if self.classes is not None:
            self.classes = tuple(int(c) for c in self.classes)


@dataclasses.dataclass(frozen=True)
class PropagationGrid:
    """The propagation settings to search (defaults: micro-sam's grid, 5 x 5 x 11 values)."""

    modes: Tuple[str, ...] = PROPAGATION_MODES
    iou_thresholds: Tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    box_extensions: Tuple[float, ...] = tuple(round(0.025 * i, 3) for i in range(11))

    def get_settings(self) -> List[PropagationConfig]:
        """Every combination, except that "single_point" (which ignores the box) gets one extension."""
        settings = []
        for mode in self.modes:
            extensions = self.box_extensions[:1] if mode == "single_point" else self.box_extensions
            settings += [PropagationConfig(mode=mode, iou_threshold=float(t), box_extension=float(e))
                         for t in self.iou_thresholds for e in extensions]
        return settings


@dataclasses.dataclass
class ObjectTrace3D:
    """One object from one start: its seed slice and prompt, and the Dice of each propagation setting."""

    image_id: str
    class_id: int
    object_id: str
    start: str
    slice_index: int
    prompts: Prompts
    seed_mask: np.ndarray
    seed_dice: float
    dice: Dict[Tuple[str, float, float], float]


@dataclasses.dataclass
class BestSetting:
    """The propagation setting with the best mean validation Dice for one model and start."""

    config: PropagationConfig
    dice: float
    n: int


def get_setting_key(config: PropagationConfig) -> Tuple[str, float, float]:
    return (config.mode, float(config.iou_threshold), float(config.box_extension))


def get_central_slice(obj: ObjectMask, axis: int) -> int:
    """The middle of the object's extent along `axis` (micro-sam: floor(mean(first, last)))."""
    extent = obj.bbox[axis]
    return (extent.start + extent.stop - 1) // 2


def get_propagated_mask(predictor: VolumePredictor, axis: int, index: int, seed_mask: np.ndarray,
                        config: PropagationConfig) -> np.ndarray:
    """The 3D mask that propagating `seed_mask` from slice `index` along `axis` gives."""
    result = predictor.propagate(axis, {index: seed_mask}, config)
    return get_volume_mask(result.masks, predictor.volume.shape, axis)


def get_rows_3d(trace: ObjectTrace3D, model: str, dataset: str, split: str,
                keys: Iterable[Tuple[str, float, float]]) -> List[dict]:
    """The CSV rows of one trace for the given settings."""
    return [{"model": model, "dataset": dataset, "split": split, "image": trace.image_id, "class": trace.class_id,
             "object": trace.object_id, "start": trace.start, "slice": trace.slice_index, "mode": key[0],
             "iou_threshold": key[1], "box_extension": key[2], "seed_dice": trace.seed_dice,
             "dice": trace.dice[key]} for key in keys]


def evaluate_interactive_3d(sam, samples: Sequence[LabeledImage], settings: Mapping[str, Sequence[PropagationConfig]],
                            config: Interactive3DConfig, *, model: str = "model", model_id: str = "",
                            dataset: str = "dataset", split: str = "test", results: Optional[ResultsCSV] = None,
                            max_objects: Optional[int] = None, show_progress: bool = True) -> EvaluationRun:
    """Run the 3D protocol for one model, skipping units `results` already holds.

    Args:
        sam: a `segment_anything` Sam (on the device to use).
        samples: labeled volumes (KJI).
        settings: start prompt ("point" / "box") -> propagation settings to run from it (the grid
            on validation data, the selected setting on test data).
        config: objects and axis.
        model, dataset, split: names written into the rows.
        results: the CSV to append to and resume from.
        max_objects: stop after this many newly finished (object, start, setting) units.
        show_progress: a tqdm bar with a time estimate.

    Returns:
        The run; `run.skipped` lists (image, object) pairs too small on their central slice.
    """
    check_starts(list(settings))
    run = EvaluationRun()
    done = results.done if results is not None else set()
    n_objects = 0
    with get_progress_bar(len(samples), f"3D {split} {model}", show_progress) as bar:
        for sample in samples:
            objects = get_objects(sample.label, config.classes, config.min_size, config.split_components)
            n_objects += len(objects)
            if objects:
                warn_if_blank(sample)
            predictor = None
            units = [(obj, start) for obj in objects for start in settings]
            for obj, start in units:
                index = get_central_slice(obj, config.axis)
                target = obj.get_mask()
                target_slice = np.take(target, index, axis=config.axis)
                if np.count_nonzero(target_slice) < config.min_slice_size:
                    if start == next(iter(settings)):
                        run.skipped.append((sample.image_id, obj.object_id))
                    bar.update(1 / len(units))
                    continue
                keys = [get_setting_key(s) for s in settings[start]]
                todo = [s for s, key in zip(settings[start], keys)
                        if (model, dataset, split, sample.image_id, obj.object_id, start, *map(str, key)) not in done]
                if todo:
                    if max_objects is not None and len(run.rows) >= max_objects:
                        return run
                    predictor = predictor or VolumePredictor(
                        sam, sample.image, get_intensity_window(sample.image, config.window), model_id=model_id,
                        volume_id=f"{dataset}/{sample.image_id}", **get_speed_options(config.fast))
                    prompts = get_start_prompts(target_slice, start)
                    seed_mask = predictor.predict(config.axis, index, prompts).masks[0]
                    trace = ObjectTrace3D(sample.image_id, obj.class_id, obj.object_id, start, index, prompts,
                                          seed_mask, get_dice(seed_mask, target_slice), {})
                    run.traces.append(trace)
                    for setting in todo:
                        if max_objects is not None and len(run.rows) >= max_objects:
                            return run
                        key = get_setting_key(setting)
                        volume_mask = get_propagated_mask(predictor, config.axis, index, seed_mask, setting)
                        trace.dice[key] = get_dice(volume_mask, target)
                        run.add_rows(get_rows_3d(trace, model, dataset, split, [key]), results)
                bar.update(1 / len(units))
            if not units:
                bar.update(1)
    warn_if_no_objects(len(samples), n_objects, config.classes, config.min_size)
    run.complete = True
    return run


def select_best_settings(rows: Iterable[Mapping[str, object]], settings: Mapping[str, Sequence[PropagationConfig]],
                         model: str, dataset: str, split: str = "val") -> Dict[str, BestSetting]:
    """Per start prompt, the setting with the best mean Dice over the objects of `split`.

    Ties go to the first setting in grid order. Raises EvaluationError when a start has no result.
    """
    values: Dict[Tuple[str, Tuple[str, float, float]], List[float]] = {}
    for row in rows:
        if (str(row["model"]), str(row["dataset"]), str(row["split"])) == (model, dataset, split):
            key = (str(row["mode"]), float(row["iou_threshold"]), float(row["box_extension"]))
            values.setdefault((str(row["start"]), key), []).append(float(row["dice"]))
    best: Dict[str, BestSetting] = {}
    for start, candidates in settings.items():
        for setting in candidates:
            dice = values.get((start, get_setting_key(setting)))
            if dice and (start not in best or np.mean(dice) > best[start].dice):
                best[start] = BestSetting(setting, float(np.mean(dice)), len(dice))
        if start not in best:
            raise EvaluationError(f"no {split} results for model {model!r}, dataset {dataset!r}, start {start!r}: "
                                  "the validation data has no object usable for the grid search (check its "
                                  "labels, --classes and --min-size)")
    return best
