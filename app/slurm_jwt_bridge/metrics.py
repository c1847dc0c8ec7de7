"""Prometheus metrics, multiprocess-safe under gunicorn (PROMETHEUS_MULTIPROC_DIR)."""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from .keys import KeyRing

PREFIX = "slurm_jwt_bridge"

MINTED = Counter(f"{PREFIX}_tokens_minted_total", "Slurm tokens minted", ["door", "issuer", "alg"])
REFUSED = Counter(
    f"{PREFIX}_tokens_refused_total", "Token requests refused", ["door", "reason", "issuer", "alg"]
)
DECISION_SECONDS = Histogram(
    f"{PREFIX}_exchange_seconds",
    "Time to decide and mint (or refuse) a token",
    ["door"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
JWKS_FETCHES = Counter(
    f"{PREFIX}_upstream_jwks_fetches_total",
    "Upstream discovery/JWKS fetches",
    ["issuer", "outcome"],
)
PROXY_REQUESTS = Counter(f"{PREFIX}_proxy_requests_total", "Proxied requests", ["status"])
PROXY_SECONDS = Histogram(
    f"{PREFIX}_proxy_upstream_seconds",
    "slurmrestd response time (to headers) through the proxy",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
AUTH_REQUESTS = Counter(
    f"{PREFIX}_auth_requests_total", "Answers to nginx auth_request (GET /proxy/auth)", ["status"]
)
KEY_RELOAD_FAILURES = Counter(
    f"{PREFIX}_key_reload_failures_total",
    "Changed keys directories that failed to load (the previous ring stays in service)",
)
KEY_AGE = Gauge(
    f"{PREFIX}_active_key_age_seconds", "Age of the active RS256 key", multiprocess_mode="max"
)
NEXT_ROTATION = Gauge(
    f"{PREFIX}_seconds_to_next_rotation",
    "Seconds until the active key is due for rotation ([keys] rotation_period)",
    multiprocess_mode="min",
)


class Metrics:
    """The pipeline's and proxy's observer; labels are short and bounded (no user names)."""

    def minted(self, fields: dict[str, Any], seconds: float) -> None:
        door = fields.get("door") or "?"
        MINTED.labels(door, fields.get("issuer") or "-", fields.get("alg") or "-").inc()
        DECISION_SECONDS.labels(door).observe(seconds)

    def refused(self, reason: str, fields: dict[str, Any], seconds: float) -> None:
        door = fields.get("door") or "?"
        REFUSED.labels(door, reason, fields.get("issuer") or "-", fields.get("alg") or "-").inc()
        DECISION_SECONDS.labels(door).observe(seconds)

    def jwks_fetch(self, issuer: str, ok: bool) -> None:
        JWKS_FETCHES.labels(issuer, "ok" if ok else "error").inc()

    def proxied(self, status: int, seconds: float) -> None:
        PROXY_REQUESTS.labels(str(status)).inc()
        PROXY_SECONDS.observe(seconds)

    def auth_answered(self, status: int) -> None:
        AUTH_REQUESTS.labels(str(status)).inc()

    def key_reload_failed(self, reason: str) -> None:
        KEY_RELOAD_FAILURES.inc()


def render(ring: KeyRing, rotation_period: int) -> tuple[bytes, str]:
    """The exposition text; key gauges are computed now, from the ring in service."""
    now = time.time()
    if ring.active is not None:
        activated = ring.active.activated or ring.active.created
        KEY_AGE.set(now - activated)
        NEXT_ROTATION.set(activated + rotation_period - now)
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
