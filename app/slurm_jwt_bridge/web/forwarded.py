"""``[server] proxy_fix``: a request whose X-Forwarded-For names no client is refused.

werkzeug's ProxyFix takes the address ``proxy_fix`` hops from the end of X-Forwarded-For and
keeps the peer's own address when that entry is missing or empty. Behind a proxy on the same
host the peer is 127.0.0.1, which ``[server] internal_allow`` trusts and which is one shared
bucket for the per-address limits. A proxy always appends the client, so such a header means the
value was lost on the way: granian, for one, hands the app an empty string for any header value
with a byte outside ASCII. Refusing it (400, logged) keeps the client from passing as the proxy.
A request without the header (a direct connection) keeps its peer address, as before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from .jwks import SECURITY_HEADERS

log = logging.getLogger(__name__)

BODY = json.dumps(
    {
        "error": "invalid_request",
        "error_description": "X-Forwarded-For names fewer clients than [server] proxy_fix trusts",
    }
).encode()


def forwarded_client(value: str, hops: int) -> str:
    """The X-Forwarded-For entry ProxyFix takes with ``x_for=hops`` ('' when there is none)."""
    entries = [entry.strip() for entry in value.split(",")]
    return entries[-hops] if len(entries) >= hops else ""


class ForwardedClientRequired:
    """In front of ProxyFix(x_for=hops): 400 for a present X-Forwarded-For without a client."""

    def __init__(self, app: Callable[..., Iterable[bytes]], hops: int) -> None:
        self.app = app
        self.hops = hops

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        value = environ.get("HTTP_X_FORWARDED_FOR")
        if value is None or forwarded_client(value, self.hops):
            return self.app(environ, start_response)
        log.warning(
            "refused %s %s from %s: X-Forwarded-For without the client %d hop(s) back",
            environ.get("REQUEST_METHOD", "-"),
            str(environ.get("PATH_INFO", "-"))[:200],
            environ.get("REMOTE_ADDR", "-"),
            self.hops,
        )
        start_response(
            "400 BAD REQUEST",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(BODY))),
                ("Cache-Control", "no-store"),
                *SECURITY_HEADERS,
            ],
        )
        return [BODY]
