"""What travels between `medicosam serve` and its clients: arrays, prompts, the protocol version.

numpy and the standard library only: the Slicer-side client (`medicosam.client`) uses it before
torch is installed, and the server (`medicosam.server`) decodes with the same rules. Arrays go as
deflated `.npy` bytes (zlib is in every Python; `np.load(allow_pickle=False)` runs no code), so a
volume, a mask or low-res logits arrive with their exact dtype and shape.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zlib
from typing import Optional, Sequence, Tuple

import numpy as np

from .errors import InputError
from .prompts import Prompts

#: Bumped when a request or answer changes meaning; client and server refuse to talk across versions.
PROTOCOL = 1
PROTOCOL_HEADER = "X-MedicoSAM-Protocol"
#: dtypes a volume may have (what scanners and SimpleITK produce); anything else is refused.
VOLUME_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
#: Inflated bytes enough for any `.npy` header numpy writes or reads (it refuses headers over 10,000).
_HEADER_BYTES = 12 + 10_000


def encode_array(array: np.ndarray, level: int = 1) -> bytes:
    """Deflated `.npy` bytes of `array` (level 1: most of the size win at a fraction of the time)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return zlib.compress(buffer.getvalue(), level)


class Budget:
    """What one request's arrays may take in all once inflated (the server's `--max-request-mb`).

    Each array takes its share from its `.npy` header, before a byte is inflated, so many small
    compressed masks cannot add up to gigabytes either.
    """

    def __init__(self, max_bytes: int, option: str = "--max-request-mb"):
        self.max_bytes, self.left, self.option = max_bytes, max_bytes, option

    def take(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise InputError(f"{what} would take the request's arrays past {self.max_bytes / 2**20:g} MB in all "
                             f"once decompressed: send fewer or smaller ones (or raise the server's {self.option})")
        self.left -= nbytes


def decode_array(data: bytes, max_bytes: int, dtypes: Optional[Sequence[str]] = None, what: str = "array",
                 shape: Optional[Tuple[int, ...]] = None, budget: Optional[Budget] = None) -> np.ndarray:
    """The array of `encode_array` bytes; InputError for anything else.

    The `.npy` header is inflated first and checked (dtype in `dtypes`, exactly `shape` when given, at
    most `max_bytes`, its share of `budget`), so an array of the wrong size is refused before the
    data are inflated: a few compressed megabytes cannot make the server allocate gigabytes.
    """
    inflater = zlib.decompressobj()
    try:
        head = inflater.decompress(data, _HEADER_BYTES)
        declared_shape, dtype, offset = _read_header(head, what)
        if dtypes is not None and dtype.name not in dtypes:
            raise InputError(f"{what} has dtype {dtype.name}: use one of {', '.join(dtypes)}")
        if shape is not None and declared_shape != tuple(shape):
            raise InputError(f"{what} of shape {declared_shape}: it must be {tuple(shape)}")
        nbytes = int(np.prod(declared_shape, dtype=object)) * dtype.itemsize
        if nbytes > max_bytes:
            raise InputError(f"{what} inflates past {max_bytes // 2**20} MB: send a smaller one "
                             "(or raise the server's --max-volume-mb)")
        if budget is not None:
            budget.take(nbytes, what)
        size = offset + nbytes
        raw = head + inflater.decompress(inflater.unconsumed_tail, max(size - len(head), 0) + 1)
    except zlib.error as error:
        raise InputError(f"{what} is not deflated .npy data ({error}): send encode_array bytes") from None
    if len(raw) != size or inflater.unconsumed_tail:
        raise InputError(f"{what} is not a valid .npy array: its data do not match its header")
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"{what} is not a valid .npy array ({error})") from None


def _read_header(head: bytes, what: str) -> Tuple[Tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from the start of `.npy` bytes, without reading any data."""
    from numpy.lib import format as npy

    file = io.BytesIO(head)
    try:
        version = npy.read_magic(file)
        shape, _, dtype = (npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0)(file)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"{what} is not a valid .npy array ({error})") from None
    if dtype.hasobject:
        raise InputError(f"{what} holds Python objects: send a numeric array")
    return tuple(int(n) for n in shape), dtype, file.tell()


def to_text(array: np.ndarray) -> str:
    """`encode_array` as base64 text, for arrays inside JSON (masks, logits)."""
    return base64.b64encode(encode_array(array)).decode("ascii")


def from_text(text, max_bytes: int, dtypes: Optional[Sequence[str]] = None, what: str = "array",
              shape: Optional[Tuple[int, ...]] = None, budget: Optional[Budget] = None) -> np.ndarray:
    """`decode_array` of base64 text (its checks, made before inflating, included)."""
    if not isinstance(text, str):
        raise InputError(f"{what} must be base64 text of medicosam.wire.encode_array bytes")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise InputError(f"{what} is not base64 text") from None
    return decode_array(data, max_bytes, dtypes, what, shape, budget)


def get_digest(array: np.ndarray) -> str:
    """Content hash of a volume (dtype, shape and values): the server keeps one copy per digest and owner."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def prompts_to_json(prompts: Prompts) -> dict:
    return {"points": prompts.points.tolist(), "labels": prompts.labels.tolist(),
            "box": None if prompts.box is None else prompts.box.tolist(),
            "mask": None if prompts.mask is None else to_text(prompts.mask),
            "logits": None if prompts.logits is None else to_text(prompts.logits)}


def prompts_from_json(value, budget: Budget, slice_shape: Tuple[int, int], logits_shape: Tuple[int, int]) -> Prompts:
    """The `Prompts` of `prompts_to_json`; InputError naming the bad part. A mask must have the slice's
    shape and logits the model's low-res shape, checked before they are inflated (`decode_array`)."""
    if not isinstance(value, dict):
        raise InputError("each object must be a JSON object with points, labels, box, mask, logits")
    unknown = set(value) - {"points", "labels", "box", "mask", "logits"}
    if unknown:
        raise InputError(f"unknown prompt fields {sorted(unknown)}: use points, labels, box, mask, logits")
    try:
        points = np.asarray(value.get("points") or np.zeros((0, 2)), dtype=np.float32).reshape(-1, 2)
        labels = np.asarray(value.get("labels") or [], dtype=np.int64)
        box = value.get("box")
        box = None if box is None else np.asarray(box, dtype=np.float32).reshape(4)
    except (TypeError, ValueError):
        raise InputError("points must be [[x, y], ...], labels [1 or 0, ...] and box [x0, y0, x1, y1]") from None
    if not (np.isfinite(points).all() and (box is None or np.isfinite(box).all())):
        raise InputError("points and box must be finite numbers")
    mask = value.get("mask")
    logits = value.get("logits")
    return Prompts(points=points, labels=labels, box=box,
                   mask=None if mask is None else from_text(mask, budget.max_bytes, ("bool",), "mask prompt",
                                                            slice_shape, budget),
                   logits=None if logits is None else from_text(logits, budget.max_bytes, ("float32",), "logits",
                                                                logits_shape, budget))
