"""Pending device codes (the bridge's own RFC 8628 grant), kept where browser sessions live:
a private local directory by default, or Redis when replicas share ``session_storage_uri``.

Every value is a small JSON object with an expiry. ``update`` is atomic (a file lock, or a
Redis WATCH transaction), so a code moves from pending to approved, denied or used once only,
whichever replica answers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

# update() callbacks return (new value or None to keep it, result for the caller)
Updater = Callable[[dict[str, Any] | None], tuple[dict[str, Any] | None, Any]]


class DeviceStore(Protocol):
    def put(self, key: str, value: dict[str, Any], ttl: int) -> bool: ...
    def get(self, key: str) -> dict[str, Any] | None: ...
    def update(self, key: str, fn: Updater) -> Any: ...
    def incr(self, key: str, ttl: int) -> int: ...
    def count(self, key: str) -> int: ...


class DirectoryStore:
    """One 0600 file per key in a 0700 directory; one lock file serializes changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path / ".lock"

    def _file(self, key: str) -> Path:
        return self.path / hashlib.sha256(key.encode()).hexdigest()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self, key: str) -> dict[str, Any] | None:
        try:
            raw = json.loads(self._file(key).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict) or float(raw.get("expires", 0)) <= time.time():
            return None
        value = raw.get("value")
        return value if isinstance(value, dict) else None

    def _write(self, key: str, value: dict[str, Any], expires: float) -> None:
        target = self._file(key)
        tmp = target.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"expires": expires, "value": value}, f)
        os.replace(tmp, target)

    def _expires(self, key: str) -> float:
        try:
            return float(json.loads(self._file(key).read_text()).get("expires", 0))
        except (OSError, ValueError, AttributeError):
            return 0.0

    def _prune(self) -> None:
        now = time.time()
        for entry in self.path.iterdir():
            if entry.name.startswith("."):
                continue
            try:
                if float(json.loads(entry.read_text()).get("expires", 0)) <= now:
                    entry.unlink()
            except (OSError, ValueError, AttributeError):
                with contextlib.suppress(OSError):
                    entry.unlink()

    def put(self, key: str, value: dict[str, Any], ttl: int) -> bool:
        with self._locked():
            self._prune()
            if self._read(key) is not None:
                return False
            self._write(key, value, time.time() + ttl)
            return True

    def get(self, key: str) -> dict[str, Any] | None:
        return self._read(key)

    def update(self, key: str, fn: Updater) -> Any:
        with self._locked():
            new, result = fn(self._read(key))
            if new is not None:
                self._write(key, new, self._expires(key))
            return result

    def incr(self, key: str, ttl: int) -> int:
        with self._locked():
            current = self._read(key)
            count = int(current["n"]) + 1 if current else 1
            expires = self._expires(key) if current else time.time() + ttl
            self._write(key, {"n": count}, expires)
            return count

    def count(self, key: str) -> int:
        current = self._read(key)
        return int(current["n"]) if current else 0


class RedisStore:
    """Keys under ``sjb-device:``; Redis expires them."""

    PREFIX = "sjb-device:"

    def __init__(self, client: Any) -> None:
        self.client = client

    def put(self, key: str, value: dict[str, Any], ttl: int) -> bool:
        return bool(self.client.set(self.PREFIX + key, json.dumps(value), ex=ttl, nx=True))

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self.client.get(self.PREFIX + key)
        try:
            value = json.loads(raw) if raw else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def update(self, key: str, fn: Updater) -> Any:
        name = self.PREFIX + key
        out: list[Any] = []

        def tx(pipe: Any) -> None:
            out.clear()
            raw = pipe.get(name)
            try:
                current = json.loads(raw) if raw else None
            except ValueError:
                current = None
            new, result = fn(current if isinstance(current, dict) else None)
            out.append(result)
            pipe.multi()
            if new is not None:
                pipe.set(name, json.dumps(new), keepttl=True)

        self.client.transaction(tx, name)
        return out[0]

    def incr(self, key: str, ttl: int) -> int:
        name = self.PREFIX + key
        count = int(self.client.incr(name))
        if count == 1:
            self.client.expire(name, ttl)
        return count

    def count(self, key: str) -> int:
        raw = self.client.get(self.PREFIX + key)
        return int(raw) if raw and raw.isdigit() else 0
