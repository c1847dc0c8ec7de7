"""Rate limits: per client address (Flask-Limiter on the doors) and per verified subject.

In memory by default; a Redis ``storage_uri`` shares the counters between workers and replicas.
In memory, each gunicorn worker counts alone: so that a configured limit holds for the whole
host, each of the N workers (``serve --prod``, gunicorn_conf.py) allows 1/N of it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from typing import cast
from urllib.parse import unquote, urlsplit

from flask import Flask, Response, jsonify, request
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address
from limits import parse_many
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from .errors import BridgeError
from .pipeline import Pipeline, Request
from .settings import WORKERS_ENV, RateLimitSettings

log = logging.getLogger(__name__)

# How long a client is asked to wait while the counters cannot be reached.
STORAGE_RETRY_AFTER = 5

# The audited event and the door of each endpoint the per-address limit covers (every door
# where a request can lead to a new token, but the proxy's).
ENDPOINT_EVENTS = {
    "api.oauth_token": ("exchange", "token-exchange"),
    "api.api_token": ("exchange", "api"),
    "api.oauth_device_authorization": ("device", "device"),
    "browser.login": ("login", "browser"),
    "browser.callback": ("login", "browser"),
    "browser.new_token": ("remint", "browser"),
    "device.page": ("device", "device"),
    "device.answer": ("device", "device"),
}


class StorageUnavailable(BridgeError):
    """The rate-limit counters cannot be reached: fail closed, the request is not served."""

    def __init__(self) -> None:
        super().__init__(
            "temporarily_unavailable",
            "the rate-limit storage cannot be reached; try again later",
            503,
            metric="rate_limit_storage",
        )
        self.retry_after = STORAGE_RETRY_AFTER


# How often the memory storage drops entries that left their window (seconds).
PRUNE_INTERVAL = 1.0


class PrunedMemoryStorage(MemoryStorage):
    """limits' memory storage, dropping the entries that left their window once a second
    instead of every 10 ms. Each pass walks every key (one per client address and per subject)
    and copies its list of hits, and a new timer thread starts whenever the last pass ended:
    with a few hundred keys that doubled the CPU of a token request. The moving window reads
    the hits' own times, so every decision is the same; a key keeps at most a second's worth
    of hits beyond its window until the next pass."""

    STORAGE_SCHEME = ["slurm-jwt-bridge-memory"]

    # limits calls this (its private ``__schedule_expiry``) on every hit.
    def _MemoryStorage__schedule_expiry(self) -> None:
        if not self.timer.is_alive():
            prune = getattr(self, "_MemoryStorage__expire_events")  # noqa: B009 (private)
            self.timer = threading.Timer(PRUNE_INTERVAL, prune)
            self.timer.daemon = True
            self.timer.start()


# Both private methods as limits 5 names them; another version falls back to its own storage.
PRUNED_MEMORY = all(
    callable(getattr(MemoryStorage, f"_MemoryStorage__{name}", None))
    for name in ("schedule_expiry", "expire_events")
)


def storage_for(uri: str) -> str:
    """The storage URI limits is given: ``memory://`` as PrunedMemoryStorage, others as they
    are (Redis, ...)."""
    if uri.startswith("memory://") and PRUNED_MEMORY:
        return PrunedMemoryStorage.STORAGE_SCHEME[0] + uri[len("memory") :]
    return uri


class StorageWatch:
    """Says once in the log that the storage stopped answering (and once that it answers
    again), naming it without its password."""

    def __init__(self, uri: str) -> None:
        parts = urlsplit(uri)
        # no user, password or query (redis://h?password=...): scheme, host, port and path
        self.where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        secrets = [parts.password or ""] + [
            v for k, _, v in (q.partition("=") for q in parts.query.split("&")) if v
        ]
        self.secrets = {x for s in secrets if s for x in (s, unquote(s))}
        self.down = False

    def failed(self, exc: Exception) -> StorageUnavailable:
        if not self.down:
            self.down = True
            detail = f"{type(exc).__name__}: {str(exc)[:200]}"
            for secret in self.secrets:
                detail = detail.replace(secret, "***")
            log.error(
                "rate-limit storage %s cannot be reached (%s): token requests are refused "
                "with 503 until it answers",
                self.where,
                detail,
            )
        return StorageUnavailable()

    def answered(self) -> None:
        if self.down:
            self.down = False
            log.warning("rate-limit storage %s answers again", self.where)


def process_limit(limit: str, storage_uri: str) -> str:
    """``limit`` for this process: whole with shared storage (Redis) or a single process, else
    1/N for each of N workers (at least 1 request): N workers allow no more than the limit, or
    N requests when the limit is smaller than N."""
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
        self.limiter = MovingWindowRateLimiter(storage_from_string(storage_for(cfg.storage_uri)))
        self.watch = StorageWatch(cfg.storage_uri)

    def __call__(self, issuer: str, subject: str) -> None:
        for item in self.items:
            try:
                if self.limiter.hit(item, "subject", issuer, subject):
                    continue
                stats = self.limiter.get_window_stats(item, "subject", issuer, subject)
            except Exception as err:  # the storage's own errors (redis, memcached, ...)
                raise self.watch.failed(err) from None
            self.watch.answered()
            retry = max(1, math.ceil(stats.reset_time - time.time()))
            exc = BridgeError(
                "rate_limited",
                f"too many token requests for this account ({item}); retry in {retry} s",
                429,
                metric="rate_limited_subject",
            )
            exc.retry_after = retry
            raise exc
        self.watch.answered()


class AddressLimit:
    """The per-address limit of one endpoint, counted outside Flask (the token door's fast path
    in front of Flask, web/token_door.py): the items, moving window, storage and keys
    Flask-Limiter uses for the view (``LIMITER/<address>/<endpoint>/<limit>``), so both count in
    one counter; a request counted here is marked (``COUNTED``) and not counted again by the
    view. ``count`` answers the ``X-RateLimit-*`` headers Flask-Limiter would add, or raises
    the refusal (429 over the limit, 503 when the storage cannot be reached), audited and
    counted through the pipeline like every refusal."""

    def __init__(
        self, cfg: RateLimitSettings, endpoint: str, pipeline: Pipeline, flask_limiter: Limiter
    ) -> None:
        self.items = sorted(parse_many(process_limit(cfg.per_address, cfg.storage_uri)))
        # Flask-Limiter's own moving window and storage: a request that reaches the view
        # another way (``//oauth/token``, ``post``) counts in the same counter
        self.limiter = flask_limiter.limiter
        self.watch = cast(_Limiter, flask_limiter).watch
        self.endpoint = endpoint
        self.event, self.door = ENDPOINT_EVENTS[endpoint]
        self.pipeline = pipeline

    def count(self, address: str) -> list[tuple[str, str]]:
        """Count one request from ``address``: the rate-limit headers of its answer."""
        # Flask-Limiter skips a limit whose key is empty; here an unknown address is one more
        # address, limited like the others.
        key = address or "-"
        origin = Request(door=self.door, remote_addr=address or None)
        breached = None
        try:
            for item in self.items:  # the first one over its limit answers, as Flask-Limiter's
                if not self.limiter.hit(item, key, self.endpoint):
                    breached = item
                    break
            shown = breached or self.items[0]
            reset, remaining = self.limiter.get_window_stats(shown, key, self.endpoint)
        except Exception as err:  # the storage's own errors (redis, memcached, ...)
            self.pipeline.refuse_input(self.event, origin, self.watch.failed(err))
        self.watch.answered()
        reset_at = int(reset + 1)
        headers = [
            ("X-RateLimit-Limit", str(shown.amount)),
            ("X-RateLimit-Remaining", str(remaining)),
            ("X-RateLimit-Reset", str(reset_at)),
        ]
        if breached is not None:
            over = OverAddressLimit(str(breached), headers)
            over.retry_after = max(1, int(reset_at - time.time()))
            self.pipeline.refuse_input(self.event, origin, over)
        return headers


class OverAddressLimit(BridgeError):
    """A request over its address's limit (``AddressLimit``), with the rate-limit headers of
    its answer."""

    def __init__(self, limit: str, headers: list[tuple[str, str]]) -> None:
        super().__init__(
            "rate_limited", f"too many requests: {limit}", 429, metric="rate_limited_address"
        )
        self.headers = headers


class _Limiter(Limiter):
    """Flask-Limiter, failing closed: when the counters cannot be reached the request is
    refused through the pipeline (an audit line, a metric) with 503, never served unlimited
    (``swallow_errors``) and never a bare 500."""

    watch: StorageWatch

    def _check_request_limit(
        self, callable_name: str | None = None, in_middleware: bool = True
    ) -> None:
        if in_middleware:
            # Flask-Limiter's before_request pass counts only default and application-wide
            # limits, and this limiter has none (init_rate_limits puts every limit on a view):
            # the decorated view counts its own, so that pass would only cost time.
            return
        try:
            super()._check_request_limit(callable_name, in_middleware)
        except RateLimitExceeded:
            raise
        except Exception as exc:
            from .web import current_bridge

            refused = self.watch.failed(exc)
            event, door = ENDPOINT_EVENTS.get(request.endpoint or "", ("request", "http"))
            origin = Request(door=door, remote_addr=request.remote_addr)
            current_bridge().pipeline.refuse_input(event, origin, refused)
        if self.current_limit is not None:  # a limit was counted: the storage answered
            self.watch.answered()


# Set in the environ of a request an AddressLimit counted before giving it to Flask (a WSGI
# server puts a client's headers under HTTP_*: no client can set it).
COUNTED = "slurm_jwt_bridge.address_counted"


def _counted_in_front() -> bool:
    return request.environ.get(COUNTED) is True


def _refuse_over_limit(description: str) -> BridgeError:
    """A request over its address's limit, refused through the pipeline like every refusal at
    a door (an audit line, a count), as the BridgeError the door answers with."""
    from .web import current_bridge

    exc = OverAddressLimit(description, [])  # Flask-Limiter adds the headers
    event, door = ENDPOINT_EVENTS.get(request.endpoint or "", ("request", "http"))
    try:
        current_bridge().pipeline.refuse_input(
            event, Request(door=door, remote_addr=request.remote_addr), exc
        )
    except BridgeError as refused:
        return refused


def _headers_fail_soft(app: Flask, limiter: _Limiter) -> None:
    """Flask-Limiter's after-request step reads the counters again for the X-RateLimit headers;
    if they stopped answering since the request was counted, the answer (maybe a token already
    minted and audited) goes out without those headers instead of becoming a 500."""
    hooks = app.after_request_funcs.setdefault(None, [])
    mine = [
        i
        for i, hook in enumerate(hooks)
        if isinstance(hook, functools.partial) and hook.args[:1] == (limiter,)
    ]
    if len(mine) != 1:
        raise RuntimeError("Flask-Limiter's header hook not found: check the locked version")
    inject = hooks[mine[0]]

    def headers(response: Response) -> Response:
        try:
            return cast(Response, inject(response))
        except Exception as exc:
            limiter.watch.failed(exc)
            return response

    hooks[mine[0]] = headers


def init_rate_limits(app: Flask, cfg: RateLimitSettings) -> Limiter:
    """Per-address limits on every endpoint of ENDPOINT_EVENTS (a request an ``AddressLimit``
    counted already is not counted again)."""
    limiter = _Limiter(
        get_remote_address,
        app=app,
        storage_uri=storage_for(cfg.storage_uri),
        headers_enabled=True,
        strategy="moving-window",
        default_limits=[],
        application_limits=[],
    )
    limiter.watch = StorageWatch(cfg.storage_uri)
    _headers_fail_soft(app, limiter)
    per_address = process_limit(cfg.per_address, cfg.storage_uri)
    limiter.request_filter(_counted_in_front)
    for endpoint in ENDPOINT_EVENTS:
        view = app.view_functions.get(endpoint)
        if view is not None:
            # Callable[P, R] -> Callable[P, R] solved over Flask's sync-or-async view union
            # gives Callable[..., R1 | R2], which mypy does not see as that union again.
            app.view_functions[endpoint] = limiter.limit(per_address)(view)  # type: ignore[assignment]

    @app.errorhandler(429)
    def too_many(exc: Exception) -> tuple[Response, int]:
        refused = _refuse_over_limit(getattr(exc, "description", "") or "too many requests")
        resp = jsonify(error=refused.error, error_description=refused.reason)
        # Like every other token-endpoint refusal; Flask-Limiter adds Retry-After.
        resp.headers["Cache-Control"] = "no-store"
        return resp, 429

    @app.errorhandler(StorageUnavailable)
    def storage_unavailable(exc: StorageUnavailable) -> Response:
        # The doors without a JSON refusal of their own (browser, device pages) answer as the
        # token API does.
        from .web.api import oauth_error

        return oauth_error(exc)

    return limiter
