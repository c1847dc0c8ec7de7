"""The reverse proxy door: a request to ``/slurm/...`` (or ``/slurmdb/...``, ``/openapi/...``)
carrying an identity-provider token becomes a request to slurmrestd carrying a Slurm token.

The same door without the forwarding, for a site whose nginx fronts slurmrestd: ``GET
/proxy/auth`` (``[proxy] auth_request = true``) is nginx's ``auth_request`` target. It answers
200 with the Slurm user and token in response headers, which nginx sets on the request it
forwards (examples/nginx/slurmrestd-auth-request.conf), or 401 with the reason.

Steady traffic costs no signature: the verified upstream token maps to its user from a cache
(until the upstream token expires) and the user's Slurm token is reused until 80 % of its
lifetime. Whatever X-SLURM-* or Authorization header the client sent is dropped: slurmrestd only
ever sees the bridge's token for the mapped user.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import urllib3
from cachetools import TLRUCache
from flask import Blueprint, Flask, Response, current_app, request, session
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import HTTPError as TransportError
from urllib3.exceptions import NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as TransportTimeout

from ..errors import BridgeError
from ..minting import SlurmToken
from ..pipeline import Grant, Request
from ..policy import username_problem
from ..settings import ProxySettings, Settings

log = logging.getLogger(__name__)

bp = Blueprint("proxy", __name__)

PREFIXES = ("slurm", "slurmdb", "openapi")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
# RFC 9110 section 7.6.1 hop-by-hop headers, plus what the proxy sets itself.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
DROP_REQUEST = HOP_BY_HOP | {"host", "authorization", "cookie", "content-length", "forwarded"}
DROP_RESPONSE = HOP_BY_HOP | {"content-length", "set-cookie"}
REUSE_FRACTION = 0.8
ERROR_PEEK = 64 * 1024
WHOLE_BODY = 256 * 1024  # answers up to this size are read whole, larger ones streamed


def _json_error(
    status: int, error: str, description: str, retry_after: int | None = None, **extra: Any
) -> Response:
    body = {"error": error, "error_description": description, **extra}
    resp = Response(json.dumps(body), status=status, mimetype="application/json")
    resp.headers["Cache-Control"] = "no-store"
    if retry_after:
        resp.headers["Retry-After"] = str(retry_after)
    if status == 401:
        # RFC 6750 section 3: the reason travels in the challenge too, so it survives a front
        # proxy (nginx auth_request) that answers with its own body but passes this header.
        resp.headers["WWW-Authenticate"] = (
            f'Bearer realm="slurm-jwt-bridge", error="{_quotable(error)}", '
            f'error_description="{_quotable(description)}"'
        )
    return resp


def _refused(exc: BridgeError, status: int | None = None) -> Response:
    """The JSON answer for a refusal (with its ``Retry-After``), as ``status`` when given."""
    return _json_error(status or exc.status, exc.error, exc.reason, exc.retry_after)


def _no_credentials() -> Response:
    return _json_error(
        401, "invalid_request", "send 'Authorization: Bearer <identity provider token>'"
    )


def _quotable(text: str, limit: int = 300) -> str:
    """``text`` as an RFC 6750 quoted value: printable ASCII without ``"`` and ``\\``."""
    out = "".join(
        c if " " <= c <= "~" and c not in '"\\' else "'" if c == '"' else "?" for c in text
    )
    return out[:limit]


# Percent-encodings that would change where a path goes once slurmrestd (or anything on the way)
# decodes it: "/", "?", "#", "\\", "%" itself (double encoding), and control characters.
_ENCODED_SEPARATOR = re.compile(r"%(2f|3f|23|5c|25|[01][0-9a-f]|7f)", re.IGNORECASE)
_PATH_CHARS = re.compile(r"[!$&'()*+,;=:@A-Za-z0-9._~%/-]*")


def _path_problem(path: str) -> str | None:
    """Why the raw (still percent-encoded) ``path`` must not be forwarded, or None."""
    if not path.startswith("/"):
        return "the request target must be an absolute path"
    if not _PATH_CHARS.fullmatch(path):
        return "it contains characters that must be percent-encoded"
    found = _ENCODED_SEPARATOR.search(path)
    if found:
        return f"it contains the encoded separator {found.group(0)!r}"
    try:
        decoded = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return "its percent-encoded bytes are not UTF-8"
    segments = decoded.split("/")
    if any(seg in (".", "..") for seg in segments):
        return "it contains a '.' or '..' segment"
    if path.split("/")[1] not in PREFIXES:
        return "it is outside /" + ", /".join(PREFIXES)
    return None


