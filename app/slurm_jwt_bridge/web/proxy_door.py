"""The proxy door's common case answered in front of Flask: ``GET /slurm/...`` (``/slurmdb/...``,
``/openapi/...``) with an identity provider's ``Authorization: Bearer`` token, no body and no
cookie. Flask's request context, routing, session and hooks cost as much CPU as the rest of a
proxied request with warm caches (bench/NOTES.md).

It sits between the WSGI server (and ProxyFix, when ``[server] proxy_fix`` is set) and Flask,
and runs the door's own steps (web/proxy.py): the same target check, the same cached grant and
Slurm token, the same forwarding and relay, the same refusals and audit lines. A unit test
compares its answers with the Flask view's, request by request.

Everything else goes to Flask untouched: another method, a body, a cookie (a browser session
is Flask's), a raw Slurm token (passthrough), another kind of credentials or none, a path that
Flask would route elsewhere or answer itself (``//``, no path after the prefix, bytes outside
ASCII, control characters), and whatever Flask's own URL map does not send to the proxy view
(a Host werkzeug refuses).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from flask import Response
from flask.wrappers import Request as HttpRequest
from werkzeug.routing import Map

from ..errors import BridgeError
from ..pipeline import Request
from .jwks import add_security_headers
from .proxy import (
    PREFIXES,
    SlurmRestProxy,
    bearer_caller,
    bearer_credentials,
    caller_and_token,
    error_answer,
    forward,
    forwardable_target,
    looks_like_slurm_token,
    raw_target,
    shown,
)
from .token_door import json_body

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

ROUTED = tuple(f"/{prefix}/" for prefix in PREFIXES)


def fast_path_token(environ: dict[str, Any]) -> str | None:
    """The identity provider's token of a request this path answers, else None (Flask
    answers it)."""
    path = environ.get("PATH_INFO", "")
    if (
        environ.get("REQUEST_METHOD") != "GET"
        or not path.startswith(ROUTED)
        or "//" in path
        or not (path.isascii() and path.isprintable())  # Flask routes no control character
        or path in ROUTED  # "/slurm/": Flask's own rule for the bare prefix
        or environ.get("CONTENT_LENGTH")
        or "HTTP_TRANSFER_ENCODING" in environ
        or "HTTP_COOKIE" in environ
    ):
        return None
    token = bearer_credentials(environ.get("HTTP_AUTHORIZATION", ""))
    if token is None or looks_like_slurm_token(token) is not None:
        return None
    return token


class ProxyFastPath:
    """WSGI in front of Flask for the proxy's common case (module docstring)."""

    def __init__(self, app: WsgiApp, proxy: SlurmRestProxy, url_map: Map) -> None:
        self.app = app
        self.proxy = proxy
        self.url_map = url_map

    def _routed_to_proxy(self, environ: dict[str, Any]) -> bool:
        """Would Flask route this request to the proxy view? Its own URL map decides, so a
        request Flask would refuse (a Host werkzeug cannot encode) or send elsewhere is
        Flask's."""
        try:
            endpoint, _ = self.url_map.bind_to_environ(environ).match()
        except Exception:  # werkzeug's BadHost, NotFound, RequestRedirect, ...
            return False
        return isinstance(endpoint, str) and endpoint.startswith("proxy.")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        token = fast_path_token(environ)
        if token is None or not self._routed_to_proxy(environ):
            return self.app(environ, start_response)
        req = HttpRequest(environ)
        try:
            resp = self._forwarded(req, token)
        except BridgeError as exc:
            resp = error_answer(exc)
        except Exception:
            # A bug outside the pipeline (whose own errors are audited refusals): logged, and
            # answered as Flask's 500 handler answers (create_app).
            log.exception("GET %s: unexpected error", shown(environ.get("PATH_INFO", "")))
            body = {"error": "server_error", "error_description": "internal error; see the log"}
            resp = Response(json_body(body), status=500, mimetype="application/json")
        return add_security_headers(resp)(environ, start_response)

    def _forwarded(self, req: HttpRequest, token: str) -> Response:
        """The Flask view's steps (proxy.handle) for a bodyless request with a Bearer token."""
        proxy = self.proxy
        origin = Request(door="proxy", remote_addr=req.remote_addr)
        with proxy.pipeline.parsing("exchange", origin):
            target = forwardable_target(raw_target(req))
        caller, cached = caller_and_token(
            proxy, origin, lambda: bearer_caller(proxy, token, origin)
        )
        return forward(proxy, req, target, caller, cached, origin)
