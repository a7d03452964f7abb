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
from typing import Optional, Sequence

import numpy as np

from .errors import InputError
from .prompts import Prompts

#: Bumped when a request or answer changes meaning; client and server refuse to talk across versions.
PROTOCOL = 1
PROTOCOL_HEADER = "X-MedicoSAM-Protocol"
#: dtypes a volume may have (what scanners and SimpleITK produce); anything else is refused.
VOLUME_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


def encode_array(array: np.ndarray, level: int = 1) -> bytes:
    """Deflated `.npy` bytes of `array` (level 1: most of the size win at a fraction of the time)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return zlib.compress(buffer.getvalue(), level)


def decode_array(data: bytes, max_bytes: int, dtypes: Optional[Sequence[str]] = None,
                 what: str = "array") -> np.ndarray:
    """The array of `encode_array` bytes; InputError for anything else, or when it inflates past `max_bytes`."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, max_bytes + 1)
    except zlib.error as error:
        raise InputError(f"{what} is not deflated .npy data ({error}): send encode_array bytes") from None
    if len(raw) > max_bytes or inflater.unconsumed_tail:
        raise InputError(f"{what} inflates past {max_bytes // 2**20} MB: send a smaller one "
                         "(or raise the server's --max-volume-mb)")
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"{what} is not a valid .npy array ({error})") from None
    if not isinstance(array, np.ndarray):
        raise InputError(f"{what} is not a single array")
    if dtypes is not None and array.dtype.name not in dtypes:
        raise InputError(f"{what} has dtype {array.dtype.name}: use one of {', '.join(dtypes)}")
    return array


def to_text(array: np.ndarray) -> str:
    """`encode_array` as base64 text, for arrays inside JSON (masks, logits)."""
    return base64.b64encode(encode_array(array)).decode("ascii")


def from_text(text, max_bytes: int, dtypes: Optional[Sequence[str]] = None, what: str = "array") -> np.ndarray:
    if not isinstance(text, str):
        raise InputError(f"{what} must be base64 text of medicosam.wire.encode_array bytes")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise InputError(f"{what} is not base64 text") from None
    return decode_array(data, max_bytes, dtypes, what)


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


def prompts_from_json(value, max_bytes: int) -> Prompts:
    """The `Prompts` of `prompts_to_json`; InputError naming the bad part."""
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
                   mask=None if mask is None else from_text(mask, max_bytes, ("bool",), "mask"),
                   logits=None if logits is None else from_text(logits, max_bytes, ("float32",), "logits"))
