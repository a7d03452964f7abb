"""The `[training]` extra: check its packages before a command starts work, not when it crashes later.

A core-only install (`pip install medicosam`) still has this package and lists its commands; without
the check `demo` would end in a traceback about nilearn and `evaluate` would crash on matplotlib after
the whole evaluation.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
from typing import Callable, List

from medicosam.errors import RunError

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']training["']""")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def get_training_modules() -> List[str]:
    """Import names of the extra's packages, from the installed metadata (pyproject's list).

    Each import name is its distribution's name with '-' as '_' (true for every package of the extra).
    """
    try:
        requirements = importlib.metadata.requires("medicosam") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree: nothing to check against
        return []
    return [_NAME.match(r).group().lower().replace("-", "_") for r in requirements if _EXTRA_MARKER.search(r)]


def check_training_extra() -> None:
    """Raise a RunError naming the missing packages and the extra to install."""
    missing = [name for name in get_training_modules() if importlib.util.find_spec(name) is None]
    if missing:
        raise RunError(f"this command needs {', '.join(missing)} from the training extra: "
                             'pip install "medicosam[training]"')


def needs_training_extra(command: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command's `func(args)` so that it checks the extra first."""

    @functools.wraps(command)
    def checked(args) -> int:
        check_training_extra()
        return command(args)

    return checked
