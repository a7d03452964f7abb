"""A thread-safe LRU of slice embeddings, capped in bytes.

The encoder is by far the slowest part of SAM (seconds per slice on a CPU), so every slice
embedding is computed at most once while it fits under the cap. Keys say everything the
embedding depends on: (volume, axis, slice, model, intensity window, precision).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, Optional

from .errors import InputError


def get_nbytes(value) -> int:
    """Bytes held by a tensor, an array, or an object with `nbytes`."""
    if hasattr(value, "element_size"):
        return value.element_size() * value.numel()
    return int(value.nbytes)


class EmbeddingCache:
    """Least-recently-used store whose total size never exceeds `max_bytes`.

    An item larger than the whole cap is returned but not stored. Counters (`hits`, `misses`)
    let callers and tests check that nothing is computed twice.
    """

    def __init__(self, max_bytes: int = 2 * 1024**3):
        if max_bytes <= 0:
            raise InputError(f"max_bytes must be positive, got {max_bytes}: give the cache's size in bytes")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict = OrderedDict()
        self._nbytes = 0
        self._lock = threading.RLock()
        self._key_locks: dict = {}
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: Hashable):
        """The cached value (marked as recently used) or None."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable, value) -> None:
        size = get_nbytes(value)
        with self._lock:
            self._discard(key)
            if size > self.max_bytes:
                return
            while self._nbytes + size > self.max_bytes:
                self._discard(next(iter(self._items)))
            self._items[key] = value
            self._nbytes += size

    def get_or_compute(self, key: Hashable, compute: Callable[[], object]):
        """The cached value, or `compute()` stored under `key`.

        Two threads asking for the same key compute it once: the second waits for the first.
        """
        with self._lock:
            value = self.get(key)
            if value is not None:
                self.hits += 1
                return value
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            value = self.get(key)
            if value is not None:
                with self._lock:
                    self.hits += 1
                return value
            value = compute()
            with self._lock:
                self.misses += 1
                self.put(key, value)
                self._key_locks.pop(key, None)
            return value

    def clear(self, predicate: Optional[Callable[[Hashable], bool]] = None) -> None:
        """Drop every item, or those whose key matches `predicate` (e.g. one volume)."""
        with self._lock:
            for key in [k for k in self._items if predicate is None or predicate(k)]:
                self._discard(key)

    def _discard(self, key: Hashable) -> None:
        value = self._items.pop(key, None)
        if value is not None:
            self._nbytes -= get_nbytes(value)
