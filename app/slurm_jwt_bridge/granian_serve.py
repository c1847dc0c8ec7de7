"""granian (a Rust HTTP server with a WSGI interface) in place of gunicorn, with the same
settings: ``slurm-jwt-bridge serve --prod --server granian`` runs ``python -m
slurm_jwt_bridge.granian_serve``. Install it with the ``granian`` extra.

Environment, read as gunicorn_conf.py reads it: GUNICORN_BIND (default: [server] host:port of
$SLURM_JWT_BRIDGE_CONFIG, else 127.0.0.1:8000), GUNICORN_WORKERS (worker processes),
GUNICORN_THREADS (each worker's threads running the app), GUNICORN_CLIENT_TIMEOUT (the longest
wait for a request's headers; granian has no bound on the wait for a body),
GUNICORN_GRACEFUL_TIMEOUT (how long a stopping worker may finish its requests),
PROMETHEUS_MULTIPROC_DIR.

SIGHUP: granian starts a new worker (which re-reads the configuration and keys), waits
SLURM_JWT_BRIDGE_RESPAWN_INTERVAL seconds (default 5), then stops the old one gracefully, worker
after worker. SIGTERM/SIGINT: the workers finish their requests and
stop. The access log is one JSON object per request, written by ``AccessLog`` around the app.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from json.encoder import encode_basestring_ascii as json_string
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .gunicorn_logging import _iso_utc, bounded_line, status_code

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class AccessLog:
    """The WSGI app, with one JSON line per request on ``stream`` (stdout): gunicorn_logging.py's
    fields without ``bytes``: time (UTC, when the answer was ready), remote (the peer address),
    method, path (never the query string), status (500 when the app raised), duration_us (until
    the app returned its answer), agent (the only header written); fields cut as gunicorn's are
    (gunicorn_logging.bounded_line), so a line is one write below PIPE_BUF.

    granian can write an access log itself (``log_access``), but it builds a strftime timestamp
    and a dictionary of atoms and goes through a logging record for each request: 55 µs a line on
    the bench's core, a quarter of a JWKS answer. This writes the same line in a few µs: the
    timestamp's whole second is formatted once per second (``_iso_utc``), the strings are
    escaped by the json module's own encoder, and the line is written and flushed under a lock."""

    def __init__(self, app: WSGIApplication, stream: IO[str] | None = None) -> None:
        self.app = app
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        status = ""

        def answer(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal status
            status = line
            return start_response(line, headers, exc_info)

        try:
            body = self.app(environ, answer)
        except BaseException:
            self._write(environ, 500, started)
            raise
        self._write(environ, status_code(status), started)
        return body

    def _write(self, environ: WSGIEnvironment, code: int, started: float) -> None:
        stamp = _iso_utc(time.time())
        us = int((time.perf_counter() - started) * 1_000_000)

        def build(remote: str, method: str, path: str, agent: str) -> str:
            return (
                f'{{"time": "{stamp}", "remote": {json_string(remote)}, '
                f'"method": {json_string(method)}, "path": {json_string(path)}, '
                f'"status": {code}, "duration_us": {us}, "agent": {json_string(agent)}}}\n'
            )

        try:
            line = bounded_line(build, environ)
            with self._lock:
                self._stream.write(line)
                self._stream.flush()
        except Exception:  # a log line never fails a request, nor does saying so
            with contextlib.suppress(Exception), self._lock:
                sys.stderr.write("slurm-jwt-bridge: access log line failed\n")


# What granian itself writes into every request's environ (its scope and fixed keys): never the
# process's value, so never removed by WithoutProcessEnvironment.
GRANIAN_KEYS = frozenset(
    {
        "GATEWAY_INTERFACE",
        "PATH_INFO",
        "QUERY_STRING",
        "REMOTE_ADDR",
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "SERVER_SOFTWARE",
    }
)


class WithoutProcessEnvironment:
    """granian builds each request's environ on a copy of the process environment (granian's
    wsgi.py: ``dict(os.environ) | scope``): a variable such as HTTP_PROXY, CONTENT_LENGTH or
    RAW_URI in the service's environment would read as part of a request the client never sent.
    This removes each inherited key whose value is still the process's: all of them, except a
    request header that the request sent with a value of its own (one sent with the very same
    value as the process's variable is removed too, as if not sent)."""

    def __init__(self, app: WSGIApplication, inherited: dict[str, str]) -> None:
        self.app = app
        self._inherited = tuple(inherited.items())

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        for key, value in self._inherited:
            if environ.get(key) == value:
                del environ[key]
        return self.app(environ, start_response)


def inherited_keys(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` that granian copies into a request's environ and does not
    overwrite itself."""
    return {k: v for k, v in env.items() if k not in GRANIAN_KEYS and not k.startswith("wsgi.")}


def create_app() -> Callable[..., Any]:
    """granian's target: the service (``slurm_jwt_bridge.create_app``) inside
    WithoutProcessEnvironment (when the environment is not empty), inside AccessLog."""
    from . import create_app as service

    app: WSGIApplication = service()
    inherited = inherited_keys(os.environ)
    if inherited:
        app = WithoutProcessEnvironment(app, inherited)
    return AccessLog(app)


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "generic": {"format": "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "generic",
            "stream": "ext://sys.stdout",
        },
    },
    "loggers": {
        "_granian": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}


def bind_address(bind: str) -> dict[str, Any]:
    """granian's address arguments for a GUNICORN_BIND value, read by gunicorn's own parser:
    ``host:port``, ``[v6]:port``, ``unix:/path`` (an empty host is every interface, as there)."""
    from gunicorn.util import parse_address

    address = parse_address(bind)
    if isinstance(address, str):
        return {"uds": Path(address)}
    if isinstance(address, int):  # fd://N
        raise SystemExit("slurm-jwt-bridge: error: GUNICORN_BIND fd://N is gunicorn only")
    host, port = address
    return {"address": host or "0.0.0.0", "port": port}  # noqa: S104 (what gunicorn does)


def main() -> None:
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.server import Server

    # the same bind, workers, threads, timeouts and metrics directory as gunicorn
    from . import gunicorn_conf as conf
    from .gunicorn_worker import client_timeout
    from .settings import WORKERS_ENV

    os.environ[WORKERS_ENV] = str(conf.workers)  # each worker's in-memory rate limits take 1/N
    metrics = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(metrics, exist_ok=True)
    for name in os.listdir(metrics):
        if name.endswith(".db"):
            os.unlink(os.path.join(metrics, name))
    server = Server(
        "slurm_jwt_bridge.granian_serve:create_app",
        **bind_address(conf.bind),
        interface=Interfaces.WSGI,
        websockets=False,
        factory=True,
        workers=conf.workers,
        blocking_threads=conf.threads,
        backlog=2048,
        http1_settings=HTTP1Settings(header_read_timeout=int(client_timeout() * 1000)),
        log_dictconfig=LOGGING,
        log_access=False,  # AccessLog writes it
        respawn_failed_workers=True,
        respawn_interval=float(os.environ.get("SLURM_JWT_BRIDGE_RESPAWN_INTERVAL", "5")),
        workers_kill_timeout=conf.graceful_timeout,
    )
    server.serve()


if __name__ == "__main__":  # pragma: no cover
    main()
