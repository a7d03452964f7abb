"""SA-Med2D-20M's image -> masks JSON as a compact index: flat arrays in one memory-mapped file.

`get_samed2d_records` turns `SAMed2D_v1.json` into millions of Python objects: 41 s and 1.1 GB per
process at a tenth of the data set, repeated in every DDP rank and, page by page through reference
counting, in every DataLoader worker. This index holds the same records as byte strings and
offsets in numpy arrays. It is built once, streaming the JSON (`stream.iter_object_items`), and
written next to the JSON (or in a fallback folder such as the run folder) as
`SAMed2D_v1.json.medicosam-index`; later runs map that file while the JSON's size and mtime are
unchanged (the path bytes are read with `pread`, the offsets mapped), so ranks and workers share its
pages through the page cache and nothing is copied.

`index[i]` is exactly `get_samed2d_records(root)[i]` and `index.select_split(split, val_fraction,
seed)` exactly today's stratified, seeded split, computed on a modality code per image.

File: `MAGIC`, the xxh3-64 checksum of everything after it (8 bytes), the header length (8 bytes,
little endian), a JSON header (format version, the JSON's path, size and mtime, the modality names,
the table of arrays), then each array 64-byte aligned. A file that no longer matches its checksum (a
disk error, bytes overwritten in place) is built again, as one built from another JSON is. Arrays,
one row per JSON entry in file order:

- `image_offsets` (n + 1) into `image_bytes`: the image paths, UTF-8;
- `mask_offsets` (n + 1) into `mask_bytes`: the entry's mask paths, in JSON order, stored as
  `mask_format` says: JOINED (NUL-separated, with `masks/<image path without images/ and suffix>`
  written as one byte: ~12 bytes a mask instead of ~60; every SA-Med2D entry) or JSON (any list);
- `mask_count` (n): how many masks;
- `modality` (n): a code into the header's modality names (`derive_modality` of the image path);
- `order`: the entries that are records, sorted by image path (for a key given twice, the last,
  as `json.load` keeps).
"""

from __future__ import annotations

import json
import logging
import mmap
import os
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from medicosam.atomic import writing_atomically
from medicosam.errors import DataError, InputError
from medicosam_training.records import SAMED2D_JSON, SPLITS, Record, derive_modality, find_samed2d_json, get_val_mask

from .stream import iter_object_items

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
Arrays = Dict[str, np.ndarray]

INDEX_SUFFIX = ".medicosam-index"
MAGIC = b"MEDICOSAM-SAMED2D-INDEX\n"
VERSION = 2  # 2: the checksum after MAGIC
_CHECKSUM_BYTES = 8
_ALIGN = 64
_ENCODING = ("utf-8", "surrogatepass")  # a JSON "\ud800" escape still round-trips
_KEYS_PER_CHUNK = 100_000  # image paths kept as Python bytes at a time while sorting is prepared
#: How an entry's mask paths are stored: JOINED = joined by _SEPARATOR with `get_mask_prefix(image)`
#: replaced by _PREFIX_MARK (when neither character occurs in them: all of SA-Med2D's), else JSON.
JOINED, JSON = 1, 0
#: The path bytes: read per look-up (`FileBytes`), the small arrays are mapped.
_READ_NOT_MAPPED = ("image_bytes", "mask_bytes")
_SEPARATOR, _PREFIX_MARK = "\x00", "\x01"


def get_mask_prefix(image: str) -> Optional[str]:
    """What SA-Med2D's mask paths of `image` start with (`images/x.png` -> `masks/x`), left out of the index."""
    dot = image.rfind(".")
    return "masks/" + image[len("images/"):dot] if image.startswith("images/") and dot > len("images/") else None


class Splittable:
    """`select_split` for a source of records that has one modality code per record and `select`."""

    modalities: Tuple[str, ...]

    def get_modality_codes(self) -> np.ndarray:
        """One code per record into `modalities`."""
        raise NotImplementedError

    def select(self, records: np.ndarray):
        """A view on the records at `records` (positions, or a boolean mask over the records)."""
        raise NotImplementedError

    def select_split(self, split: Optional[str], val_fraction: float, seed: int):
        """One side of the stratified split (`records.select_split` on the same records), or all for None."""
        if split not in SPLITS:
            raise InputError(f"split={split!r}: use one of {SPLITS}")
        if split is None:
            return self
        val = get_val_mask(self.get_modality_codes(), self.modalities, val_fraction, seed)
        return self.select(val if split == "val" else ~val)


