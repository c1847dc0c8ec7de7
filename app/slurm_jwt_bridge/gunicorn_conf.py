"""gunicorn settings shipped with the package:

    gunicorn -c python:slurm_jwt_bridge.gunicorn_conf 'slurm_jwt_bridge:create_app()'

Environment: GUNICORN_BIND (default: [server] host:port of $SLURM_JWT_BRIDGE_CONFIG, else
127.0.0.1:8000), GUNICORN_WORKERS (default 2 x CPUs + 1),
GUNICORN_THREADS (4), GUNICORN_TIMEOUT (30), GUNICORN_CLIENT_TIMEOUT (10: the longest wait for
the next bytes of a request's headers or body, gunicorn_worker.py), SLURM_JWT_BRIDGE_CONFIG
(the TOML file).
SIGHUP starts new workers that re-read the configuration and keys, then stops the old ones
gracefully; the key ring also reloads by itself when the keys directory changes.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker

    from slurm_jwt_bridge.settings import Settings


def _configured_settings() -> Settings | None:
    """The settings of $SLURM_JWT_BRIDGE_CONFIG, or None: a file that does not load is reported
    by create_app, with its one-line reason."""
    try:
        from slurm_jwt_bridge.settings import load_settings

        return load_settings(None)
    except Exception:  # the app factory reports it, with its one-line reason
        return None


def _configured_bind(settings: Settings | None) -> str:
    """[server] host:port of the configuration file, else loopback: never every interface by
    default."""
    if settings is None:
        return "127.0.0.1:8000"
    server = settings.server
    host = f"[{server.host}]" if ":" in server.host else server.host
    return f"{host}:{server.port}"


_settings = _configured_settings()
if _settings is not None:
    # Refused before gunicorn logs or binds anything: one line, exit 1.
    from slurm_jwt_bridge.web.urls import public_url_problem

    _problem = public_url_problem(_settings)
    if _problem:
        raise SystemExit(f"slurm-jwt-bridge: error: {_problem}")

bind = os.environ.get("GUNICORN_BIND") or _configured_bind(_settings)
workers = int(os.environ.get("GUNICORN_WORKERS", str(2 * (os.cpu_count() or 1) + 1)))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = (
    "slurm_jwt_bridge.gunicorn_worker.BoundedReadWorker"  # gthread + a client read timeout
)
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = 50 if max_requests else 0
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

# gunicorn 25.1+ opens a control socket under $HOME by default; the service account's home is
# /nonexistent, which logs an ERROR at every start. Nothing here uses it.
control_socket_disable = True

accesslog = "-"
errorlog = "-"
# One JSON object per request (gunicorn_logging.py): time, remote, method, path without the
# query string, status, bytes, duration_us, agent. No other header is logged, so no token can
# end up here.
logger_class = "slurm_jwt_bridge.gunicorn_logging.JsonAccessLogger"

# Prometheus metrics from every worker (prometheus-client multiprocess mode).
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="slurm-jwt-bridge-metrics-")


def on_starting(server: Arbiter) -> None:
    # The workers' in-memory rate limits each take 1/N of a limit (ratelimit.py).
    from slurm_jwt_bridge.settings import WORKERS_ENV

    os.environ[WORKERS_ENV] = str(server.cfg.workers)
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))


def child_exit(server: Arbiter, worker: Worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
