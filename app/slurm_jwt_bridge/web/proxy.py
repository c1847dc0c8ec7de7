"""The reverse proxy door: a request to ``/slurm/...`` (or ``/slurmdb/...``, ``/openapi/...``)
carrying an identity-provider token becomes a request to slurmrestd carrying a Slurm token.

The same door without the forwarding, for a site whose nginx fronts slurmrestd: ``GET
/proxy/auth`` (``[proxy] auth_request = true``) is nginx's ``auth_request`` target. It answers
200 with the Slurm user and token in response headers, which nginx sets on the request it
forwards (examples/nginx/slurmrestd-auth-request.conf), or 401 with the reason.

Steady traffic costs no signature: the verified upstream token maps to its user from a cache
(until the upstream token expires) and the user's Slurm token is reused until 80 % of its
lifetime. Whatever X-SLURM-* or Authorization header the client sent is dropped: slurmrestd only
ever sees the bridge's token for the mapped user. The view authenticates, sends with the
SlurmRestClient (slurmrest.py) and relays the answer.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote_to_bytes, urlsplit

import urllib3
from flask import Blueprint, Flask, Response, current_app, request, session
from flask.wrappers import Request as HttpRequest
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from ..cache import ExpiringCache
from ..errors import BridgeError, malformed_body
from ..minting import SlurmToken
from ..pipeline import Grant, Pipeline, Request
from ..policy import username_problem
from ..settings import ProxySettings, Settings
from ..slurmrest import DROP_RESPONSE, SlurmRestClient, TransportError, unreachable
from . import current_bridge, extension

if TYPE_CHECKING:
    from ..hooks import ProxyObserver

log = logging.getLogger(__name__)

bp = Blueprint("proxy", __name__)

PREFIXES = ("slurm", "slurmdb", "openapi")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
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
        resp.headers["WWW-Authenticate"] = BridgeError(error, description).challenge()
    if status == 408:  # what is left of the body is not read: the connection cannot be reused
        resp.headers["Connection"] = "close"
    return resp


def error_answer(exc: BridgeError, status: int | None = None) -> Response:
    """The JSON answer for a refusal (with its ``Retry-After``), as ``status`` when given."""
    return _json_error(status or exc.status, exc.error, exc.reason, exc.retry_after)


bp.register_error_handler(BridgeError, error_answer)


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
            "invalid_request", f"refused path {shown(path)}: {problem}", 400, metric="bad_path"
        )
    return path, query


def shown(path: str, limit: int = 120) -> str:
    return repr(path.encode("latin-1", "replace").decode("ascii", "replace")[:limit])


def raw_target(req: HttpRequest) -> str:
    """The request target as the client sent it (gunicorn and werkzeug keep it in RAW_URI)."""
    env = req.environ
    raw = env.get("RAW_URI") or env.get("REQUEST_URI")
    if raw is None:  # another WSGI server (granian): rebuild it from the decoded path
        raw = quote(req.path, safe="/!$&'()*+,;=:@~")
        if req.query_string:
            raw += "?" + req.query_string.decode("latin-1")
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


def looks_like_slurm_token(token: str) -> str | None:
    """The ``sun`` of a raw Slurm token (no issuer, a ``sun`` claim), else None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = _b64json(parts[1])
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
        return None
    if not isinstance(payload, dict) or "iss" in payload:
        return None
    sun = payload.get("sun")
    return sun if isinstance(sun, str) else None


