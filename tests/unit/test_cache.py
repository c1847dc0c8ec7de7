"""The one cache type: bounded, least recently used out first, entries gone at their deadline."""

from __future__ import annotations

from slurm_jwt_bridge.cache import ExpiringCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_die_at_their_own_deadline() -> None:
    clock = Clock()
    cache: ExpiringCache[str, int] = ExpiringCache(10, timer=clock)
    cache.put("short", 1, until=1010.0)
    cache.put("long", 2, until=1100.0)
    cache.put("dead", 3, until=999.0)
    assert (cache.get("short"), cache.get("long"), cache.get("dead")) == (1, 2, None)
    clock.now = 1010.0
    assert cache.get("short") is None and cache.get("long") == 2
    assert cache.get("short", "miss") == "miss"


def test_bounded_least_recently_used_out_first_and_size_zero_keeps_nothing() -> None:
    clock = Clock()
    cache: ExpiringCache[str, None] = ExpiringCache(2, timer=clock)
    cache.put("a", None, 2000.0)
    cache.put("b", None, 2000.0)
    assert cache.get("a", "miss") is None  # a cached None is a hit; "a" is now the most recent
    cache.put("c", None, 2000.0)
    assert cache.get("b", "miss") == "miss" and cache.get("a", "miss") is None
    cache.pop("a")
    assert cache.get("a", "miss") == "miss"
    none: ExpiringCache[str, int] = ExpiringCache(0, timer=clock)
    none.put("a", 1, 2000.0)
    assert none.get("a") is None
