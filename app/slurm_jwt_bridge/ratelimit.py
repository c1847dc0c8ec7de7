"""Rate limits: per client address (Flask-Limiter on the doors) and per verified subject.

In memory by default; a Redis ``storage_uri`` shares the counters between workers and replicas.
In memory, each gunicorn worker counts alone: so that a configured limit holds for the whole
host, each of the N workers (``serve --prod``, gunicorn_conf.py) allows 1/N of it.
"""

from __future__ import annotations

import math
import os
import time

from flask import Flask, Response, jsonify
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from .errors import BridgeError
from .settings import WORKERS_ENV, RateLimitSettings


def process_limit(limit: str, storage_uri: str) -> str:
    """``limit`` for this process: whole with shared storage (Redis) or a single process, else
    1/N for each of N workers (at least 1 request), so that N workers never allow more."""
    try:
        workers = int(os.environ.get(WORKERS_ENV, "1"))
    except ValueError:
        workers = 1
    if workers <= 1 or not storage_uri.startswith("memory://"):
        return limit
    return ";".join(
        f"{max(1, item.amount // workers)} per {item.multiples} {item.GRANULARITY.name}"
        for item in parse_many(limit)
    )


class SubjectLimiter:
    """Counts token requests per (issuer, subject) once the token is verified; every limit of
    ``per_subject`` ("1000/hour;20/minute") holds."""

    def __init__(self, cfg: RateLimitSettings) -> None:
        self.items = parse_many(process_limit(cfg.per_subject, cfg.storage_uri))
        self.limiter = MovingWindowRateLimiter(storage_from_string(cfg.storage_uri))

    def __call__(self, issuer: str, subject: str) -> None:
        for item in self.items:
            if self.limiter.hit(item, "subject", issuer, subject):
                continue
            stats = self.limiter.get_window_stats(item, "subject", issuer, subject)
            retry = max(1, math.ceil(stats.reset_time - time.time()))
            exc = BridgeError(
                "rate_limited",
                f"too many token requests for this account ({item}); retry in {retry} s",
                429,
                metric="rate_limited_subject",
            )
            exc.retry_after = retry
            raise exc


def init_rate_limits(app: Flask, cfg: RateLimitSettings, endpoints: list[str]) -> Limiter:
    """Per-address limits on ``endpoints`` (token API and login)."""
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri=cfg.storage_uri,
        headers_enabled=True,
        strategy="moving-window",
    )
    per_address = process_limit(cfg.per_address, cfg.storage_uri)
    for endpoint in endpoints:
        view = app.view_functions.get(endpoint)
        if view is not None:
            # Callable[P, R] -> Callable[P, R] solved over Flask's sync-or-async view union
            # gives Callable[..., R1 | R2], which mypy does not see as that union again.
            app.view_functions[endpoint] = limiter.limit(per_address)(view)  # type: ignore[assignment]

    @app.errorhandler(429)
    def too_many(exc: Exception) -> tuple[Response, int]:
        limit = getattr(exc, "description", "") or "too many requests"
        resp = jsonify(error="rate_limited", error_description=f"too many requests: {limit}")
        # Like every other token-endpoint refusal; Flask-Limiter adds Retry-After.
        resp.headers["Cache-Control"] = "no-store"
        return resp, 429

    return limiter
