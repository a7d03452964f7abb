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

from medicosam.errors import MedicoSAMError
from medicosam.normalization import PRESETS, get_intensity_window
from medicosam.predictor import VolumePredictor, get_speed_options
from medicosam.prompts import CORRECTION_MODES, Prompts, get_box, get_center_point, sample_correction_points

from .data import LabeledImage, ObjectMask, get_objects, warn_if_blank, warn_if_no_objects
from .metrics import get_dice
from .reports import ResultsCSV, get_progress_bar

#: How an object's annotation starts.
START_PROMPTS = ("point", "box")
#: Columns of the 2D results CSV (one row per object, start and iteration) and the key of a finished unit.
FIELDS_2D = ("model", "dataset", "image", "class", "object", "start", "iteration", "n_points", "dice")
KEY_FIELDS_2D = ("model", "dataset", "image", "object", "start")


class EvaluationError(MedicoSAMError, ValueError):
    """An evaluation setting that cannot work (unknown start, negative counts)."""


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
            raise EvaluationError(f"n_corrections must be >= 0, min_size and batch_size >= 1; got "
                                  f"{self.n_corrections}, {self.min_size}, {self.batch_size}")
        if self.correction_mode not in CORRECTION_MODES:
            raise EvaluationError(f"unknown correction mode {self.correction_mode!r}: use one of {CORRECTION_MODES}")
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


@dataclasses.dataclass
class EvaluationRun:
    """What one evaluation call did: the rows it wrote, its traces, and whether everything is done.

    `skipped` lists (image, object) pairs left out by the protocol (3D: too small on the central slice).
    """

    rows: List[dict] = dataclasses.field(default_factory=list)
    traces: list = dataclasses.field(default_factory=list)
    complete: bool = False
    skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)

    def add_rows(self, rows: List[dict], results: Optional[ResultsCSV]) -> None:
        """Keep finished rows, appending them to the results CSV first when there is one."""
        if results is not None:
            results.append(rows)
        self.rows.extend(rows)


def check_window(preset: str) -> None:
    if preset not in PRESETS:
        raise EvaluationError(f"unknown intensity preset {preset!r}: use one of {PRESETS}")


def check_starts(starts: Sequence[str]) -> Tuple[str, ...]:
    unknown = [s for s in starts if s not in START_PROMPTS]
    if unknown or not starts:
        raise EvaluationError(f"unknown or missing start prompts {list(starts)}: use some of {START_PROMPTS}")
    return tuple(starts)


def get_start_prompts(mask: np.ndarray, start: str) -> Prompts:
    """The first prompt for an object: its distance-transform centre point or its exact box."""
    if start == "point":
        return Prompts(points=get_center_point(mask)[None], labels=np.ones(1, np.int64))
    if start == "box":
        return Prompts(box=get_box(mask))
    raise EvaluationError(f"unknown start prompt {start!r}: use one of {START_PROMPTS}")


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


def get_rows_2d(trace: ObjectTrace, model: str, dataset: str) -> List[dict]:
    """The CSV rows of one trace, one per iteration."""
    return [{"model": model, "dataset": dataset, "image": trace.image_id, "class": trace.class_id,
             "object": trace.object_id, "start": trace.start, "iteration": iteration,
             "n_points": len(prompt.points), "dice": dice}
            for iteration, (prompt, dice) in enumerate(zip(trace.prompts, trace.dice))]


def evaluate_interactive_2d(sam, samples: Sequence[LabeledImage], config: Interactive2DConfig, *,
                            starts: Sequence[str] = START_PROMPTS, model: str = "model", dataset: str = "dataset",
                            results: Optional[ResultsCSV] = None, max_objects: Optional[int] = None,
                            record_masks: bool = False, show_progress: bool = True) -> EvaluationRun:
    """Run the 2D protocol for one model on labeled 2D images, skipping units `results` already holds.

    Args:
        sam: a `segment_anything` Sam (on the device to use).
        samples: labeled images (e.g. a `LabeledFolder`), read one at a time.
        config: the protocol settings.
        starts: which start prompts to run ("point", "box").
        model, dataset: names written into the rows.
        results: the CSV to append to and resume from (None: the new rows are only returned).
        max_objects: stop after this many newly finished (object, start) units; the run is then
            incomplete and a later call resumes it.
        record_masks: keep every predicted mask in the traces (tests, figures).
        show_progress: a tqdm bar with a time estimate on stderr.
    """
    starts = check_starts(starts)
    run = EvaluationRun()
    done = results.done if results is not None else set()
    n_objects = 0
    with get_progress_bar(len(samples), f"2D {model}", show_progress) as bar:
        for sample in samples:
            objects = get_objects(sample.label, config.classes, config.min_size)
            n_objects += len(objects)
            if objects:
                warn_if_blank(sample)
            units = [(start, objects[i: i + config.batch_size]) for start in starts
                     for i in range(0, len(objects), config.batch_size)]
            predictor = None
            for start, chunk in units:
                todo = [(model, dataset, sample.image_id, obj.object_id, start) not in done for obj in chunk]
                if any(todo):
                    if max_objects is not None and len(run.traces) >= max_objects:
                        return run
                    image = sample.image[None] if sample.image.ndim == 3 else sample.image  # colour: 1 slice
                    predictor = predictor or VolumePredictor(
                        sam, image, get_intensity_window(image, config.window), **get_speed_options(config.fast))
                    traces = run_interactive_2d(predictor, chunk, start, config, sample.image_id, record_masks)
                    for trace in (t for t, flag in zip(traces, todo) if flag):
                        if max_objects is not None and len(run.traces) >= max_objects:
                            return run
                        run.add_rows(get_rows_2d(trace, model, dataset), results)
                        run.traces.append(trace)
                bar.update(1 / len(units))
            if not units:
                bar.update(1)
    warn_if_no_objects(len(samples), n_objects, config.classes, config.min_size)
    run.complete = True
    return run
