"""Simulated interactive 3D segmentation: a prompt on an object's central slice, then propagation.

Per object (a class of the label volume, or each connected component with `split_components`):
the central slice along `axis` is the middle of the object's extent, floor((first + last) / 2),
as in micro-sam; objects with fewer than `min_slice_size` pixels there are skipped (micro-sam's
rule). The start prompt is the shared one (`protocol.get_start_prompts`: distance-transform centre
point with the best of SAM's three masks, or the exact box); the predicted mask on that slice is
the seed that `VolumePredictor.propagate` carries through the volume. Dice is measured on the
whole volume.

Propagation settings (mode x IoU threshold x box extension) are chosen by a grid search on a
validation split, one best setting per model and start prompt (mean Dice over the validation
objects), and only that setting is then run on the test split. The reference implementation
instead reports the best setting per test volume, an oracle (docs/evaluation.md). A model's grid
holds only the settings its family honours (`Capabilities.propagation_settings`; the others keep
their defaults), so SAM and LiteMedSAM search the whole grid, while SAM2, whose engine propagates
natively (slices as video frames with its memory bank) and honours none of the three, runs one
default setting without a grid search, as in the paper; rows of native engines are marked `NATIVE`.

A setting is a `PropagationConfig`; its columns and keys are that class's option fields, so a new
propagation field becomes a column here (and older CSVs, without it, read as its default).
"""

from __future__ import annotations

import dataclasses
from typing import Collection, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from medicosam.errors import DataError, InputError
from medicosam.models.families import PROPAGATION_SETTINGS
from medicosam.normalization import get_intensity_window
from medicosam.options import get_option_fields
from medicosam.overlap import get_dice
from medicosam.predictor import VolumePredictor
from medicosam.prompts import PROPAGATION_MODES, Prompts
from medicosam.propagation import PropagationConfig, get_volume_mask

from .data import LabeledImage
from .loop import EvaluationRun, Pending, Protocol, run_protocol
from .protocol import (
    ObjectMask,
    check_starts,
    check_window,
    get_model_family,
    get_model_predictor,
    get_sample_objects,
    get_start_prompts,
)
from .results import ResultsCSV, Row, format_value

#: The propagation setting's columns: every option field of `PropagationConfig`, in declaration order.
SETTING_FIELDS = tuple(field.name for field in get_option_fields(PropagationConfig))
#: Columns of the 3D results CSV (one row per object, start and propagation setting) and the unit key.
FIELDS_3D = ("model", "dataset", "split", "image", "class", "object", "start", "slice", *SETTING_FIELDS,
             "propagation", "seed_dice", "dice")
#: The `propagation` column: prompt propagation (setting from the grid search) or a native engine (SAM2's).
PROMPTED, NATIVE = "prompt propagation", "native propagation, no grid search"
KEY_FIELDS_3D = ("model", "dataset", "split", "image", "object", "start", *SETTING_FIELDS)
#: What a results CSV from before a propagation field existed held for it: the field's default
#: (a new field defaults to the earlier behaviour), so such files resume (`ResultsCSV`'s `fill`).
FILL_3D = {**{field.name: field.default for field in get_option_fields(PropagationConfig)}, "propagation": PROMPTED}


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
            raise InputError(f"axis must be 0, 1 or 2 (KJI array axes), got {self.axis}")
        check_window(self.window)
        if self.classes is not None:
            self.classes = tuple(int(c) for c in self.classes)


@dataclasses.dataclass(frozen=True)
class PropagationGrid:
    """The propagation settings to search (defaults: micro-sam's grid, 5 x 5 x 11 values)."""

    modes: Tuple[str, ...] = PROPAGATION_MODES
    iou_thresholds: Tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    box_extensions: Tuple[float, ...] = tuple(round(0.025 * i, 3) for i in range(11))

    def get_settings(self, honoured: Collection[str] = PROPAGATION_SETTINGS) -> List[PropagationConfig]:
        """Every combination of the values of the `honoured` settings (the others keep their defaults),
        except that "single_point" (which ignores the box) gets one extension."""
        default = PropagationConfig()
        modes = self.modes if "mode" in honoured else (default.mode,)
        thresholds = self.iou_thresholds if "iou_threshold" in honoured else (default.iou_threshold,)
        extensions = self.box_extensions if "box_extension" in honoured else (default.box_extension,)
        settings = []
        for mode in modes:
            kept = extensions[:1] if mode == "single_point" else extensions
            settings += [PropagationConfig(mode=mode, iou_threshold=float(t), box_extension=float(e))
                         for t in thresholds for e in kept]
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
    dice: Dict[Tuple[str, ...], float]  # by get_setting_key


@dataclasses.dataclass
class BestSetting:
    """The propagation setting with the best mean validation Dice for one model and start."""

    config: PropagationConfig
    dice: float
    n: int


def get_setting_key(setting: Union[PropagationConfig, Mapping[str, object]]) -> Tuple[str, ...]:
    """A propagation setting (a config, or the setting columns of a row) as the results CSV writes it."""
    values = vars(setting) if isinstance(setting, PropagationConfig) else setting
    return tuple(format_value(values[name]) for name in SETTING_FIELDS)


def get_central_slice(obj: ObjectMask, axis: int) -> int:
    """The middle of the object's extent along `axis` (micro-sam: floor(mean(first, last)))."""
    extent = obj.bbox[axis]
    return (extent.start + extent.stop - 1) // 2


def get_propagated_mask(predictor: VolumePredictor, axis: int, index: int, seed_mask: np.ndarray,
                        config: PropagationConfig) -> np.ndarray:
    """The 3D mask that propagating `seed_mask` from slice `index` along `axis` gives."""
    result = predictor.propagate(axis, {index: seed_mask}, config)
    return get_volume_mask(result.masks, predictor.volume.shape, axis)



