"""The resumable loop both protocols run in: images one at a time, finished units skipped, rows saved as they come.

A *unit* is what the results CSV records as finished: an object from one start prompt (2D), and
in 3D with one propagation setting. A protocol describes each unit by the row fields known before
it runs (every key column among them), so the loop can tell from the CSV which are left.

`max_objects` counts objects, in 2D and 3D alike: an object is one object of one image, with all
its units (every start, and every setting of the split in 3D). The loop stops before it starts an
object beyond the budget; an object it started is finished, so a run stopped this way holds whole
objects and the next call continues with the next one.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .data import LabeledImage
from .protocol import ObjectMask
from .results import ResultsCSV, Row

logger = logging.getLogger(__name__)

#: An object with the units it still needs.
Pending = Tuple[ObjectMask, List[Row]]


@dataclasses.dataclass
class EvaluationRun:
    """What one evaluation call did: the rows it wrote, its traces, and whether everything is done.

    `skipped` lists (image, object) pairs left out by the protocol (3D: too small on the central
    slice); `n_objects` counts the objects this call finished (the unit of `max_objects`).
    """

    rows: List[dict] = dataclasses.field(default_factory=list)
    traces: list = dataclasses.field(default_factory=list)
    complete: bool = False
    skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    n_objects: int = 0
    results: Optional[ResultsCSV] = dataclasses.field(default=None, repr=False)

    def add_rows(self, rows: List[dict]) -> None:
        """Keep the rows of a finished unit, appending them to the results CSV first when there is one."""
        if self.results is not None:
            self.results.append(rows)
        self.rows.extend(rows)


class Protocol(abc.ABC):
    """A protocol as the loop drives it; `config` has the `classes` and `min_size` of its objects."""

    config: object
    #: Objects of an image evaluated together, in fixed groups (a result must not depend on where a run resumed).
    group_size: int = 1

    @abc.abstractmethod
    def get_objects(self, sample: LabeledImage) -> Tuple[List[ObjectMask], List[ObjectMask]]:
        """(objects to evaluate, objects the protocol leaves out) of one image."""

    @abc.abstractmethod
    def get_units(self, sample: LabeledImage, obj: ObjectMask) -> List[Row]:
        """The units of one object in run order, each as its row fields known before it runs."""

    @abc.abstractmethod
    def get_predictor(self, sample: LabeledImage):
        """The `VolumePredictor` of one image, made only when some unit of it is left."""

    @abc.abstractmethod
    def evaluate(self, predictor, sample: LabeledImage, group: Sequence[ObjectMask], pending: Sequence[Pending],
                 run: EvaluationRun) -> None:
        """Run the pending units of some objects of `group`, adding each unit's rows as it finishes."""


def run_protocol(protocol: Protocol, samples: Sequence[LabeledImage], *, results: Optional[ResultsCSV],
                 max_objects: Optional[int], description: str, show_progress: bool) -> EvaluationRun:
    """Evaluate every unit of `samples` that `results` does not hold yet (see the module docstring)."""
    run = EvaluationRun(results=results)
    n_found = 0
    with get_progress_bar(len(samples), description, show_progress) as bar:
        for sample in samples:
            objects, skipped = protocol.get_objects(sample)
            n_found += len(objects) + len(skipped)
            run.skipped += [(sample.image_id, obj.object_id) for obj in skipped]
            if objects or skipped:
                warn_if_blank(sample)
            predictor = None
            for first in range(0, len(objects), protocol.group_size):
                group = objects[first: first + protocol.group_size]
                pending = [(obj, units) for obj, units in ((obj, _get_left(protocol, sample, obj, results))
                                                           for obj in group) if units]
                if pending:
                    room = len(pending) if max_objects is None else max_objects - run.n_objects
                    if room <= 0:
                        return run
                    predictor = predictor or protocol.get_predictor(sample)
                    protocol.evaluate(predictor, sample, group, pending[:room], run)
                    run.n_objects += len(pending[:room])
                    if room < len(pending):
                        return run
                bar.update(len(group) / len(objects))
            if not objects:
                bar.update(1)
    warn_if_no_objects(len(samples), n_found, protocol.config.classes, protocol.config.min_size)
    run.complete = True
    return run


def _get_left(protocol: Protocol, sample: LabeledImage, obj: ObjectMask, results: Optional[ResultsCSV]) -> List[Row]:
    units = protocol.get_units(sample, obj)
    return units if results is None else [unit for unit in units if results.get_key(unit) not in results.done]


def get_progress_bar(n_items: int, description: str, enabled: bool = True):
    """A tqdm bar over images / volumes that advances by fractions as their objects finish.

    Fractional steps keep the time estimate honest when one image holds many objects.
    """
    from tqdm.auto import tqdm

    return tqdm(total=n_items, desc=description, disable=not enabled, unit="image",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} [{elapsed}<{remaining}]")


def warn_if_blank(sample: LabeledImage) -> None:
    """Warn when SAM would see nothing in an image that has objects (no finite value, or one value
    everywhere): its objects are still scored, and such scores say nothing about the model."""
    image = sample.image
    finite = image[np.isfinite(image)] if image.dtype.kind == "f" else image
    if finite.size == 0 or finite.min() == finite.max():
        what = "no finite values (all NaN/inf)" if finite.size == 0 else f"one value ({finite.flat[0]}) everywhere"
        logger.warning("%s: the image has %s, so SAM sees a blank image; its objects are scored anyway: "
                       "check the image file", sample.image_id, what)


def warn_if_no_objects(n_images: int, n_objects: int, classes: Optional[Sequence[int]], min_size: int) -> None:
    """Warn when no label map held an object to evaluate: the results would be empty without a word."""
    if n_objects == 0:
        which = f"of classes {list(classes)} " if classes else ""
        logger.warning("no object to evaluate in %d images: their label maps are all zero or hold no object %s"
                       "of at least --min-size %d, so the results are empty; check the label files, --classes "
                       "and --min-size", n_images, which, min_size)
