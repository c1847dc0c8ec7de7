"""Rate limits: per client address (Flask-Limiter on the doors) and per verified subject.

In memory by default; a Redis ``storage_uri`` shares the counters between replicas.
"""

from __future__ import annotations

import math
import time

from flask import Flask, Response, jsonify
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from .errors import BridgeError
from .settings import RateLimitSettings


class SubjectLimiter:
    """Counts token requests per (issuer, subject) once the token is verified."""

    def __init__(self, cfg: RateLimitSettings) -> None:
        self.item = parse(cfg.per_subject)
        self.limiter = MovingWindowRateLimiter(storage_from_string(cfg.storage_uri))

    def __call__(self, issuer: str, subject: str) -> None:
        if self.limiter.hit(self.item, "subject", issuer, subject):
            return
        stats = self.limiter.get_window_stats(self.item, "subject", issuer, subject)
        retry = max(1, math.ceil(stats.reset_time - time.time()))
        exc = BridgeError(
            "rate_limited",
            f"too many token requests for this account ({self.item}); retry in {retry} s",
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
    for endpoint in endpoints:
        view = app.view_functions.get(endpoint)
        if view is not None:
            app.view_functions[endpoint] = limiter.limit(cfg.per_address)(view)

    @app.errorhandler(429)
    def too_many(exc: Exception) -> tuple[Response, int]:
        limit = getattr(exc, "description", "") or "too many requests"
        return jsonify(error="rate_limited", error_description=f"too many requests: {limit}"), 429

    return limiter