def forwardable_target(target: str) -> tuple[str, str]:
    """(path, query) of a raw request target, or BridgeError(400) naming why it is refused.

    The path goes to slurmrestd byte for byte as the client wrote it; what decoding could turn
    into another path (dot segments in any encoding, encoded separators) is refused instead of
    normalised, and a path outside the proxied prefixes never gets a token."""
    path, _, query = target.partition("?")
    problem = "it contains '#'" if "#" in target else _path_problem(path)
    if problem:
        raise BridgeError(
            "invalid_request", f"refused path {_shown(path)}: {problem}", 400, metric="bad_path"
        )
    return path, query


def _shown(path: str, limit: int = 120) -> str:
    return repr(path.encode("latin-1", "replace").decode("ascii", "replace")[:limit])


def _raw_target() -> str:
    """The request target as the client sent it (gunicorn and werkzeug keep it in RAW_URI)."""
    env = request.environ
    raw = env.get("RAW_URI") or env.get("REQUEST_URI")
    if raw is None:  # another WSGI server: rebuild it from the decoded path
        from urllib.parse import quote

        raw = quote(request.path, safe="/!$&'()*+,;=:@~")
        if request.query_string:
            raw += "?" + request.query_string.decode("latin-1")
    script = env.get("SCRIPT_NAME", "")
    if script and raw.startswith(script):
        raw = raw[len(script) :]
    return raw