@dataclass(frozen=True)
class _Cached:
    token: SlurmToken
    reuse_until: float


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
    """The door's state, one per process: the client to slurmrestd and the two caches."""

    def __init__(
        self, settings: Settings, pipeline: Pipeline, observer: ProxyObserver | None = None
    ) -> None:
        self.settings = settings
        self.cfg: ProxySettings = settings.proxy
        self.pipeline = pipeline
        cfg = self.cfg
        self.client = SlurmRestClient.from_settings(cfg) if cfg.enabled else None
        self.observer = observer
        self.lifetime = cfg.token_lifetime or None
        # upstream token hash -> (Grant, the upstream token's exp), until that exp
        self._grants: ExpiringCache[str, tuple[Grant, float]] = ExpiringCache(cfg.cache_size)
        # what a grant allows (issuer, user, identity claims, kind, actor, algorithms, maximum
        # lifetime) -> Slurm token, reused until 80 % of its lifetime
        self._tokens: ExpiringCache[tuple[Any, ...], _Cached] = ExpiringCache(cfg.cache_size)

    # ------------------------------------------------------------ tokens

    def verified_bearer(self, token: str, origin: Request) -> tuple[Grant, float]:
        """(grant, the upstream token's exp) for an identity-provider token, cached by hash."""
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        hit = self._grants.get(key)
        if hit is not None:
            return hit
        grant, upstream_exp = self.pipeline.grant_from_token(token, origin)
        entry = (grant, float(upstream_exp))
        self._grants.put(key, entry, entry[1])
        return entry

    def slurm_token(self, grant: Grant, origin: Request) -> SlurmToken:
        return self.reusable_token(grant, origin).token

    def reusable_token(self, grant: Grant, origin: Request) -> _Cached:
        """The user's Slurm token and until when it is reused (80 % of its lifetime).

        Shared only between grants that allow the same (kind, actor, algorithms, maximum
        lifetime), and never past the grant's own ``not_after`` (its upstream token's exp)."""
        cache_key = _token_key(grant)
        hit = self._tokens.get(cache_key)
        if (
            hit is not None
            and hit.reuse_until > time.time()
            and (grant.not_after is None or hit.token.exp <= grant.not_after)
            and self._key_still_listed(hit.token)
        ):
            return hit
        # the subject was counted when the grant's upstream token was verified
        token = self.pipeline.remint(grant, self.lifetime, None, origin, count_subject=False).token
        entry = _Cached(token, token.iat + token.lifetime * REUSE_FRACTION)
        self._tokens.put(cache_key, entry, entry.reuse_until)
        return entry

    def _key_still_listed(self, token: SlurmToken) -> bool:
        """False once the key that signed ``token`` left the ring (``keys revoke``)."""
        if token.kid is None:
            return True
        return any(k.kid == token.kid for k in self.pipeline.keys.current().rsa_keys)

    def forget(self, grant: Grant) -> None:
        self._tokens.pop(_token_key(grant))

    # ------------------------------------------------------------ forwarding

    def send(
        self, req: HttpRequest, target: str, user: str, token: str, body: bytes | None = None
    ) -> urllib3.BaseHTTPResponse:
        """``req`` to slurmrestd at ``target`` (raw, as the client sent it), with ``user``'s
        Slurm token and its ``body`` (read beforehand, sent with its length); the answer's body
        is left unread (streamed)."""
        if self.client is None:
            raise BridgeError("server_error", "no [proxy] upstream is configured", 500)
        length = len(body) if body is not None else req.content_length
        headers = self.client.headers_for(
            req.headers.items(), user=user, token=token, remote_addr=req.remote_addr
        )
        if length is not None:
            headers["Content-Length"] = str(length)
        return self.client.send(req.method, target, headers, body)


def _proxy() -> SlurmRestProxy:
    return extension("slurm_jwt_bridge_proxy", SlurmRestProxy)


# What slurmrestd says when slurmctld refused the token it forwarded: 24.05.5 and later answer
# 511; 22.05 answers 500 with one of these texts (slurm_strerror's) as an error of its errors[]
# (seen: "Unspecified error" on reads, "Zero Bytes were transmitted or received" on
# submit/cancel, "Unexpected message received" on update), or slurmctld's authentication error.
AUTH_FAILURE_ERRORS = frozenset(
    {
        "protocol authentication error",
        "unspecified error",
        "zero bytes were transmitted or received",
        "unexpected message received",
    }
)
AUTH_FAILURE_ERROR_NUMBER = 1007  # SLURM_PROTOCOL_AUTHENTICATION_ERROR