class _Protocol3D(Protocol):
    """The 3D protocol for one model and split: units are (object, start, setting); objects run one by one."""

    def __init__(self, sam, settings: Mapping[str, Sequence[PropagationConfig]], config: Interactive3DConfig,
                 model: str, model_id: str, dataset: str, split: str):
        check_starts(list(settings))
        self.sam, self.settings, self.config = sam, settings, config
        self.model, self.model_id, self.dataset, self.split = model, model_id, dataset, split
        self.propagation = NATIVE if get_model_family(sam).capabilities.native_propagation else PROMPTED

    def get_objects(self, sample: LabeledImage) -> Tuple[List[ObjectMask], List[ObjectMask]]:
        """The objects of the volume, and those with fewer than `min_slice_size` pixels on their central slice."""
        config = self.config
        kept, skipped = [], []
        for obj in get_sample_objects(sample, config.classes, config.min_size, config.split_components):
            index = get_central_slice(obj, config.axis) - obj.bbox[config.axis].start
            area = np.count_nonzero(np.take(obj.crop, index, axis=config.axis))
            (kept if area >= config.min_slice_size else skipped).append(obj)
        return kept, skipped

    def get_units(self, sample: LabeledImage, obj: ObjectMask) -> List[Row]:
        base = {"model": self.model, "dataset": self.dataset, "split": self.split, "image": sample.image_id,
                "class": obj.class_id, "object": obj.object_id}
        return [{**base, "start": start, **{name: getattr(setting, name) for name in SETTING_FIELDS}}
                for start, settings in self.settings.items() for setting in settings]

    def get_predictor(self, sample: LabeledImage) -> VolumePredictor:
        return get_model_predictor(self.sam, sample.image, get_intensity_window(sample.image, self.config.window),
                                   self.config.fast, model_id=self.model_id,
                                   volume_id=f"{self.dataset}/{sample.image_id}")

    def evaluate(self, predictor, sample: LabeledImage, group: Sequence[ObjectMask], pending: Sequence[Pending],
                 run: EvaluationRun) -> None:
        """Per start: the seed on the central slice, then each pending setting's propagation (one row each)."""
        (obj, units), = pending
        axis = self.config.axis
        index = get_central_slice(obj, axis)
        target = obj.get_mask()
        target_slice = np.take(target, index, axis=axis)
        for start in self.settings:
            todo = [unit for unit in units if unit["start"] == start]
            if not todo:
                continue
            prompts = get_start_prompts(target_slice, start)
            seed_mask = predictor.predict(axis, index, prompts).masks[0]
            trace = ObjectTrace3D(sample.image_id, obj.class_id, obj.object_id, start, index, prompts, seed_mask,
                                  get_dice(seed_mask, target_slice), {})
            run.traces.append(trace)
            for unit in todo:
                setting = PropagationConfig(**{name: unit[name] for name in SETTING_FIELDS})
                dice = get_dice(get_propagated_mask(predictor, axis, index, seed_mask, setting), target)
                trace.dice[get_setting_key(setting)] = dice
                run.add_rows([{**unit, "slice": index, "propagation": self.propagation, "seed_dice": trace.seed_dice,
                               "dice": dice}])


def evaluate_interactive_3d(sam, samples: Sequence[LabeledImage], settings: Mapping[str, Sequence[PropagationConfig]],
                            config: Interactive3DConfig, *, model: str = "model", model_id: str = "",
                            dataset: str = "dataset", split: str = "test", results: Optional[ResultsCSV] = None,
                            max_objects: Optional[int] = None, show_progress: bool = True) -> EvaluationRun:
    """Run the 3D protocol for one model, skipping units `results` already holds.

    Args:
        sam: a loaded model (`load_sam`: any family) or a `segment_anything` Sam, on the device to use.
        samples: labeled volumes (KJI).
        settings: start prompt ("point" / "box") -> propagation settings to run from it (the grid
            on validation data, the selected setting on test data).
        config: objects and axis.
        model, dataset, split: names written into the rows.
        results: the CSV to append to and resume from.
        max_objects: stop after this many newly finished objects (each with every start and setting).
        show_progress: a tqdm bar with a time estimate.

    Returns:
        The run; `run.skipped` lists (image, object) pairs too small on their central slice.
    """
    protocol = _Protocol3D(sam, settings, config, model, model_id, dataset, split)
    return run_protocol(protocol, samples, results=results, max_objects=max_objects,
                        description=f"3D {split} {model}", show_progress=show_progress)


def select_best_settings(rows: Iterable[Mapping[str, object]], settings: Mapping[str, Sequence[PropagationConfig]],
                         model: str, dataset: str, split: str = "val") -> Dict[str, BestSetting]:
    """Per start prompt, the setting with the best mean Dice over the objects of `split`.

    Ties go to the first setting in grid order. Raises DataError when a start has no result.
    """
    values: Dict[Tuple[str, Tuple[str, ...]], List[float]] = {}
    for row in rows:
        if (str(row["model"]), str(row["dataset"]), str(row["split"])) == (model, dataset, split):
            values.setdefault((str(row["start"]), get_setting_key(row)), []).append(float(row["dice"]))
    best: Dict[str, BestSetting] = {}
    for start, candidates in settings.items():
        for setting in candidates:
            dice = values.get((start, get_setting_key(setting)))
            if dice and (start not in best or np.mean(dice) > best[start].dice):
                best[start] = BestSetting(setting, float(np.mean(dice)), len(dice))
        if start not in best:
            raise DataError(f"no {split} results for model {model!r}, dataset {dataset!r}, start {start!r}: "
                            "the validation data has no object usable for the grid search (check its "
                            "labels, --classes and --min-size)")
    return best