def _peer_allowed(networks: tuple[str, ...]) -> bool:
    """Is the TCP peer (not an X-Forwarded-For address) inside one of ``networks``?"""
    env = request.environ
    peer = env.get("werkzeug.proxy_fix.orig", {}).get("REMOTE_ADDR") or env.get("REMOTE_ADDR")
    try:
        addr = ipaddress.ip_address((peer or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in ipaddress.ip_network(net) for net in networks)


def _b64json(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _looks_like_slurm_token(token: str) -> str | None:
    """The ``sun`` of a raw Slurm token (no issuer, a ``sun`` claim), else None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = _b64json(parts[1])
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
        return None
    if isinstance(payload, dict) and "iss" not in payload and isinstance(payload.get("sun"), str):
        return payload["sun"]
    return None


@dataclass(frozen=True)
class _Cached:
    token: SlurmToken
    reuse_until: float


class _UnixConnection(HTTPConnection):
    """An HTTP connection over slurmrestd's Unix socket (``slurmrestd unix:/path``)."""

    def __init__(self, *args: Any, socket_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)  # type: ignore[arg-type]
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        return sock


class _UnixPool(HTTPConnectionPool):
    ConnectionCls = _UnixConnection  # type: ignore[assignment]


def _pool(cfg: ProxySettings) -> HTTPConnectionPool:
    """A keep-alive pool to slurmrestd. urllib3 rather than a richer client: it is the thin
    layer over http.client, and the proxy's cost per request is mostly its HTTP client."""
    timeout = urllib3.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout)
    common = {"maxsize": cfg.pool_size, "block": False, "timeout": timeout, "retries": False}
    if cfg.upstream.startswith("unix:"):
        return _UnixPool("localhost", socket_path=cfg.upstream[5:], **common)
    url = urllib3.util.parse_url(cfg.upstream)
    if url.scheme == "https":
        from urllib3.connectionpool import HTTPSConnectionPool

        return HTTPSConnectionPool(url.host, url.port or 443, **common)
    return HTTPConnectionPool(url.host, url.port or 80, **common)


def _token_key(grant: Grant) -> tuple[Any, ...]:
    """Tokens are shared per user, never across differing identity claims from the IdP, and
    only between grants that bound a token alike (everything but ``not_after``)."""
    return (
        grant.issuer or "",
        grant.user,
        grant.identity,
        grant.kind,
        grant.actor,
        grant.max_lifetime,
        grant.algs,
    )


class SlurmRestProxy:
    """Connection pool, caches and header rules; one per process."""

    def __init__(self, settings: Settings, pipeline: Any) -> None:
        self.settings = settings
        self.cfg: ProxySettings = settings.proxy
        self.pipeline = pipeline
        cfg = self.cfg
        self.pool = _pool(cfg) if cfg.enabled else None
        self.lifetime = cfg.token_lifetime or None
        self._lock = threading.Lock()
        # upstream token hash -> Grant, until the upstream token's exp
        self._grants: TLRUCache[str, tuple[Grant, float]] = TLRUCache(
            cfg.cache_size, ttu=lambda _k, v, _now: v[1], timer=time.time
        )
        # what a grant allows (issuer, user, identity claims, kind, actor, algorithms, maximum
        # lifetime) -> Slurm token, reused until 80 % of its lifetime
        self._tokens: TLRUCache[tuple[Any, ...], _Cached] = TLRUCache(
            cfg.cache_size, ttu=lambda _k, v, _now: v.reuse_until, timer=time.time
        )

    # ------------------------------------------------------------ tokens

    def verified_bearer(self, token: str, origin: Request) -> tuple[Grant, float]:
        """(grant, the upstream token's exp) for an identity-provider token, cached by hash."""
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            hit = self._grants.get(key)
        if hit is not None:
            return hit
        grant, upstream_exp = self.pipeline.grant_from_token(token, origin)
        entry = (grant, float(upstream_exp))
        with self._lock:
            self._grants[key] = entry
        return entry

    def slurm_token(self, grant: Grant, origin: Request) -> SlurmToken:
        return self.reusable_token(grant, origin).token

    def reusable_token(self, grant: Grant, origin: Request) -> _Cached:
        """The user's Slurm token and until when it is reused (80 % of its lifetime).

        Shared only between grants that allow the same (kind, actor, algorithms, maximum
        lifetime), and never past the grant's own ``not_after`` (its upstream token's exp)."""
        cache_key = _token_key(grant)
        now = time.time()
        with self._lock:
            hit = self._tokens.get(cache_key)
        if (
            hit is not None
            and hit.reuse_until > now
            and (grant.not_after is None or hit.token.exp <= grant.not_after)
            and self._key_still_listed(hit.token)
        ):
            return hit
        result = self.pipeline.remint(grant, self.lifetime, None, origin)
        token = result.token
        entry = _Cached(token, token.iat + (token.exp - token.iat) * REUSE_FRACTION)
        with self._lock:
            self._tokens[cache_key] = entry
        return entry

    def _key_still_listed(self, token: SlurmToken) -> bool:
        """False once the key that signed ``token`` left the ring (``keys revoke``)."""
        if token.kid is None:
            return True
        return any(k.kid == token.kid for k in self.pipeline.keys.current().rsa_keys)

    def forget(self, grant: Grant) -> None:
        with self._lock:
            self._tokens.pop(_token_key(grant), None)

    # ------------------------------------------------------------ forwarding

    def forward_headers(self, user: str, token: str) -> dict[str, str]:
        connection_named = {
            h.strip().lower() for h in request.headers.get("Connection", "").split(",") if h.strip()
        }
        out: dict[str, str] = {}
        for name, value in request.headers.items():
            low = name.lower()
            if low in DROP_REQUEST or low in connection_named or low.startswith("x-slurm-"):
                continue
            out[name] = value
        if self.cfg.auth_style == "bearer":
            out["Authorization"] = f"Bearer {token}"
        else:
            out["X-SLURM-USER-NAME"] = user
            out["X-SLURM-USER-TOKEN"] = token
        forwarded = request.remote_addr or ""
        prior = request.headers.get("X-Forwarded-For")
        out["X-Forwarded-For"] = f"{prior}, {forwarded}" if prior else forwarded
        return out

    def send(self, path: str, query: str, user: str, token: str) -> urllib3.BaseHTTPResponse:
        """Forward the current request to ``path?query`` (raw, as the client sent them); the
        answer's body is left unread (streamed)."""
        length = request.content_length
        body: Any = None
        chunked = False
        if length:
            body = request.stream
        elif request.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body, chunked = _limited(request.stream, self.cfg.max_body), True
        headers = self.forward_headers(user, token)
        if length is not None:
            headers["Content-Length"] = str(length)
        if self.pool is None:
            raise BridgeError("server_error", "no [proxy] upstream is configured", 500)
        return self.pool.urlopen(
            request.method,
            f"{path}?{query}" if query else path,
            body=body,
            headers=headers,
            chunked=chunked,
            preload_content=False,
            decode_content=False,
            redirect=False,
            assert_same_host=False,
        )


def _limited(stream: Any, limit: int) -> Iterator[bytes]:
    seen = 0
    while True:
        chunk = stream.read(65536)
        if not chunk:
            return
        seen += len(chunk)
        if seen > limit:
            raise BridgeError("invalid_request", f"request body larger than {limit} bytes", 413)
        yield chunk


def _proxy() -> SlurmRestProxy:
    return current_app.extensions["slurm_jwt_bridge_proxy"]


# What slurmrestd says when slurmctld refused the token it forwarded. 24.05.5 and later answer
# 511; 22.05 answers 500 with one of these (seen: "Unspecified error" on reads, "Zero Bytes
# were transmitted or received" on submit/cancel, "Unexpected message received" on update).
AUTH_FAILURE_MARKERS = (
    "authentication",
    "auth/jwt",
    "1007",
    "unspecified error",
    "zero bytes were transmitted or received",
    "unexpected message received",
)


def _auth_failure(status: int, body: str) -> bool:
    """Did slurmrestd refuse the Slurm token?"""
    if status == 511:
        return True
    if status not in (401, 500):
        return False
    text = body.lower()
    return any(marker in text for marker in AUTH_FAILURE_MARKERS)


def _refusal(grant: Grant, token: SlurmToken, status: int) -> Response:
    causes = []
    if token.kid:
        causes.append(
            f"the controller does not know key {token.kid}: its JWKS file is not synced "
            "(run `slurm-jwt-bridge jwks sync --reconfigure` on the slurmctld host; "
            "Slurm 22.05 needs a slurmctld restart)"
        )
    else:
        causes.append("the controller's jwt_key differs from the bridge's jwt_hs256.key")
    causes.append(
        f"user {grant.user!r} is unknown on the controller (getpwnam fails there) "
        "or the token expired"
    )
    return _json_error(
        401,
        "slurm_token_refused",
        f"slurmrestd refused the Slurm token for {grant.user!r} (HTTP {status}); likely: "
        + "; or ".join(causes),
        slurm_user=grant.user,
        kid=token.kid,
        likely_causes=causes,
    )


@dataclass(frozen=True)
class _Caller:
    """Who a request comes from: a grant, plus the raw Slurm token for a passthrough and the
    upstream token's exp for an identity-provider token (None for a browser session)."""

    grant: Grant
    passthrough: str | None = None
    upstream_exp: float | None = None


def _door_refusal(origin: Request, exc: BridgeError) -> BridgeError:
    """Audit a refusal decided here, before the pipeline ran; returns ``exc`` to raise."""
    with contextlib.suppress(BridgeError):
        _proxy().pipeline.refuse_input("exchange", origin, exc)
    return exc


def _authenticate(proxy: SlurmRestProxy, origin: Request) -> _Caller | None:
    """The caller from the Authorization header or the browser session; None for neither."""
    auth = request.headers.get("Authorization", "")
    scheme, _, credentials = auth.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        sun = _looks_like_slurm_token(credentials)
        if sun is not None:
            if not proxy.cfg.passthrough_slurm_tokens:
                raise _door_refusal(
                    origin,
                    BridgeError(
                        "invalid_token",
                        "a raw Slurm token was presented; send your identity provider's token "
                        "(passthrough_slurm_tokens is off)",
                        401,
                        metric="slurm_token_presented",
                    ),
                )
            if username_problem(sun):
                raise _door_refusal(
                    origin,
                    BridgeError("invalid_token", "the Slurm token's sun is not a user name", 401),
                )
            current_app.extensions["slurm_jwt_bridge"].audit.record(
                "passthrough",
                "forwarded",
                door=origin.door,
                remote_addr=origin.remote_addr,
                user=sun,
            )
            return _Caller(Grant(user=sun, kind="passthrough"), passthrough=credentials)
        grant, upstream_exp = proxy.verified_bearer(credentials, origin)
        return _Caller(grant, upstream_exp=upstream_exp)
    if auth:
        raise _door_refusal(
            origin, BridgeError("invalid_request", "use 'Authorization: Bearer <token>'", 401)
        )
    if current_app.extensions.get("slurm_jwt_bridge_sessions") and "grant" in session:
        from .browser import session_grant

        grant = session_grant(usable=True)
        try:
            if grant is None:
                raise BridgeError(
                    "invalid_token",
                    "the browser login has expired: get a new token on the start page",
                    401,
                    metric="session_expired",
                )
            _check_same_origin()
        except BridgeError as exc:
            current_app.extensions["slurm_jwt_bridge"].audit.record(
                "exchange",
                "refused",
                reason=exc.reason,
                door=origin.door,
                remote_addr=origin.remote_addr,
                user=grant.user if grant else None,
            )
            raise
        return _Caller(grant)
    return None


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# The client's original method, as nginx passes it to /proxy/auth (proxy_set_header ...
# $request_method): the subrequest itself is always a GET (proxy_method GET).
ORIGINAL_METHOD_HEADER = "X-Original-Method"


def _client_method() -> str:
    """The method the browser used: the request's own, or for nginx's auth_request the
    X-Original-Method it passes. A /proxy/auth request without it may stand for any method
    (nginx turns every request into a GET subrequest), so it counts as state-changing."""
    if request.blueprint == "proxy_auth":
        sent = request.headers.get(ORIGINAL_METHOD_HEADER, "").upper()
        return sent if re.fullmatch(r"[A-Z]{1,16}", sent) else "UNKNOWN"
    return request.method


def _check_same_origin() -> None:
    """CSRF defence for cookie-authenticated calls: a state-changing method needs an Origin
    (or, without one, a Referer) equal to public_url and a custom header (X-Requested-With),
    which a cross-site form or simple fetch cannot send."""
    method = _client_method()
    if method in SAFE_METHODS:
        return
    public = current_app.extensions["slurm_jwt_bridge"].settings.server.public_url
    expected = _origin_of(public or request.host_url)
    sent = (request.headers.get("Origin") or _origin_of(request.headers.get("Referer", ""))).lower()
    if sent != expected or not request.headers.get("X-Requested-With"):
        raise BridgeError(
            "access_denied",
            f"cross-site request refused: a {method} with the browser session needs "
            f"Origin {expected} and an X-Requested-With header",
            403,
            metric="cross_site",
        )


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return ""
    return f"{parts.scheme}://{parts.netloc}".lower()


def handle(prefix: str, rest: str) -> Response:
    proxy = _proxy()
    origin = Request(door="proxy", remote_addr=request.remote_addr)
    try:
        path, query = forwardable_target(_raw_target())
        request.max_content_length = proxy.cfg.max_body
        if request.content_length and request.content_length > proxy.cfg.max_body:
            raise BridgeError(
                "invalid_request", f"request body larger than {proxy.cfg.max_body} bytes", 413
            )
    except BridgeError as exc:
        _door_refusal(origin, exc)
        return _refused(exc)
    try:
        caller = _authenticate(proxy, origin)
        if caller is None:
            return _no_credentials()
        grant, raw = caller.grant, caller.passthrough
        token = None
        if raw is None:
            token = proxy.slurm_token(grant, origin)
            raw = token.token
    except BridgeError as exc:
        return _refused(exc, 401 if exc.status == 400 else None)
    started = time.perf_counter()
    try:
        upstream = proxy.send(path, query, grant.user, raw)
    except BridgeError as exc:
        return _refused(exc)
    except (NewConnectionError, ProtocolError) as exc:  # NewConnectionError is a timeout too
        return _json_error(
            502, "upstream_unavailable", f"slurmrestd is unreachable ({type(exc).__name__})"
        )
    except TransportTimeout as exc:
        return _json_error(
            504, "upstream_timeout", f"slurmrestd did not answer in time ({type(exc).__name__})"
        )
    except (TransportError, OSError) as exc:
        return _json_error(
            502, "upstream_unavailable", f"slurmrestd is unreachable ({type(exc).__name__})"
        )
    observer = current_app.extensions.get("slurm_jwt_bridge_metrics")
    status = upstream.status
    chunks = upstream.stream(65536, decode_content=False)  # one iterator over the body
    peek = b""
    if status in (401, 500, 511) and token is not None:
        try:
            for chunk in chunks:
                peek += chunk
                if len(peek) >= ERROR_PEEK:
                    break
        except (TransportError, OSError):
            pass
        if _auth_failure(status, peek.decode("utf-8", "replace")):
            upstream.close()
            proxy.forget(grant)
            retry = _fresh_token_once(proxy, grant, token, origin)
            if retry is None:
                if observer is not None:
                    observer.proxied(status, time.perf_counter() - started)
                return _refusal(grant, token, status)
            token, raw = retry, retry.token
            try:
                upstream = proxy.send(path, query, grant.user, raw)
            except (BridgeError, TransportError, OSError) as exc:
                return _json_error(
                    502, "upstream_unavailable", f"slurmrestd is unreachable ({type(exc).__name__})"
                )
            status = upstream.status
            chunks = upstream.stream(65536, decode_content=False)
            peek = b""
    headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in DROP_RESPONSE]
    length = _declared_length(upstream)
    if length is not None and length <= WHOLE_BODY and request.method != "HEAD":
        # A small answer (most of slurmrestd's) is read whole: one write to the client, a
        # Content-Length instead of chunked framing, the connection back in the pool at once.
        try:
            data = peek + b"".join(chunks)
        except (TransportError, OSError) as exc:
            upstream.close()
            return _json_error(
                502, "upstream_unavailable", f"slurmrestd's answer was cut ({type(exc).__name__})"
            )
        upstream.release_conn()
        if observer is not None:
            observer.proxied(status, time.perf_counter() - started)
        return Response(data, status=status, headers=headers)
    if observer is not None:
        observer.proxied(status, time.perf_counter() - started)
    if length is not None:
        headers.append(("Content-Length", str(length)))  # relayed byte for byte
    body = _relay(peek, chunks, upstream)
    return Response(body, status=status, headers=headers, direct_passthrough=True)