class SAMed2DIndex(Splittable, Sequence):
    """The records of one SAMed2D_v1.json (or a split of them): `len`, `index[i]` -> `Record`.

    Shares the arrays it was opened with; `select_split` returns another view of the same arrays.
    """

    def __init__(self, root: PathLike, arrays: Arrays, modalities: Tuple[str, ...],
                 positions: Optional[np.ndarray] = None, path: Optional[Path] = None):
        self.root = Path(root)
        self.arrays = arrays
        self.modalities = tuple(modalities)
        self.positions = arrays["order"] if positions is None else positions
        self.path = path  # the index file, None for an index held in memory
        self._image_bytes = _get_bytes(arrays["image_bytes"])
        self._mask_bytes = _get_bytes(arrays["mask_bytes"])

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.select(np.arange(len(self))[i])
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range for {len(self)} records")
        entry = int(self.positions[i])
        image = self.get_image(entry)
        return Record(str(self.root / image), tuple(str(self.root / mask) for mask in self.get_masks(entry, image)),
                      self.modalities[self.arrays["modality"][entry]])

    def __reduce__(self):
        """A file-backed index travels to spawned workers as its file name, not its arrays."""
        if self.path is None:
            return SAMed2DIndex, (self.root, self.arrays, self.modalities, self.positions)
        return _reopen, (self.root, self.path, self.positions)

    @property
    def n_masks(self) -> int:
        """Mask paths of these records."""
        return int(np.sum(self.arrays["mask_count"][self.positions], dtype=np.int64))

    def get_image(self, entry: int) -> str:
        """The image path of JSON entry `entry`, as written in the JSON."""
        offsets = self.arrays["image_offsets"]
        return str(self._image_bytes[offsets[entry]:offsets[entry + 1]], *_ENCODING)

    def get_masks(self, entry: int, image: str) -> List[str]:
        """The mask paths of JSON entry `entry` (image path `image`), as written in the JSON."""
        offsets = self.arrays["mask_offsets"]
        data = self._mask_bytes[offsets[entry]:offsets[entry + 1]]
        return _decode_masks(data, self.arrays["mask_format"][entry], get_mask_prefix(image))

    def get_modality_codes(self) -> np.ndarray:
        return self.arrays["modality"][self.positions]

    def select(self, records: np.ndarray) -> SAMed2DIndex:
        return SAMed2DIndex(self.root, self.arrays, self.modalities, self.positions[records], self.path)


class FileBytes:
    """A byte range of the index file, read with `os.pread` per look-up instead of mapped.

    The paths are most of the file; read this way their pages stay in the page cache, shared by every
    process, without counting in each worker's RSS as touched mapped pages do (53 MB a worker after
    10,000 random look-ups at 370,000 images, against the 50 MB budget). A forked worker reopens the
    file once (the process id is checked), so no file offset is shared.
    """

    def __init__(self, path: Path, start: int, size: int):
        self.path, self.start, self.size = path, start, size
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, item: slice) -> bytes:
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        begin, end, _ = item.indices(self.size)
        return os.pread(self._fd, max(end - begin, 0), self.start + begin)

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


def _get_bytes(values) -> Union[memoryview, FileBytes]:
    return values if isinstance(values, FileBytes) else memoryview(values)


# ---------------------------------------------------------------- building


def _get_offsets(values: array) -> np.ndarray:
    """An offsets array in the smallest dtype that holds its last value."""
    offsets = np.frombuffer(values, dtype=np.int64)
    return offsets.astype(np.uint32) if offsets[-1] < 2**32 else offsets


def _encode_masks(masks: List[str], prefix: Optional[str]) -> Tuple[bytes, int]:
    """(bytes, format) of one entry's mask paths: JOINED (most) or JSON (any list)."""
    joined = _SEPARATOR.join(masks)
    if masks and joined.count(_SEPARATOR) == len(masks) - 1 and _PREFIX_MARK not in joined:
        return (joined.replace(prefix, _PREFIX_MARK) if prefix else joined).encode(*_ENCODING), JOINED
    return json.dumps(masks).encode(), JSON


def _decode_masks(data: bytes, form: int, prefix: Optional[str]) -> List[str]:
    if form == JSON:
        return json.loads(bytes(data))
    joined = str(data, *_ENCODING)
    return (joined.replace(_PREFIX_MARK, prefix) if prefix else joined).split(_SEPARATOR)


