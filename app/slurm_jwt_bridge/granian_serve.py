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
stop. The access log is granian's, written as one JSON object per request (``JsonAccessFormatter``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .gunicorn_logging import AGENT_MAX, _iso_utc

# granian's access-log atoms (a %-format over a dict); only the user agent is taken from the
# request's headers, so no token can reach the log.
ACCESS_FORMAT = "%(addr)s %(method)s %(path)s %(status)d %(dt_ms).3f %(header{user-agent})s"


class JsonAccessFormatter(logging.Formatter):
    """granian's access-log record as gunicorn_logging.py's JSON line: time, remote, method,
    path (granian's path carries no query string), status, duration_us, agent. granian does not
    give the size of the answer: there is no ``bytes``."""

    def format(self, record: logging.LogRecord) -> str:
        atoms = record.args if isinstance(record.args, dict) else {}
        agent = next((v for k, v in atoms.items() if str(k).startswith("_h")), "-")
        line = {
            "time": _iso_utc(record.created),
            "remote": str(atoms.get("addr", "-")),
            "method": str(atoms.get("method", "-")),
            "path": str(atoms.get("path", "-")),
            "status": int(atoms.get("status", 0) or 0),
            "duration_us": int(float(atoms.get("dt_ms", 0) or 0) * 1000),
            "agent": str(agent)[:AGENT_MAX],
        }
        return json.dumps(line, ensure_ascii=True)


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "generic": {"format": "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"},
        "access": {"()": f"{__name__}.JsonAccessFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "generic",
            "stream": "ext://sys.stdout",
        },
        "access": {
            "class": "logging.StreamHandler",
            "formatter": "access",
            "stream": "ext://sys.stdout",
        },
    },
    "loggers": {
        "_granian": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "granian.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
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
        "slurm_jwt_bridge:create_app",
        **bind_address(conf.bind),
        interface=Interfaces.WSGI,
        websockets=False,
        factory=True,
        workers=conf.workers,
        blocking_threads=conf.threads,
        backlog=2048,
        http1_settings=HTTP1Settings(header_read_timeout=int(client_timeout() * 1000)),
        log_dictconfig=LOGGING,
        log_access=True,
        log_access_format=ACCESS_FORMAT,
        respawn_failed_workers=True,
        respawn_interval=float(os.environ.get("SLURM_JWT_BRIDGE_RESPAWN_INTERVAL", "5")),
        workers_kill_timeout=conf.graceful_timeout,
    )
    server.serve()


if __name__ == "__main__":  # pragma: no cover
    main()
