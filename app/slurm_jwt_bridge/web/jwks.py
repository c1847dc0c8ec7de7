"""The JWKS slurmctld (and `jwks sync`) reads: next + active + unexpired retired RS256 keys."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, request
from werkzeug.http import parse_etags

from . import current_bridge

if TYPE_CHECKING:
    from .. import Bridge

bp = Blueprint("jwks", __name__)

PATHS = ("/.well-known/jwks.json", "/jwks.json")

# Every answer of the app carries these (the after_request hook in create_app; the fast path
# below writes them itself).
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
# ... and an HTML answer this one too (Flask's bodiless answers, such as a 304, count as HTML)
CONTENT_SECURITY_POLICY = (
    "Content-Security-Policy",
    "default-src 'self'; frame-ancestors 'none'; form-action 'self' https: http:",
)
# (lower-case name, name, value): one pass over an answer's headers instead of a
# case-insensitive scan per header (setdefault), on every answer
_SECURITY = tuple((name.lower(), name, value) for name, value in SECURITY_HEADERS)


def add_security_headers(resp: Response) -> Response:
    """The security headers an answer does not set itself (and the CSP on HTML): Flask's
    after_request hook (create_app), and the proxy's fast path (proxy_door.py)."""
    headers = resp.headers
    present = {name.lower() for name in headers.keys()}
    for lower, name, value in _SECURITY:
        if lower not in present:
            headers.add(name, value)
    if CONTENT_SECURITY_POLICY[0].lower() not in present and resp.mimetype == "text/html":
        headers.add(*CONTENT_SECURITY_POLICY)
    return resp


def _headers(etag: str, max_age: int) -> dict[str, str]:
    return {"ETag": f'"{etag}"', "Cache-Control": f"public, max-age={max_age}"}


@bp.get(PATHS[0])
@bp.get(PATHS[1])
def jwks() -> Response:
    bridge = current_bridge()
    body, etag = bridge.keys.current().jwks_document()
    headers = _headers(etag, bridge.settings.jwks.max_age)
    if request.if_none_match.contains(etag):
        return Response(status=304, headers=headers)
    return Response(body, status=200, mimetype="application/json", headers=headers)


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# (document, 200 headers, 304 headers) of one published key set
Answer = tuple[tuple[bytes, str], list[tuple[str, str]], list[tuple[str, str]]]


class JwksFastPath:
    """WSGI in front of Flask: ``GET``/``HEAD`` of the JWKS answered with the status line and
    headers built once per published key set (the view above gives the same answer, a unit
    test compares them). Everything else, and anything that goes wrong here, goes to Flask."""

    def __init__(self, app: WsgiApp, bridge: Bridge) -> None:
        self.app = app
        self.bridge = bridge
        # (document, 200 headers, 304 headers), replaced whole in one assignment: a thread that
        # read it before a rotation keeps the body and the headers (Content-Length) that go with it
        self._answer: Answer | None = None

    def _answers(self, doc: tuple[bytes, str]) -> Answer:
        body, etag = doc
        common = [*_headers(etag, self.bridge.settings.jwks.max_age).items(), *SECURITY_HEADERS]
        full = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *common]
        answer = (doc, full, [*common, CONTENT_SECURITY_POLICY])
        self._answer = answer
        return answer

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method = environ.get("REQUEST_METHOD")
        if environ.get("PATH_INFO") not in PATHS or method not in ("GET", "HEAD"):
            return self.app(environ, start_response)
        try:
            doc = self.bridge.keys.current().jwks_document()
            answer = self._answer
            if answer is None or answer[0] is not doc:
                answer = self._answers(doc)
            (body, etag), full, not_modified = answer
            if parse_etags(environ.get("HTTP_IF_NONE_MATCH")).contains(etag):
                start_response("304 NOT MODIFIED", list(not_modified))
                return [b""]
            full = list(full)
        except Exception:  # let Flask answer (and log) whatever this was
            return self.app(environ, start_response)
        start_response("200 OK", full)
        return [b""] if method == "HEAD" else [body]