def build_index_arrays(json_path: PathLike) -> Tuple[Arrays, Tuple[str, ...]]:
    """The index arrays of `json_path` and its modality names, streaming the JSON entry by entry."""
    image_bytes, mask_bytes, mask_format = bytearray(), bytearray(), bytearray()
    image_offsets, mask_offsets = array("q", [0]), array("q", [0])
    mask_counts, codes = array("I"), array("H")
    modality_codes: Dict[str, int] = {}
    get_modality = ModalityCache()
    key_chunks: List[np.ndarray] = []
    keys: List[bytes] = []
    for image, masks in iter_object_items(json_path):
        try:
            if type(masks) is not list:
                raise TypeError
            data, form = _encode_masks(masks, get_mask_prefix(image))  # a non-string mask: TypeError
        except TypeError:
            raise DataError(f"{json_path}: the value of {image!r} is not a list of mask paths; the JSON must "
                            "map each image path to the list of its mask paths.") from None
        encoded = image.encode(*_ENCODING)
        keys.append(encoded)
        image_bytes += encoded
        image_offsets.append(len(image_bytes))
        mask_bytes += data
        mask_offsets.append(len(mask_bytes))
        mask_format.append(form)
        mask_counts.append(len(masks))
        codes.append(modality_codes.setdefault(get_modality(image), len(modality_codes)))
        if len(keys) == _KEYS_PER_CHUNK:
            key_chunks.append(np.array(keys))
            keys = []
    key_chunks.append(np.array(keys, dtype=bytes))
    arrays = {
        "image_offsets": _get_offsets(image_offsets), "image_bytes": np.frombuffer(image_bytes, dtype=np.uint8),
        "mask_offsets": _get_offsets(mask_offsets), "mask_bytes": np.frombuffer(mask_bytes, dtype=np.uint8),
        "mask_format": np.frombuffer(mask_format, dtype=np.uint8),
        "mask_count": np.frombuffer(mask_counts, dtype=f"u{mask_counts.itemsize}"),
        "modality": np.frombuffer(codes, dtype=np.uint16), "order": _get_sorted_entries(np.concatenate(key_chunks)),
    }
    return arrays, tuple(modality_codes)


class ModalityCache:
    """`derive_modality`, called once per distinct `<folder>/<modality>_<sub>--` rather than per image.

    When no path separator follows the first "--", the file name holds it, so the modality (the
    name's part before it) is that of the path cut just after it: the same function, same answer.
    """

    def __init__(self):
        self.known: Dict[str, str] = {}

    def __call__(self, path: str) -> str:
        cut = path.find("--") + 2
        if cut == 1 or "/" in path[cut:] or "\\" in path[cut:]:
            return derive_modality(path)
        prefix = path[:cut]
        modality = self.known.get(prefix)
        if modality is None:
            modality = self.known[prefix] = derive_modality(prefix)
        return modality


def _get_sorted_entries(keys: np.ndarray) -> np.ndarray:
    """Entries sorted by key, the last of equal keys only (UTF-8 byte order is code point order)."""
    order = np.argsort(keys, kind="stable")
    last = np.ones(len(order), dtype=bool)
    last[:-1] = keys[order[1:]] != keys[order[:-1]]
    return order[last].astype(np.int32 if len(keys) < 2**31 else np.int64)


# ---------------------------------------------------------------- the file


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _get_json_identity(json_path: Path) -> dict:
    stat = json_path.stat()
    return {"json": str(json_path.resolve()), "json_size": stat.st_size, "json_mtime_ns": stat.st_mtime_ns}


def write_index_file(path: Path, arrays: Arrays, modalities: Tuple[str, ...], identity: dict) -> None:
    """Write the index atomically (a crash leaves no half-written index for the next run to trust)."""
    table, offset = {}, 0
    for name, values in arrays.items():
        table[name] = {"dtype": values.dtype.str, "count": len(values), "offset": offset}
        offset += _align(values.nbytes)
    header = json.dumps({"version": VERSION, **identity, "modalities": list(modalities), "arrays": table}).encode()
    head = len(header).to_bytes(8, "little") + header
    start = _align(len(MAGIC) + _CHECKSUM_BYTES + len(head))
    padding = bytes(start - len(MAGIC) - _CHECKSUM_BYTES - len(head))
    checksum = _get_checksum([head, padding, *_iter_aligned(arrays)])  # the bytes after it, as the file holds them
    with writing_atomically(path) as temporary, open(temporary, "wb") as file:
        file.write(MAGIC + checksum + head)
        for name, values in arrays.items():
            file.seek(start + table[name]["offset"])
            file.write(memoryview(np.ascontiguousarray(values)).cast("B"))
        file.truncate(start + offset)


