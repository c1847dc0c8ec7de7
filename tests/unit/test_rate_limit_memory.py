"""The in-memory rate-limit counters: the same moving-window decisions as limits' own memory
storage, pruned once a second; each request to a limited door counted once, other paths not
at all."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from limits import parse
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.ratelimit import (
    PRUNE_INTERVAL,
    PRUNED_MEMORY,
    PrunedMemoryStorage,
    SubjectLimiter,
    storage_for,
)
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.proxy_settings import proxy_settings_data
from tests.unit.test_proxy_auth_request import bearer, idp_token


def test_the_locked_limits_version_has_the_pruning_hook() -> None:
    """PrunedMemoryStorage replaces a private method of limits' MemoryStorage: a version of
    limits without it falls back to its own storage, and this test says so."""
    assert PRUNED_MEMORY
    assert storage_for("memory://") == "slurm-jwt-bridge-memory://"
    assert isinstance(storage_from_string(storage_for("memory://")), PrunedMemoryStorage)
    assert storage_for("redis://h:6379/0") == "redis://h:6379/0"


def test_a_hit_schedules_one_pass_a_second() -> None:
    storage = PrunedMemoryStorage()
    limiter = MovingWindowRateLimiter(storage)
    storage.timer.join()  # the first pass, started with the storage
    for i in range(20):
        assert limiter.hit(parse("100/minute"), "k", str(i))
    assert storage.timer.is_alive() and storage.timer.interval == PRUNE_INTERVAL
    stock = MemoryStorage()
    stock.timer.join()
    MovingWindowRateLimiter(stock).hit(parse("100/minute"), "k")
    assert stock.timer.interval < PRUNE_INTERVAL  # what it replaces: a pass every 10 ms


def test_decisions_are_those_of_limits_own_memory_storage() -> None:
    item = parse("3 per 2 second")
    limiters = [MovingWindowRateLimiter(s) for s in (MemoryStorage(), PrunedMemoryStorage())]
    answers: list[list[bool]] = [[], []]
    # three at once, a fourth refused; after the window, three again (entries older than the
    # window may still sit in the pruned storage's lists: they must not count)
    for pause in (0, 0, 0, 0, 0.3, 2.0, 0, 0, 0, 0):
        time.sleep(pause)
        for answer, limiter in zip(answers, limiters, strict=True):
            answer.append(limiter.hit(item, "addr", "192.0.2.1"))
    assert answers[0] == answers[1]
    assert answers[1] == [True, True, True, False, False, True, True, True, False, False]


def _client(keys_dir: Path, tmp_path: Path, idp: Any, **rate_limit: Any) -> Any:
    data = proxy_settings_data(keys_dir, tmp_path, idp, None)
    data["rate_limit"] = {"enabled": True, **rate_limit}
    return create_app(parse_settings(data)).test_client()


def test_each_request_to_a_limited_door_counts_once(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    client = _client(keys_dir, tmp_path, idp, per_address="3/minute", per_subject="100/minute")
    for _ in range(10):  # paths without a per-address limit never count
        assert client.get("/healthz").status_code == 200
    token = idp_token(idp)
    codes = [client.post("/api/v1/token", headers=bearer(token)).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429], codes
    limiter = next(iter(client.application.extensions["limiter"]))
    assert isinstance(limiter.storage, PrunedMemoryStorage)


def test_the_subject_limiter_uses_the_pruned_storage() -> None:
    limiter = SubjectLimiter(parse_settings({"rate_limit": {}}).rate_limit)
    assert isinstance(limiter.limiter.storage, PrunedMemoryStorage)