def _fresh_token_once(
    proxy: SlurmRestProxy, grant: Grant, refused: SlurmToken, origin: Request
) -> SlurmToken | None:
    """After slurmctld refused a cached token: a new one, when it would be signed by another
    key (the cached one was minted before a rotation) and the request can be sent again (no
    body was streamed). None: answer the refusal as it is."""
    if request.content_length or request.headers.get("Transfer-Encoding"):
        return None
    ring = proxy.pipeline.keys.current()
    if refused.kid is None or ring.active is None or ring.active.kid == refused.kid:
        return None
    return proxy.slurm_token(grant, origin)


def _declared_length(upstream: urllib3.BaseHTTPResponse) -> int | None:
    """The upstream's Content-Length when it framed the body with one (not chunked)."""
    if upstream.headers.get("Transfer-Encoding"):
        return None
    value = upstream.headers.get("Content-Length", "")
    return int(value) if value.isascii() and value.isdigit() else None


class RelayInterrupted(Exception):
    """slurmrestd's answer broke off while it was being relayed."""


def _relay(
    first: bytes, rest: Iterator[bytes], upstream: urllib3.BaseHTTPResponse
) -> Iterator[bytes]:
    """The body as it arrives (after any peeked start); the connection goes back to the pool
    only when the body was read to its end, else it is closed.

    If slurmrestd's answer breaks off, so does ours: the error reaches the WSGI server, which
    closes the client's connection before the declared length (or the last chunk), so the client
    sees an incomplete answer instead of a short body that looks whole."""
    done = False
    sent = 0
    try:
        if first:
            sent += len(first)
            yield first
        for chunk in rest:
            sent += len(chunk)
            yield chunk
        done = True
    except (TransportError, OSError) as exc:
        log.warning("slurmrestd response interrupted after %d bytes: %s", sent, type(exc).__name__)
        raise RelayInterrupted(
            f"slurmrestd's answer broke off after {sent} bytes ({type(exc).__name__})"
        ) from None
    finally:
        if done:
            upstream.release_conn()
        else:
            upstream.close()


