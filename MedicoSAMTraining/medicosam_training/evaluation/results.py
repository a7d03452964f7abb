"""Results on disk: the resumable CSV of every measurement, and the run's protocol file beside it.

`ResultsCSV` is what makes long evaluations interruptible: each finished unit (one object from one
start, plus its propagation setting in 3D) appends all its rows in one write and flushes. Reopening
the file drops incomplete units (a torn last write) and reports the finished keys, which the
evaluation then skips. `check_run_config` keeps a resumed run from mixing results of another
protocol configuration into the same file, and `bind_model` keeps a model label bound to one set of
weights.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from medicosam.atomic import writing_atomically
from medicosam.errors import DataError

PathLike = Union[str, Path]
Row = Dict[str, object]

#: Where a protocol file records which weights each model label stood for.
MODELS_KEY = "models"


def format_value(value: object) -> str:
    """The text a value has in the CSV (so rows read back equal rows just written); floats round-trip."""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


class ResultsCSV:
    """An append-only CSV of measurements, keyed by the unit of work that produced them.

    Args:
        path: the CSV file (created with a header when missing).
        fields: column names, in order.
        key_fields: the columns that identify a unit of work (e.g. model, image, object, start).
        rows_per_key: how many rows a finished unit has; units with fewer rows are dropped on open.
        fill: columns a file written by an earlier version may lack, with the value its rows had
            (3D: a propagation field added since); such a file is rewritten with every column.
    """

    def __init__(self, path: PathLike, fields: Sequence[str], key_fields: Sequence[str], rows_per_key: int = 1,
                 fill: Optional[Mapping[str, object]] = None):
        self.path = Path(path)
        self.fields = list(fields)
        self.key_fields = list(key_fields)
        self.rows_per_key = rows_per_key
        self.fill = {name: format_value(value) for name, value in (fill or {}).items()}
        self.rows: List[Dict[str, str]] = []
        if self.path.exists():
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite()
        self.done = {self.get_key(row) for row in self.rows}

    def get_key(self, row: Mapping[str, object]) -> Tuple[str, ...]:
        return tuple(format_value(row[field]) for field in self.key_fields)

    def _load(self) -> None:
        text = self.path.read_text()
        complete_lines = text.splitlines(keepends=True)
        torn = bool(complete_lines) and not complete_lines[-1].endswith("\n")  # interrupted mid-write
        if torn:
            complete_lines = complete_lines[:-1]
        reader = csv.DictReader(complete_lines)
        columns = list(reader.fieldnames or [])
        missing = [field for field in self.fields if field not in columns]
        if not columns or set(columns) - set(self.fields) or set(missing) - set(self.fill):
            raise DataError(f"{self.path} has columns {columns}, this evaluation writes {self.fields}: write "
                            "to another output folder or pass --overwrite")
        rows = [{**{field: self.fill[field] for field in missing}, **row} for row in reader]
        counts: Dict[Tuple[str, ...], int] = {}
        for row in rows:
            counts[self.get_key(row)] = counts.get(self.get_key(row), 0) + 1
        self.rows = [row for row in rows if counts[self.get_key(row)] == self.rows_per_key]
        if torn or missing or columns != self.fields or len(self.rows) != len(rows):
            self._rewrite()

    def _rewrite(self) -> None:
        with writing_atomically(self.path) as temporary, open(temporary, "w", newline="") as file:
            file.write(self._format(self.rows, header=True))

    def _format(self, rows: Iterable[Mapping[str, object]], header: bool = False) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.fields, lineterminator="\n", extrasaction="ignore")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()

    def append(self, rows: Sequence[Mapping[str, object]]) -> None:
        """Write the rows of one or more finished units at once and flush them to disk."""
        rows = [{field: format_value(row[field]) for field in self.fields} for row in rows]
        with open(self.path, "a", newline="") as file:
            file.write(self._format(rows))
            file.flush()
        self.rows.extend(rows)
        self.done.update(self.get_key(row) for row in rows)


def check_run_config(path: PathLike, config: Mapping[str, object]) -> None:
    """Record the protocol settings of an output folder, or check that a resumed run uses the same.

    Raises DataError naming the differing settings (the model records are checked by `bind_model`).
    """
    path = Path(path)
    config = json.loads(json.dumps(config))
    if path.exists():
        previous = json.loads(path.read_text())
        previous.pop(MODELS_KEY, None)
        differing = sorted(key for key in set(previous) | set(config) if previous.get(key) != config.get(key))
        if differing:
            details = ", ".join(f"{key}: {previous.get(key)!r} -> {config.get(key)!r}" for key in differing)
            raise DataError(f"{path.parent} holds results of another configuration ({details}): use the same "
                            "settings to resume, another output folder, or --overwrite")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def bind_model(path: PathLike, label: str, model_id: str, source: str) -> None:
    """Record in the protocol file `path` that `label` names the weights `model_id`, or refuse when the
    label named other weights before.

    Results are keyed by label, so without this a label pointed at another checkpoint would resume
    with (and be reported as) the first checkpoint's rows. `model_id` is `LoadedSam.model_id`, a hash
    of the file, so a moved or renamed file is still the same model.
    """
    path = Path(path)
    record = json.loads(path.read_text())
    models = record.setdefault(MODELS_KEY, {})
    known = models.get(label)
    if known is not None and known["id"] != model_id:
        raise DataError(f"{path.parent} holds results of model {label!r} from {known['source']} (id "
                        f"{known['id']}), but {label!r} now names {source} (id {model_id}): give it another "
                        "label (LABEL=MODEL), use another output folder, or --overwrite")
    models[label] = {"id": model_id, "source": source}
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def open_results(folder: PathLike, name: str, config: Mapping[str, object], fields: Sequence[str],
                 key_fields: Sequence[str], rows_per_key: int = 1, fill: Optional[Mapping[str, object]] = None,
                 overwrite: bool = False) -> ResultsCSV:
    """`folder/name.csv` with its protocol file `name.json`: checked against `config` to resume, or new
    (`overwrite` discards both first)."""
    folder = Path(folder)
    csv_path, config_path = folder / f"{name}.csv", folder / f"{name}.json"
    if overwrite:
        for path in (csv_path, config_path):
            path.unlink(missing_ok=True)
    check_run_config(config_path, config)
    return ResultsCSV(csv_path, fields, key_fields, rows_per_key, fill)