def _auth_failure(status: int, body: str) -> bool:
    """Did slurmrestd refuse the Slurm token? 511, or a 401/500 whose ``errors[]`` names
    slurmctld's refusal (an ``error`` text above, or error number 1007): text elsewhere in the
    answer, such as a job id or a path the client chose, does not count."""
    if status == 511:
        return True
    if status not in (401, 500):
        return False
    try:
        document = json.loads(body)
    except ValueError:
        return False
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return False
    for error in errors:
        if not isinstance(error, dict):
            continue
        text = error.get("error")
        if error.get("error_number") == AUTH_FAILURE_ERROR_NUMBER or (
            isinstance(text, str) and text.strip().lower() in AUTH_FAILURE_ERRORS
        ):
            return True
    return False


def _likely_causes(user: str, token: SlurmToken) -> list[str]:
    """Why slurmctld would refuse ``token``, most likely first."""
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
        f"user {user!r} is unknown on the controller (getpwnam fails there) or the token expired"
    )
    return causes


def _refusal(
    proxy: SlurmRestProxy, origin: Request, path: str, user: str, token: SlurmToken, status: int
) -> Response:
    """The 401 for a Slurm token slurmrestd refused, and its audit line (no token in it)."""
    causes = _likely_causes(user, token)
    proxy.pipeline.audit.record(
        "slurmrestd",
        "refused",
        door=origin.door,
        remote_addr=origin.remote_addr,
        user=user,
        kid=token.kid,
        jti=token.jti,
        status=status,
        path=path[:200],
        reason=causes[0],
    )
    return _json_error(
        401,
        "slurm_token_refused",
        f"slurmrestd refused the Slurm token for {user!r} (HTTP {status}); likely: "
        + "; or ".join(causes),
        slurm_user=user,
        kid=token.kid,
        likely_causes=causes,
    )


@dataclass(frozen=True)
class _Caller:
    """Who a request comes from: the pipeline's grant (an identity-provider token, with its
    exp; a browser session, without), or a raw Slurm token passed through for its ``sun``."""

    user: str
    grant: Grant | None = None
    passthrough: str | None = None
    upstream_exp: float | None = None


def _origin() -> Request:
    return Request(door="proxy", remote_addr=request.remote_addr)