def read_index_file(path: Path, root: PathLike) -> Tuple[Optional[dict], Optional[SAMed2DIndex]]:
    """(header, index) of an index file, memory-mapped; (None, None) when it is missing or not an index.
    The header gets `checksum`, the file's (not checked here: `_open_current` does)."""
    try:
        with open(path, "rb") as file:
            if file.read(len(MAGIC)) != MAGIC:
                return None, None
            checksum = file.read(_CHECKSUM_BYTES)
            header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
            start = _align(file.tell())
            size = os.fstat(file.fileno()).st_size
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
    except (OSError, ValueError):
        return None, None
    if not isinstance(header, dict) or header.get("version") != VERSION:
        return None, None
    header["checksum"] = checksum
    arrays = {}
    try:
        for name, entry in header["arrays"].items():
            dtype = np.dtype(entry["dtype"])
            if start + entry["offset"] + entry["count"] * dtype.itemsize > size:
                return None, None  # truncated
            if name in _READ_NOT_MAPPED:
                arrays[name] = FileBytes(path, start + entry["offset"], entry["count"])
            else:
                arrays[name] = np.frombuffer(mapped, dtype, entry["count"], start + entry["offset"]) \
                    if entry["count"] else np.zeros(0, dtype)
        return header, SAMed2DIndex(root, arrays, tuple(header["modalities"]), path=path)
    except (KeyError, TypeError, ValueError, AttributeError):  # a header damaged into other valid JSON
        return None, None


def _reopen(root: PathLike, path: Path, positions: np.ndarray) -> SAMed2DIndex:
    _, index = read_index_file(path, root)
    if index is None:
        raise DataError(f"{path}: the SA-Med2D index file disappeared or changed while the run used it.")
    return SAMed2DIndex(root, index.arrays, index.modalities, positions, path)


def _open_current(path: Path, json_path: Path, root: PathLike) -> Optional[SAMed2DIndex]:
    """The index at `path` if it was built from `json_path` as it is now and is whole, else None.

    The checksum is read here, once per process that loads the index (a DDP rank), not by the workers
    that reopen it: one pass over the file (0.02 s for the 49 MiB of 370,000 images, from the page cache)."""
    header, index = read_index_file(path, root)
    if header is None:
        return None
    identity = _get_json_identity(json_path)
    if not all(header.get(key) == value for key, value in identity.items()):
        return None
    if _get_checksum(_iter_file(path, len(MAGIC) + _CHECKSUM_BYTES)) != header["checksum"]:
        logger.warning("%s is damaged (it does not match its checksum): it is built again", path)
        return None
    return index


def _iter_aligned(arrays: Arrays):
    """The bytes of the arrays region as the file holds it: each array, then zeros to the alignment."""
    for values in arrays.values():
        yield memoryview(np.ascontiguousarray(values)).cast("B")
        yield bytes(_align(values.nbytes) - values.nbytes)


def _iter_file(path: Path, start: int, chunk: int = 2**23):
    with open(path, "rb") as file:
        file.seek(start)
        yield from iter(lambda: file.read(chunk), b"")


def _get_checksum(parts) -> bytes:
    import xxhash

    digest = xxhash.xxh3_64()
    for part in parts:
        digest.update(part)
    return digest.digest()


def load_samed2d_index(root: PathLike, fallback_dir: Optional[PathLike] = None) -> SAMed2DIndex:
    """The index of the SA-Med2D v1 folder `root`: opened if current, else built and written.

    Looked for, and written, next to the JSON, else in `fallback_dir` (e.g. the run folder, for
    read-only data). A file lock makes one process (of all DDP ranks) build it while the others
    wait. When neither place is writable the index stays in this process's memory.
    """
    json_path = find_samed2d_json(root)
    if json_path is None:
        raise DataError(f"{root}: no {SAMED2D_JSON} here or in {Path(root) / 'annotations'}; point root at "
                        "the unpacked SAMed2Dv1 folder (the one holding images/ and masks/).")
    name = json_path.name + INDEX_SUFFIX
    candidates = [json_path.with_name(name)] + ([Path(fallback_dir) / name] if fallback_dir is not None else [])
    for candidate in candidates:
        index = _open_current(candidate, json_path, root)
        if index is not None:
            return index
    from filelock import FileLock

    built = None
    for candidate in candidates:
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(candidate) + ".lock"):
                index = _open_current(candidate, json_path, root)  # another rank may have built it meanwhile
                if index is None:
                    identity = _get_json_identity(json_path)
                    built = built or build_index_arrays(json_path)
                    write_index_file(candidate, *built, identity)
                    index = _open_current(candidate, json_path, root)
        except OSError as error:
            logger.info("%s: cannot write the SA-Med2D index here (%s)", candidate, error)
            continue
        if index is not None:
            return index
    logger.warning("%s: no writable place for its index (next to it or %s): it is kept in memory and rebuilt "
                   "by every process.", json_path, fallback_dir)
    return SAMed2DIndex(root, *(built or build_index_arrays(json_path)))
