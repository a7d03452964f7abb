"""Simulated interactive 2D segmentation: one start prompt, then correction clicks (paper Sec. 2.5).

Per object (a connected component of a class, at least `min_size` pixels): iteration 0 prompts
with one positive point at the object's distance-transform centre (SAM's three masks, the one with
the best predicted IoU kept) or with the object's exact bounding box. Each of the
`n_corrections` later iterations adds one positive click from the missed region and one negative
click from the wrongly predicted region of the previous prediction (`medicosam.prompts.
sample_correction_points`, micro-sam's rule, fallbacks included); earlier points and the box are
kept, and the previous low-res logits can be fed back as mask prompt. Dice against the object is
measured after every iteration.

Determinism: each object's clicks come from its own generator, seeded with (seed, crc32 of
"image/object/start"), and the objects of an image are decoded in fixed chunks of `batch_size`,
so a result does not depend on which other objects were evaluated in the same call: resuming an
interrupted evaluation gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import List, Optional, Sequence, Tuple

import numpy as np

from medicosam.errors import InputError
from medicosam.normalization import get_intensity_window
from medicosam.overlap import get_dice
from medicosam.predictor import VolumePredictor
from medicosam.prompts import CORRECTION_MODES, Prompts, sample_correction_points

from .data import LabeledImage
from .loop import EvaluationRun, Pending, Protocol, run_protocol
from .protocol import (
    START_PROMPTS,
    ObjectMask,
    check_starts,
    check_window,
    get_model_predictor,
    get_sample_objects,
    get_start_prompts,
)
from .results import ResultsCSV, Row

#: Columns of the 2D results CSV (one row per object, start and iteration) and the key of a finished unit.
FIELDS_2D = ("model", "dataset", "image", "class", "object", "start", "iteration", "n_points", "dice")
KEY_FIELDS_2D = ("model", "dataset", "image", "object", "start")


@dataclasses.dataclass
class Interactive2DConfig:
    """The protocol (defaults: the paper's; `n_corrections=7` gives its 8 iterations)."""

    n_corrections: int = 7
    use_mask_prompt: bool = False  # feed the previous logits back (the paper's default runs: off)
    correction_mode: str = "random"  # see medicosam.prompts.CORRECTION_MODES
    min_size: int = 20  # smallest object in pixels
    classes: Optional[Tuple[int, ...]] = None  # None: every class in the label map
    seed: int = 0
    batch_size: int = 16  # objects of one image decoded together
    window: str = "auto"  # intensity preset per image (medicosam.normalization.PRESETS)
    fast: bool = False  # medicosam.predictor.get_speed_options; off: the official fp32 path, as the paper

    def __post_init__(self) -> None:
        if self.n_corrections < 0 or self.min_size < 1 or self.batch_size < 1:
            raise InputError(f"n_corrections must be >= 0, min_size and batch_size >= 1; got "
                             f"{self.n_corrections}, {self.min_size}, {self.batch_size}")
        if self.correction_mode not in CORRECTION_MODES:
            raise InputError(f"unknown correction mode {self.correction_mode!r}: use one of {CORRECTION_MODES}")
        check_window(self.window)
        if self.classes is not None:
            self.classes = tuple(int(c) for c in self.classes)


@dataclasses.dataclass
class ObjectTrace:
    """Everything the simulated annotator did for one object from one start.

    Attributes:
        prompts: the prompts of each iteration (index 0: the start prompt).
        dice: Dice after each iteration.
        masks: the predicted mask after each iteration (only when recorded).
    """

    image_id: str
    class_id: int
    object_id: str
    start: str
    prompts: List[Prompts]
    dice: List[float]
    masks: Optional[List[np.ndarray]] = None


def get_object_rng(seed: int, *key: str) -> np.random.Generator:
    """A generator for one object, independent of every other object (stable across runs and resumes)."""
    return np.random.default_rng([seed, zlib.crc32("/".join(key).encode())])


def run_interactive_2d(predictor: VolumePredictor, objects: Sequence[ObjectMask], start: str,
                       config: Interactive2DConfig, image_id: str, record_masks: bool = False) -> List[ObjectTrace]:
    """Simulate the annotation of several objects of one image (slice 0 of `predictor`), decoded together."""
    targets = [obj.get_mask() for obj in objects]
    rngs = [get_object_rng(config.seed, image_id, obj.object_id, start) for obj in objects]
    prompts = [get_start_prompts(target, start) for target in targets]
    traces = [ObjectTrace(image_id, obj.class_id, obj.object_id, start, [], [], [] if record_masks else None)
              for obj in objects]
    prediction = None
    for iteration in range(config.n_corrections + 1):
        if iteration > 0:
            prompts = [_get_corrected_prompts(p, target, mask, logits, rng, config)
                       for p, target, mask, logits, rng in zip(prompts, targets, prediction.masks,
                                                                prediction.logits, rngs)]
        prediction = predictor.predict(0, 0, prompts)
        for trace, prompt, target, mask in zip(traces, prompts, targets, prediction.masks):
            trace.prompts.append(prompt)
            trace.dice.append(get_dice(mask, target))
            if record_masks:
                trace.masks.append(mask)
    return traces


def _get_corrected_prompts(prompts: Prompts, target: np.ndarray, mask: np.ndarray, logits: np.ndarray,
                           rng: np.random.Generator, config: Interactive2DConfig) -> Prompts:
    points, labels = sample_correction_points(target, mask, rng, mode=config.correction_mode)
    corrected = prompts.with_points(points, labels)
    return dataclasses.replace(corrected, logits=logits) if config.use_mask_prompt else corrected


class _Protocol2D(Protocol):
    """The 2D protocol for one model: units are (object, start); a group is one decoding chunk."""

    def __init__(self, sam, config: Interactive2DConfig, starts: Sequence[str], model: str, dataset: str,
                 record_masks: bool):
        self.sam, self.config, self.starts = sam, config, check_starts(starts)
        self.model, self.dataset, self.record_masks = model, dataset, record_masks
        self.group_size = config.batch_size

    def get_objects(self, sample: LabeledImage) -> Tuple[List[ObjectMask], List[ObjectMask]]:
        return get_sample_objects(sample, self.config.classes, self.config.min_size), []

    def get_units(self, sample: LabeledImage, obj: ObjectMask) -> List[Row]:
        return [{"model": self.model, "dataset": self.dataset, "image": sample.image_id, "class": obj.class_id,
                 "object": obj.object_id, "start": start} for start in self.starts]

    def get_predictor(self, sample: LabeledImage) -> VolumePredictor:
        image = sample.image[None] if sample.image.ndim == 3 else sample.image  # colour: one slice
        return get_model_predictor(self.sam, image, get_intensity_window(image, self.config.window), self.config.fast)

    def evaluate(self, predictor, sample: LabeledImage, group: Sequence[ObjectMask], pending: Sequence[Pending],
                 run: EvaluationRun) -> None:
        """Decode the whole chunk once per start that some pending object lacks, then keep the pending
        units object by object (the file's order does not depend on where a run stopped)."""
        starts = {unit["start"] for _, units in pending for unit in units}
        traces = {(trace.object_id, start): trace for start in self.starts if start in starts
                  for trace in run_interactive_2d(predictor, group, start, self.config, sample.image_id,
                                                  self.record_masks)}
        for obj, units in pending:
            for unit in units:
                trace = traces[obj.object_id, unit["start"]]
                run.add_rows([{**unit, "iteration": iteration, "n_points": len(prompt.points), "dice": dice}
                              for iteration, (prompt, dice) in enumerate(zip(trace.prompts, trace.dice))])
                run.traces.append(trace)


def evaluate_interactive_2d(sam, samples: Sequence[LabeledImage], config: Interactive2DConfig, *,
                            starts: Sequence[str] = START_PROMPTS, model: str = "model", dataset: str = "dataset",
                            results: Optional[ResultsCSV] = None, max_objects: Optional[int] = None,
                            record_masks: bool = False, show_progress: bool = True) -> EvaluationRun:
    """Run the 2D protocol for one model on labeled 2D images, skipping units `results` already holds.

    Args:
        sam: a loaded model (`load_sam`: any family) or a `segment_anything` Sam, on the device to use.
        samples: labeled images (e.g. a `LabeledFolder`), read one at a time.
        config: the protocol settings.
        starts: which start prompts to run ("point", "box").
        model, dataset: names written into the rows.
        results: the CSV to append to and resume from (None: the new rows are only returned).
        max_objects: stop after this many newly finished objects (each with every start); the run
            is then incomplete and a later call resumes it.
        record_masks: keep every predicted mask in the traces (tests, figures).
        show_progress: a tqdm bar with a time estimate on stderr.
    """
    protocol = _Protocol2D(sam, config, starts, model, dataset, record_masks)
    return run_protocol(protocol, samples, results=results, max_objects=max_objects, description=f"2D {model}",
                        show_progress=show_progress)
