"""SA-Med2D-20M as torch-em's v2 HDF5 shards, read lazily: what MedicoSAM v2 was trained from.

Format (torch-em's SA-Med2D v2 preprocessing; `convert.py` writes it): files
`<dataset>_<shard:02d>.h5`, each with `raw` (3, N, S, S), RGB channels first, and `labels`
(N, S, S), the merged instance ids; S = 512, N <= 50,000, lzf, one image per chunk. Images are
resized (longest side S) and padded centred. torch-em writes float32 arrays; ours are uint8 raw
and uint16 labels. Ours add `names` (N,), each image's v1 path, and `modality` (N,) uint8 codes
into the file attribute `modalities` (JSON), so the split can be stratified by modality; shards
without them are modality "unknown".

`ShardRecords` opens each file once per process (h5py handles must not cross a fork: a worker
opens its own on first use) and reads one image per item; `load(i)` gives what
`ObjectDataset._load` returns, so the object sampling is the v1 reader's. Every problem (not
HDF5, missing or misshapen datasets, an unreadable chunk) raises DataError naming the file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from medicosam.errors import DataError
from medicosam_training.records import get_label_array

from .index import ModalityCache, Splittable

PathLike = Union[str, Path]

SHARD_SIZE = 50_000
IMAGE_SIZE = 512
RAW, LABELS, NAMES, MODALITY = "raw", "labels", "names", "modality"
SHARD_NAME = re.compile(r"^(?P<dataset>.+)_(?P<shard>\d{2,})\.h5$")


def list_shards(folder: PathLike) -> List[Path]:
    """The shard files `<dataset>_<shard>.h5` in `folder` (hidden and temporary files skipped), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder.")
    shards = sorted(path for path in folder.iterdir() if SHARD_NAME.match(path.name) and path.is_file())
    if not shards:
        raise DataError(f"{folder}: no SA-Med2D v2 shards (<dataset>_<shard:02d>.h5); write them with "
                        "`medicosam data convert-samed2d V1_FOLDER OUT_FOLDER`.")
    return shards


def _open(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"{path}: not a readable HDF5 shard ({error}); convert it again.") from error


def read_shard_layout(path: Path, file) -> Tuple[int, List[str]]:
    """(N, the modality of each image) of one open shard, after checking its datasets' shapes."""
    if RAW not in file or LABELS not in file:
        raise DataError(f"{path}: no '{RAW}' and '{LABELS}' datasets; not an SA-Med2D v2 shard.")
    raw, labels = file[RAW].shape, file[LABELS].shape
    if len(raw) != 4 or raw[0] != 3 or len(labels) != 3 or raw[1] != labels[0] or raw[2:] != labels[1:]:
        raise DataError(f"{path}: '{RAW}' has shape {raw} and '{LABELS}' {labels}; expected (3, N, H, W) and "
                        "(N, H, W).")
    n = labels[0]
    if MODALITY in file:
        names = json.loads(file.attrs.get("modalities", "[]"))
        codes = file[MODALITY][:]
        if codes.shape != (n,) or (n and int(codes.max()) >= len(names)):
            raise DataError(f"{path}: '{MODALITY}' does not match its {n} images and the 'modalities' attribute.")
        return n, [names[code] for code in codes]
    if NAMES in file:
        get_modality = ModalityCache()
        return n, [get_modality(name) for name in file[NAMES].asstr()[:]]
    return n, ["unknown"] * n


class ShardRecords(Splittable, Sequence):
    """The images of a folder of shards (or a split of them): `len`, `load(i)`, `select_split`."""

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        self.paths = list_shards(folder)
        counts, codes, modality_codes = [], [], {}
        for path in self.paths:
            with _open(path) as file:
                n, modalities = read_shard_layout(path, file)
            counts.append(n)
            codes.extend(modality_codes.setdefault(modality, len(modality_codes)) for modality in modalities)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.codes = np.array(codes, dtype=np.uint16)
        self.modalities = tuple(modality_codes)
        self.positions = np.arange(self.starts[-1])
        self._files: Dict[int, object] = {}
        self._pid: Optional[int] = None

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> Tuple[Path, int]:
        """(shard file, image index in it) of item `i`."""
        shard, k = self._locate(i)
        return self.paths[shard], k

    def _locate(self, i: int) -> Tuple[int, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} images")
        position = int(self.positions[i])
        shard = int(np.searchsorted(self.starts, position, side="right")) - 1
        return shard, position - int(self.starts[shard])

    def __getstate__(self):
        return {**self.__dict__, "_files": {}, "_pid": None}  # handles stay in their process

    def _get_file(self, shard: int):
        if self._pid != os.getpid():  # a forked worker: the parent's handles are not ours to use
            self._files, self._pid = {}, os.getpid()
        if shard not in self._files:
            self._files[shard] = _open(self.paths[shard])
        return self._files[shard]

    def load(self, i: int) -> Tuple[np.ndarray, np.ndarray, str, str]:
        """(RGB uint8 (S, S, 3), instance ids (S, S), source, modality) of item `i`."""
        shard, k = self._locate(i)
        path, file = self.paths[shard], self._get_file(shard)
        try:
            raw = np.asarray(file[RAW][:, k])
            labels = np.asarray(file[LABELS][k])
            name = file[NAMES].asstr()[k] if NAMES in file else None
        except (OSError, RuntimeError, KeyError) as error:
            raise DataError(f"{path}: cannot read image {k} ({error}); the shard is damaged, convert it "
                            "again.") from error
        source = f"{path}[{k}]" + (f" ({name})" if name else "")
        if raw.dtype != np.uint8:  # torch-em stores float32 holding 0..255
            raw = np.clip(np.rint(raw), 0, 255).astype(np.uint8)
        rgb = np.ascontiguousarray(raw.transpose(1, 2, 0))
        return rgb, get_label_array(labels, source), source, self.modalities[self.codes[int(self.positions[i])]]

    def get_modality_codes(self) -> np.ndarray:
        return self.codes[self.positions]

    def select(self, records: np.ndarray) -> ShardRecords:
        view = object.__new__(ShardRecords)
        view.__dict__.update(self.__getstate__())
        view.positions = self.positions[records]
        return view
