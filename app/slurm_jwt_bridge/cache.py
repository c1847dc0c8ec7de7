"""The one in-process cache type: bounded, least recently used first out, each entry alive until
its own deadline, safe to share between threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar, overload

from cachetools import TLRUCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")


class ExpiringCache(Generic[K, V]):
    """At most ``size`` entries (none when ``size`` < 1); an entry is gone from ``until`` on
    (a deadline on ``timer``'s clock)."""

    def __init__(self, size: int, timer: Callable[[], float] = time.time) -> None:
        self.size = size
        self._data: TLRUCache[K, tuple[V, float]] = TLRUCache(
            max(size, 1), ttu=lambda _key, entry, _now: entry[1], timer=timer
        )
        self._lock = threading.Lock()

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: object = None) -> object:
        with self._lock:
            entry = self._data.get(key)
        return default if entry is None else entry[0]

    def put(self, key: K, value: V, until: float) -> None:
        if self.size < 1:
            return
        with self._lock:
            self._data[key] = (value, until)

    def pop(self, key: K) -> None:
        with self._lock:
            self._data.pop(key, None)
