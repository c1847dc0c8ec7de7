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
from collections.abc import Callable, Mapping, MutableMapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from gunicorn.glogging import Logger

if TYPE_CHECKING:
    from gunicorn.http import Request
    from gunicorn.http.wsgi import Response

AGENT_MAX = 256
# Each field is cut (in characters, before escaping) so that a line stays one write below
# PIPE_BUF (4,096 bytes), which the kernel never interleaves with another worker's line on a
# pipe: remote and method to SHORT_MAX, path to PATH_MAX, agent to AGENT_MAX; a line still over
# LINE_MAX (escapes take up to six bytes a character) is built again with every field at SHORT_MAX.
PATH_MAX = 1024
SHORT_MAX = 128
LINE_MAX = 4000


def bounded_line(build: Callable[[str, str, str, str], str], environ: Mapping[str, Any]) -> str:
    """``build(remote, method, path, agent)`` from a WSGI environ, with the fields cut as above
    (a missing one is ``-``)."""
    r, m, p, a = (
        str(environ.get(key, "-"))
        for key in ("REMOTE_ADDR", "REQUEST_METHOD", "PATH_INFO", "HTTP_USER_AGENT")
    )
    r, m = r[:SHORT_MAX], m[:SHORT_MAX]
    line = build(r, m, p[:PATH_MAX], a[:AGENT_MAX])
    if len(line) > LINE_MAX:
        line = build(r, m, p[:SHORT_MAX], a[:SHORT_MAX])
    return line


# The last whole second _iso_utc formatted, and its text: strftime once per second, not per line.
_second: tuple[int, str] = (-1, "")


def _iso_utc(now: float) -> str:
    global _second
    whole = int(now)
    second = _second
    if second[0] != whole:
        second = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{second[1]}.{int((now - whole) * 1000):03d}Z"


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
        now = _iso_utc(time.time())
        code = status_code(resp.status)  # None before start_response
        sent = int(getattr(resp, "sent", 0) or 0)
        us = request_time.seconds * 1_000_000 + request_time.microseconds

        def build(remote: str, method: str, path: str, agent: str) -> str:
            line = {
                "time": now,
                "remote": remote,
                "method": method,
                "path": path,
                "status": code,
                "bytes": sent,
                "duration_us": us,
                "agent": agent,
            }
            return json.dumps(line, ensure_ascii=True)

        try:
            text = bounded_line(build, environ)
            self.access_log.info(text)
        except Exception:  # never let a log line fail a request
            self.exception("access log line failed")