def _route(prefix: str) -> Any:
    def view(rest: str = "") -> Response:
        return handle(prefix, rest)

    view.__name__ = f"proxy_{prefix}"
    return view


for _prefix in PREFIXES:
    _view = _route(_prefix)
    bp.add_url_rule(f"/{_prefix}", view_func=_view, methods=METHODS, strict_slashes=False)
    bp.add_url_rule(f"/{_prefix}/<path:rest>", view_func=_view, methods=METHODS)


auth_bp = Blueprint("proxy_auth", __name__)

# The response headers of GET /proxy/auth (nginx: $upstream_http_x_slurm_user_name, ...).
AUTH_USER_HEADER = "X-Slurm-User-Name"
AUTH_TOKEN_HEADER = "X-Slurm-User-Token"


@auth_bp.route("/proxy/auth", methods=METHODS)
def proxy_auth() -> Response:
    """nginx ``auth_request``: 200 + the Slurm user and token as headers, or 401 + the reason.

    Same rules and caches as the built-in proxy: the client's Bearer token (or browser session)
    is verified and mapped once per upstream token, the user's Slurm token is reused until 80 %
    of its lifetime, raw Slurm tokens are refused unless ``passthrough_slurm_tokens``.

    For a Bearer token the answer carries ``X-Accel-Expires``: how long nginx may cache it
    (``auth_request_max_age``, never past the Slurm token's reuse time or the upstream token's
    expiry). nginx honours it only where the example's ``proxy_cache`` is configured."""
    resp = _auth_answer()
    observer = current_app.extensions.get("slurm_jwt_bridge_metrics")
    if observer is not None:
        observer.auth_answered(resp.status_code)
    return resp


