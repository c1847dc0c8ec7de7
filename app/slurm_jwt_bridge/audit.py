"""One JSON line per decision (minted or refused). Never a token."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any


class AuditLog:
    """Writes audit records to stdout, stderr, a file (``file:/path``) or nowhere (``none``)."""

    def __init__(self, destination: str = "stdout") -> None:
        self.destination = destination
        self._lock = threading.Lock()
        self._fh: IO[str] | None = None
        if destination.startswith("file:"):
            self._fh = open(destination[5:], "a", buffering=1, encoding="utf-8")

    def _stream(self) -> IO[str] | None:
        if self._fh is not None:
            return self._fh
        if self.destination == "stdout":
            return sys.stdout
        if self.destination == "stderr":
            return sys.stderr
        return None

    def record(self, event: str, outcome: str, **fields: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "event": event,
            "outcome": outcome,
        }
        entry.update({k: v for k, v in fields.items() if v is not None})
        stream = self._stream()
        if stream is not None:
            line = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
            with self._lock:
                stream.write(line)
                stream.flush()
        return entry
