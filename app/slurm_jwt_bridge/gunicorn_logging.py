"""gunicorn's access log as one JSON object per request.

gunicorn formats ``access_log_format`` with a dictionary of every atom it knows (all request and
response headers, the environ, a strftime timestamp) built for each request, then substitutes
the values into the format without any escaping: a ``"`` in a User-Agent breaks a JSON line.
This logger builds only the fields below and serializes them with ``json.dumps``.

Fields: ``time`` (ISO 8601, UTC, milliseconds), ``remote``, ``method``, ``path`` (without the
query string: no token in a query string reaches the log), ``status`` (int), ``bytes`` (int),
``duration_us`` (int), ``agent``. No other header is logged.
"""

from __future__ import annotations

import json
import time
from collections.abc import MutableMapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from gunicorn.glogging import Logger

if TYPE_CHECKING:
    from gunicorn.http import Request
    from gunicorn.http.wsgi import Response

AGENT_MAX = 256


def _iso_utc(now: float) -> str:
    whole = int(now)
    millis = int((now - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def status_code(status: str | None) -> int:
    """The number of a WSGI status line ("200 OK"); 0 when there is none or it is not one."""
    words = (status or "").split(None, 1)
    try:
        return int(words[0]) if words else 0
    except ValueError:
        return 0


class JsonAccessLogger(Logger):
    """``logger_class`` for gunicorn: errors as gunicorn writes them, access lines as JSON."""

    def access(
        self,
        resp: Response,
        req: Request,
        environ: MutableMapping[str, Any],
        request_time: timedelta,
    ) -> None:
        if not self.access_log_enabled:
            return
        line = {
            "time": _iso_utc(time.time()),
            "remote": environ.get("REMOTE_ADDR", "-"),
            "method": environ.get("REQUEST_METHOD", "-"),
            "path": environ.get("PATH_INFO", "-"),
            "status": status_code(resp.status),  # None before start_response
            "bytes": int(getattr(resp, "sent", 0) or 0),
            "duration_us": request_time.seconds * 1_000_000 + request_time.microseconds,
            "agent": str(environ.get("HTTP_USER_AGENT", "-"))[:AGENT_MAX],
        }
        try:
            self.access_log.info(json.dumps(line, ensure_ascii=True))
        except Exception:  # never let a log line fail a request
            self.exception("access log line failed")