# The client's original request target, as nginx passes it (proxy_set_header ... $request_uri).
ORIGINAL_URI_HEADER = "X-Original-URI"


def _auth_answer() -> Response:
    proxy = _proxy()
    origin = Request(door="proxy", remote_addr=request.remote_addr)
    if not _peer_allowed(proxy.cfg.auth_request_allow_from):
        return _json_error(
            403,
            "access_denied",
            "this address may not use /proxy/auth ([proxy] auth_request_allow_from)",
        )
    original = request.headers.get(ORIGINAL_URI_HEADER)
    try:
        if original is not None:
            try:
                forwardable_target(original)
            except BridgeError as exc:
                raise _door_refusal(origin, exc) from None
        caller = _authenticate(proxy, origin)
        if caller is None:
            return _no_credentials()
        # max_age stays 0 (nginx asks every time) for raw Slurm tokens and browser sessions
        grant, raw, max_age = caller.grant, caller.passthrough, 0
        if raw is None:
            cached = proxy.reusable_token(grant, origin)
            raw = cached.token.token
            limit, now = proxy.cfg.auth_request_max_age, time.time()
            if limit and caller.upstream_exp is not None:
                max_age = int(min(limit, cached.reuse_until - now, caller.upstream_exp - now))
    except BridgeError as exc:
        if exc.metric == "bad_path":  # nginx passes 401 and 403 on, anything else is its 500
            return _refused(exc, 403)
        return _refused(exc, 401 if exc.status == 400 else None)
    resp = Response(status=200)
    resp.headers[AUTH_USER_HEADER] = grant.user
    resp.headers[AUTH_TOKEN_HEADER] = raw
    # X-Accel-Expires before Cache-Control: nginx reads them in order, and a no-store seen
    # first would forbid the caching that X-Accel-Expires allows.
    resp.headers["X-Accel-Expires"] = str(max(max_age, 0))
    resp.headers["Cache-Control"] = "no-store"
    return resp


def init_proxy(app: Flask, settings: Settings, pipeline: Any) -> None:
    app.extensions["slurm_jwt_bridge_proxy"] = SlurmRestProxy(settings, pipeline)
    if settings.proxy.enabled:
        app.register_blueprint(bp)
    if settings.proxy.auth_request:
        app.register_blueprint(auth_bp)


def create_proxy_app(settings: Settings | None = None) -> Flask:
    """The proxy alone (``'slurm_jwt_bridge.web.proxy:create_proxy_app()'``), health, JWKS."""
    from .. import build_bridge
    from ..settings import load_settings
    from . import health, jwks

    settings = settings or load_settings()
    if not (settings.proxy.enabled or settings.proxy.auth_request):
        raise SystemExit(
            "slurm-jwt-bridge: error: proxy.upstream: is required for the proxy app "
            "(or proxy.auth_request = true)"
        )
    bridge = build_bridge(settings)
    app = Flask("app")
    app.extensions["slurm_jwt_bridge"] = bridge
    app.register_blueprint(health.bp)
    app.register_blueprint(jwks.bp)
    init_proxy(app, settings, bridge.pipeline)
    return app
