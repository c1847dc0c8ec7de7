"""``POST /oauth/token`` answered in front of Flask: the token door without Flask's request
context, routing, form parser and response objects (most of a token request's CPU beside the
signature, bench/NOTES.md).

It sits between the WSGI server (and ProxyFix, when ``[server] proxy_fix`` is set) and Flask.
A request for exactly ``POST /oauth/token`` is counted here against the per-address limit
(``ratelimit.AddressLimit``, Flask-Limiter's own counter), once, before anything else; any
other spelling that Flask routes to the same view (``//oauth/token``, a lower-case method) goes
to Flask untouched and is counted there by the view's own limit. Then:

- a form-encoded body with a ``Content-Length`` within the app's limit is read and parsed here;
  a token exchange goes through ``api.exchange_form`` (the pipeline, as the Flask view does) and
  is answered here, with the same status, headers and JSON as the view (a unit test compares
  them answer for answer);
- anything else (another content type, no or a too large ``Content-Length``, a chunked body,
  the device-code grant) goes on to the Flask view, with the body already read put back, and
  the rate-limit headers added to its answer; the view does not count the request again.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.http import HTTP_STATUS_CODES, parse_options_header

from ..errors import BridgeError, malformed_body
from ..pipeline import Request
from ..ratelimit import COUNTED, OverAddressLimit
from .api import NO_STORE, exchange_form, parse_form, refusal_headers, token_body
from .device import GRANT_DEVICE_CODE, device_login_enabled
from .jwks import SECURITY_HEADERS

if TYPE_CHECKING:
    from flask import Flask

    from .. import Bridge
    from ..ratelimit import AddressLimit

log = logging.getLogger(__name__)

PATH = "/oauth/token"
ENDPOINT = "api.oauth_token"
FORM = "application/x-www-form-urlencoded"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Headers = list[tuple[str, str]]

# The status lines werkzeug writes ("429 TOO MANY REQUESTS"), built once
STATUS_LINES = {code: f"{code} {name.upper()}" for code, name in HTTP_STATUS_CODES.items()}


def json_body(payload: dict[str, Any]) -> bytes:
    # What Flask's jsonify writes outside debug mode (compact, ASCII, keys in order, a newline)
    return (json.dumps(payload, separators=(",", ":")) + "\n").encode()


def with_rate_headers(headers: Headers, rate: Headers) -> Headers:
    """``headers`` with the X-RateLimit headers added and ``Retry-After`` set as Flask-Limiter
    sets it on every answer of a limited view: the seconds until the window frees a request, or
    the answer's own ``Retry-After`` if that is later."""
    if not rate:
        return headers
    reset_at = int(dict(rate)["X-RateLimit-Reset"])
    kept: Headers = []
    for name, value in headers:
        if name.lower() == "retry-after":
            try:
                reset_at = max(int(time.time() + int(value)), reset_at)
            except ValueError:
                pass
            continue
        kept.append((name, value))
    return [*kept, *rate, ("Retry-After", str(int(reset_at - time.time())))]


class TokenFastPath:
    """WSGI in front of Flask for ``POST /oauth/token`` (module docstring)."""

    def __init__(
        self, app: WsgiApp, flask_app: Flask, bridge: Bridge, limit: AddressLimit | None
    ) -> None:
        self.app = app
        self.flask_app = flask_app
        self.pipeline = bridge.pipeline
        self.limit = limit
        self.max_body: int = flask_app.config["MAX_CONTENT_LENGTH"]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        address = environ.get("REMOTE_ADDR") or ""
        origin = Request(door="token-exchange", remote_addr=address or None)
        rate: Headers = []
        try:
            if self.limit is not None:
                rate = self.limit.count(address)
        except OverAddressLimit as exc:
            return self._refusal(start_response, exc, exc.headers)
        except BridgeError as exc:
            return self._refusal(start_response, exc, rate)
        except Exception:
            return self._server_error(start_response, rate)
        try:
            body = self._body(environ)
        except (OSError, ValueError):
            # The body stopped arriving (the worker's read timeout) or the client went away:
            # what Flask answers to werkzeug's ClientDisconnected (create_app).
            stopped = {
                "error": "invalid_request",
                "error_description": "the request body did not arrive in time",
            }
            return self._answer(start_response, 408, stopped, [("Connection", "close")], rate)
        except Exception as exc:  # the server's own parse error of a bad chunk
            try:
                self.pipeline.refuse_input("exchange", origin, malformed_body(exc))
            except BridgeError as refused:
                return self._refusal(start_response, refused, rate)
        if body is None:
            return self._flask(environ, start_response, rate)
        try:
            form = parse_form(body)
            if form.get("grant_type") == GRANT_DEVICE_CODE and device_login_enabled(self.flask_app):
                environ["wsgi.input"] = io.BytesIO(body)
                return self._flask(environ, start_response, rate)
            result = exchange_form(self.pipeline, form, origin)
        except BridgeError as exc:
            return self._refusal(start_response, exc, rate)
        except Exception:
            return self._server_error(start_response, rate)
        return self._answer(start_response, 200, token_body(result), list(NO_STORE.items()), rate)

    def _length(self, environ: dict[str, Any]) -> int | None:
        """The length of a form-encoded body this path reads, or None when Flask is to answer
        (another content type, no or an odd ``Content-Length``, too large, chunked)."""
        mimetype = parse_options_header(environ.get("CONTENT_TYPE", ""))[0].lower()
        length = environ.get("CONTENT_LENGTH", "")
        if (
            mimetype != FORM
            or not (0 < len(length) <= 12 and length.isascii() and length.isdigit())
            or environ.get("HTTP_TRANSFER_ENCODING")
        ):
            return None
        size = int(length)
        return size if size <= self.max_body else None

    def _body(self, environ: dict[str, Any]) -> bytes | None:
        """The whole form-encoded body, or None when Flask is to answer (and read it)."""
        size = self._length(environ)
        if size is None:
            return None
        stream = environ["wsgi.input"]
        chunks = []
        while size > 0:
            chunk = stream.read(size)
            if not chunk:
                raise OSError("the body ended early")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _flask(
        self, environ: dict[str, Any], start_response: Callable[..., Any], rate: Headers
    ) -> Iterable[bytes]:
        if self.limit is not None:
            environ[COUNTED] = True  # the view's own limit does not count it again
        if not rate:
            return self.app(environ, start_response)

        def start(status: str, headers: Headers, exc_info: Any = None) -> Any:
            return start_response(status, with_rate_headers(headers, rate), exc_info)

        return self.app(environ, start)

    def _server_error(self, start_response: Callable[..., Any], rate: Headers) -> list[bytes]:
        """A bug outside the pipeline (whose own errors are audited refusals): logged, and
        answered as Flask's 500 handler answers (create_app)."""
        log.exception("POST %s: unexpected error", PATH)
        body = {"error": "server_error", "error_description": "internal error; see the log"}
        return self._answer(start_response, 500, body, [], rate)

    def _refusal(
        self, start_response: Callable[..., Any], exc: BridgeError, rate: Headers
    ) -> list[bytes]:
        headers = refusal_headers(exc)
        return self._answer(start_response, exc.status, exc.oauth_body(), headers, rate)

    def _answer(
        self,
        start_response: Callable[..., Any],
        status: int,
        payload: dict[str, Any],
        headers: Headers,
        rate: Headers,
    ) -> list[bytes]:
        body = json_body(payload)
        start_response(
            STATUS_LINES.get(status, f"{status} UNKNOWN"),
            with_rate_headers(
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                    *headers,
                    *SECURITY_HEADERS,
                ],
                rate,
            ),
        )
        return [body]