def bearer_credentials(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, else None."""
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    return credentials if scheme.lower() == "bearer" and credentials else None


def bearer_caller(proxy: SlurmRestProxy, token: str, origin: Request) -> _Caller:
    """The caller an identity-provider token maps to (verified once per token, cached)."""
    grant, upstream_exp = proxy.verified_bearer(token, origin)
    return _Caller(grant.user, grant, upstream_exp=upstream_exp)


def _authenticate(proxy: SlurmRestProxy, origin: Request) -> _Caller | None:
    """The caller from the Authorization header or the browser session; None for neither.
    Every refusal here is audited."""
    auth = request.headers.get("Authorization", "")
    credentials = bearer_credentials(auth)
    if credentials is not None:
        sun = looks_like_slurm_token(credentials)
        if sun is None:
            return bearer_caller(proxy, credentials, origin)
        with proxy.pipeline.parsing("exchange", origin):
            if not proxy.cfg.passthrough_slurm_tokens:
                raise BridgeError(
                    "invalid_token",
                    "a raw Slurm token was presented; send your identity provider's token "
                    "(passthrough_slurm_tokens is off)",
                    401,
                    metric="slurm_token_presented",
                )
            if username_problem(sun):
                raise BridgeError("invalid_token", "the Slurm token's sun is not a user name", 401)
        proxy.pipeline.audit.record(
            "passthrough", "forwarded", door=origin.door, remote_addr=origin.remote_addr, user=sun
        )
        return _Caller(sun, passthrough=credentials)
    if auth:
        proxy.pipeline.refuse_input(
            "exchange",
            origin,
            BridgeError("invalid_request", "use 'Authorization: Bearer <token>'", 401),
        )
    if current_app.extensions.get("slurm_jwt_bridge_sessions") and "grant" in session:
        from .browser import session_grant

        held = session_grant(usable=True)
        if held is None:
            proxy.pipeline.refuse_input(
                "exchange",
                origin,
                BridgeError(
                    "invalid_token",
                    "the browser login has expired: get a new token on the start page",
                    401,
                    metric="session_expired",
                ),
            )
        with proxy.pipeline.parsing("exchange", origin, user=held.user):
            _check_same_origin()
        return _Caller(held.user, held)
    return None


def caller_and_token(
    proxy: SlurmRestProxy, origin: Request, caller_of: Callable[[], _Caller | None]
) -> tuple[_Caller, _Cached | None]:
    """The caller (``caller_of``) and, unless a raw Slurm token passes through, the Slurm
    token minted (or reused) for it. A refusal answers 401 where the pipeline says 400: to the
    proxy's client the token it sent is what is wrong. No credentials at all: the 401 that asks
    for them."""
    try:
        caller = caller_of()
        if caller is None:
            proxy.pipeline.refuse_input(
                "exchange",
                origin,
                BridgeError(
                    "invalid_request",
                    "send 'Authorization: Bearer <identity provider token>'",
                    401,
                    metric="no_credentials",
                ),
            )
        if caller.grant is None:
            return caller, None
        return caller, proxy.reusable_token(caller.grant, origin)
    except BridgeError as exc:
        raise exc.with_status(401) if exc.status == 400 else exc from None


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
    """CSRF defence for cookie-authenticated calls.

    Any method: a request with fetch metadata (``Sec-Fetch-Site``) other than ``same-origin``,
    or with a Referer from another origin, is refused. slurmrestd has GETs that change state
    (``GET /slurm/v0.0.40/reconfigure/``), and the Lax session cookie rides on a cross-site link
    or a sibling origin's image; ``none`` is refused too, since a link opened from outside the
    browser keeps it through a cross-site redirect. A state-changing method also needs an
    Origin (or, without one, a Referer) equal to public_url and a custom header
    (X-Requested-With), which a cross-site form or simple fetch cannot send."""
    method = _client_method()
    public = current_bridge().settings.server.public_url
    expected = _origin_of(public or request.host_url)
    if method in SAFE_METHODS:
        site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
        referer = request.headers.get("Referer", "")
        if (site and site != "same-origin") or (referer and _origin_of(referer) != expected):
            raise BridgeError(
                "access_denied",
                f"cross-site request refused: a {method} with the browser session must come "
                f"from {expected} (Sec-Fetch-Site {site[:20] or 'absent'})",
                403,
                metric="cross_site",
            )
        return
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
    """scheme://host[:port] of ``url``, lower-case; "" when it has none or does not parse."""
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[", as a client may send in a Referer
        return ""
    if not parts.scheme or not parts.netloc:
        return ""
    return f"{parts.scheme}://{parts.netloc}".lower()


def handle(prefix: str, rest: str) -> Response:
    """authenticate -> send -> relay."""
    proxy = _proxy()
    origin = _origin()
    with proxy.pipeline.parsing("exchange", origin):
        target = forwardable_target(raw_target(request))
        request.max_content_length = proxy.cfg.max_body
        body = _request_body(request, proxy.cfg.max_body)
    caller, cached = caller_and_token(proxy, origin, lambda: _authenticate(proxy, origin))
    return forward(proxy, request, target, caller, cached, origin, body)


def _too_large(limit: int) -> BridgeError:
    return BridgeError("invalid_request", f"request body larger than {limit} bytes", 413)


def _stopped() -> BridgeError:
    return BridgeError(
        "invalid_request", "the request body did not arrive in time", 408, metric="body_stopped"
    )


def _request_body(req: HttpRequest, limit: int) -> bytes | None:
    """The request's body, read whole (at most ``limit`` bytes) before any token is minted or
    anything is sent; None for a request without one. Over the limit: 413; a body that stops
    before its end: 408; a Transfer-Encoding other than ``chunked``: 400."""
    length = req.content_length
    coding = req.headers.get("Transfer-Encoding", "").strip().lower()
    if coding and coding != "chunked":
        raise BridgeError("invalid_request", "only a chunked Transfer-Encoding is forwarded", 400)
    if not length and not coding:
        return None
    if length and length > limit:
        raise _too_large(limit)
    want = length or limit + 1  # a chunked body: until it ends, one byte past the limit at most
    chunks: list[bytes] = []
    seen = 0
    try:
        while seen < want:
            chunk = req.stream.read(min(65536, want - seen))
            if not chunk:
                break
            chunks.append(chunk)
            seen += len(chunk)
    except RequestEntityTooLarge:  # werkzeug's own count of the same limit
        raise _too_large(limit) from None
    except (ClientDisconnected, OSError):  # the worker's read timeout, a client gone
        raise _stopped() from None
    except Exception as exc:  # the server's own parse error of a bad chunk
        raise malformed_body(exc) from None
    if length and seen < length:
        raise _stopped()
    if seen > limit:
        raise _too_large(limit)
    return b"".join(chunks)


def forward(
    proxy: SlurmRestProxy,
    req: HttpRequest,
    target: tuple[str, str],
    caller: _Caller,
    cached: _Cached | None,
    origin: Request,
    body: bytes | None = None,
) -> Response:
    """send -> relay, for an authenticated ``caller``: ``req`` to slurmrestd at ``target``
    (path, query) with the Slurm token, and its answer as the client's (``body``: the
    request's body, already read). A token slurmctld refused because it was signed before a
    key rotation is replaced once; a refused token is the proxy's 401 (``_refusal``), the
    replacement's too."""
    token = cached.token if cached else None
    path, query = target
    target_raw = f"{path}?{query}" if query else path
    started = time.perf_counter()
    credential = token.token if token else caller.passthrough or ""
    resent = False
    while True:
        upstream = proxy.send(req, target_raw, caller.user, credential, body)
        status = upstream.status
        chunks = upstream.stream(65536, decode_content=False)  # one iterator over the body
        peek = b""
        if status not in (401, 500, 511) or token is None or caller.grant is None:
            break
        peek = _peek(chunks)
        if not _auth_failure(status, peek.decode("utf-8", "replace")):
            break
        upstream.close()
        proxy.forget(caller.grant)
        retry = None if resent else _fresh_token_once(proxy, caller.grant, token, origin, body)
        if retry is None:
            _observe(proxy, status, started)
            return _refusal(proxy, origin, path, caller.user, token, status)
        token, credential, resent = retry, retry.token, True
    return _relayed(proxy, req, upstream, status, peek, chunks, started)


def _peek(chunks: Iterator[bytes]) -> bytes:
    """The start of an error answer (up to ERROR_PEEK bytes, or what came before it broke)."""
    peek = b""
    try:
        for chunk in chunks:
            peek += chunk
            if len(peek) >= ERROR_PEEK:
                break
    except (TransportError, OSError):
        pass
    return peek


def _observer_of(app: Flask) -> ProxyObserver | None:
    observer: ProxyObserver | None = app.extensions.get("slurm_jwt_bridge_metrics")
    return observer


def _observe(proxy: SlurmRestProxy, status: int, started: float) -> None:
    if proxy.observer is not None:
        proxy.observer.proxied(status, time.perf_counter() - started)


def _relayed(
    proxy: SlurmRestProxy,
    req: HttpRequest,
    upstream: urllib3.BaseHTTPResponse,
    status: int,
    peek: bytes,
    chunks: Iterator[bytes],
    started: float,
) -> Response:
    """slurmrestd's answer (after any ``peek``-ed start) as the client's."""
    headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in DROP_RESPONSE]
    length = _declared_length(upstream)
    if length is not None and length <= WHOLE_BODY and req.method != "HEAD":
        # A small answer (most of slurmrestd's) is read whole: one write to the client, a
        # Content-Length instead of chunked framing, the connection back in the pool at once.
        try:
            data = peek + b"".join(chunks)
        except (TransportError, OSError) as exc:
            upstream.close()
            raise unreachable(exc, "slurmrestd's answer was cut") from None
        upstream.release_conn()
        _observe(proxy, status, started)
        return Response(data, status=status, headers=headers)
    _observe(proxy, status, started)
    if length is not None:
        headers.append(("Content-Length", str(length)))  # relayed byte for byte
    body = _relay(peek, chunks, upstream)
    return Response(body, status=status, headers=headers, direct_passthrough=True)


def _fresh_token_once(
    proxy: SlurmRestProxy,
    grant: Grant,
    refused: SlurmToken,
    origin: Request,
    body: bytes | None,
) -> SlurmToken | None:
    """After slurmctld refused a cached token: a new one, when it would be signed by another
    key (the cached one was minted before a rotation) and the request has no ``body`` (a write
    is never sent twice). None: answer the refusal as it is."""
    if body is not None:
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


def _auth_refused(exc: BridgeError) -> Response:
    # nginx passes 401 and 403 on; anything else becomes its own 500
    return error_answer(exc, 403 if exc.metric == "bad_path" else None)


auth_bp.register_error_handler(BridgeError, _auth_refused)


@auth_bp.after_request
def _count_auth_answer(resp: Response) -> Response:
    observer = _proxy().observer
    if observer is not None:
        observer.auth_answered(resp.status_code)
    return resp


# The client's original request target, as nginx passes it (proxy_set_header ... $request_uri).
ORIGINAL_URI_HEADER = "X-Original-URI"


@auth_bp.route("/proxy/auth", methods=METHODS)
def proxy_auth() -> Response:
    """nginx ``auth_request``: 200 + the Slurm user and token as headers, or 401 + the reason.

    Same rules and caches as the built-in proxy: the client's Bearer token (or browser session)
    is verified and mapped once per upstream token, the user's Slurm token is reused until 80 %
    of its lifetime, raw Slurm tokens are refused unless ``passthrough_slurm_tokens``.

    For a Bearer token the answer carries ``X-Accel-Expires``: how long nginx may cache it
    (``auth_request_max_age``, never past the Slurm token's reuse time or the upstream token's
    expiry). nginx honours it only where the example's ``proxy_cache`` is configured."""
    proxy = _proxy()
    origin = _origin()
    if not _peer_allowed(proxy.cfg.auth_request_allow_from):
        proxy.pipeline.refuse_input(
            "exchange",
            origin,
            BridgeError(
                "access_denied",
                "this address may not use /proxy/auth ([proxy] auth_request_allow_from)",
                403,
                metric="address_not_allowed",
            ),
        )
    original = request.headers.get(ORIGINAL_URI_HEADER)
    if original is not None:
        with proxy.pipeline.parsing("exchange", origin):
            forwardable_target(original)
    caller, cached = caller_and_token(proxy, origin, lambda: _authenticate(proxy, origin))
    # max_age stays 0 (nginx asks every time) for raw Slurm tokens and browser sessions
    max_age = 0
    limit, now = proxy.cfg.auth_request_max_age, time.time()
    if cached is not None and limit and caller.upstream_exp is not None:
        max_age = int(min(limit, cached.reuse_until - now, caller.upstream_exp - now))
    resp = Response(status=200)
    resp.headers[AUTH_USER_HEADER] = caller.user
    resp.headers[AUTH_TOKEN_HEADER] = cached.token.token if cached else caller.passthrough or ""
    # X-Accel-Expires before Cache-Control: nginx reads them in order, and a no-store seen
    # first would forbid the caching that X-Accel-Expires allows.
    resp.headers["X-Accel-Expires"] = str(max(max_age, 0))
    resp.headers["Cache-Control"] = "no-store"
    return resp


def init_proxy(app: Flask, settings: Settings, pipeline: Pipeline) -> None:
    proxy = SlurmRestProxy(settings, pipeline, _observer_of(app))
    app.extensions["slurm_jwt_bridge_proxy"] = proxy
    if settings.proxy.enabled:
        app.register_blueprint(bp)
        from .proxy_door import ProxyFastPath

        app.wsgi_app = ProxyFastPath(app.wsgi_app, proxy, app.url_map)  # type: ignore[method-assign]
    if settings.proxy.auth_request:
        app.register_blueprint(auth_bp)
