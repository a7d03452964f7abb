"""Writing files so that a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator, Union

_TEMPORARY_TAG = ".tmp-"


def get_temporary_path(path: Path) -> Path:
    """A unique hidden name beside `path` that ends with `path`'s name (writers pick formats by suffix)."""
    return path.with_name(f".{uuid.uuid4().hex}{_TEMPORARY_TAG}{path.name}")


def get_stale_temporaries(path: Union[str, Path]) -> list:
    """Temporary files of `path` that a killed writer left behind."""
    path = Path(path)
    return sorted(path.parent.glob(f".*{_TEMPORARY_TAG}{path.name}"))


@contextlib.contextmanager
def writing_atomically(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path to write; on success fsync it and rename it over `path`.

    On any error the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    temporary = get_temporary_path(path)
    try:
        yield temporary
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
