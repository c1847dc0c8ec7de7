"""The browser door: log in at the identity provider (code + PKCE), see and copy a Slurm token.

authlib's Flask client does the OAuth part (state, nonce, PKCE S256, code exchange, ID token
checks); the ID token then goes through the same pipeline as the API.

Sessions are server-side (Flask-Session): the cookie carries only a random id; the grant, the
IdP's refresh token and the current Slurm token live in a local directory (0700, files 0600) or
in Redis for several replicas. A session ends at ``session_lifetime`` after the login, at logout
(deleted from the store, refresh token revoked at the IdP) or when the IdP refuses the refresh
that precedes every new token. Without a refresh token, new tokens stop at the ID token's exp.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.flask_client import FlaskOAuth2App, OAuth
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue

from ..accounts import PosixIdentity
from ..errors import BridgeError
from ..issuer_documents import discovery_url
from ..keys import KeyRingError, load_session_key, session_key_path
from ..outbound import http_client, requests_options
from ..pipeline import Grant, Request
from ..policy import parse_seconds
from ..settings import TENANT_PLACEHOLDER, IssuerSettings, Settings
from ..untrusted import insecure_url, printable
from . import current_bridge as _bridge
from . import extension
from .urls import own_url

log = logging.getLogger(__name__)

bp = Blueprint("browser", __name__)

SESSION_COOKIE = "sjb_session"
# The local store prunes expired sessions first, then others, beyond this many files.
SESSION_FILE_LIMIT = 20000
REVOKE_TIMEOUT = 5.0


def login_issuers(settings: Settings) -> list[IssuerSettings]:
    return [i for i in settings.issuers if i.client_id]


def _private_dir(path: Path) -> Path:
    """The local session store: created 0700; refused when group/other may enter it."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise KeyRingError(
            f"{path}: cannot create the session directory ({exc.strerror})"
        ) from None
    if mode & 0o077:
        raise KeyRingError(
            f"{path}: mode {mode:04o} lets group/other access browser sessions; "
            f"run: chmod 700 {path}"
        )
    return path


def init_sessions(app: Flask, settings: Settings) -> None:
    """Server-side sessions (Flask-Session) in the configured store."""
    from flask_session import Session

    cfg = settings.browser
    app.secret_key = load_session_key(
        session_key_path(settings.server.secret_key_file, settings.keys.dir)
    )
    app.config.update(
        SESSION_COOKIE_NAME=("__Host-" if cfg.secure_cookies else "") + SESSION_COOKIE,
        SESSION_COOKIE_SECURE=cfg.secure_cookies,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_DOMAIN=None,
        PERMANENT_SESSION_LIFETIME=cfg.session_lifetime,
        SESSION_PERMANENT=True,
        SESSION_REFRESH_EACH_REQUEST=False,
        SESSION_KEY_PREFIX="sjb-session:",
    )
    if cfg.session_storage_uri:
        try:
            import redis
        except ImportError:
            raise KeyRingError(
                "[browser] session_storage_uri: redis:// needs the redis extra "
                "(pip install 'slurm-jwt-bridge[redis]')"
            ) from None
        app.config.update(
            SESSION_TYPE="redis", SESSION_REDIS=redis.Redis.from_url(cfg.session_storage_uri)
        )
    else:
        from cachelib.file import FileSystemCache

        store = _private_dir(cfg.session_dir)
        app.config.update(
            SESSION_TYPE="cachelib",
            SESSION_CACHELIB=FileSystemCache(str(store), threshold=SESSION_FILE_LIMIT, mode=0o600),
        )
    Session(app)
    app.extensions["slurm_jwt_bridge_sessions"] = SessionRevocations(
        app.config.get("SESSION_REDIS"), app.config.get("SESSION_CACHELIB"), cfg.session_lifetime
    )


class SessionRevocations:
    """Session ids ended by logout, kept for a session lifetime in the session store itself.

    Deleting a session is not enough: a request that loaded it before the logout (a re-mint
    waiting on the identity provider) saves it back when it ends. A revoked id is refused
    whatever its store holds."""

    PREFIX = "sjb-revoked:"

    def __init__(self, redis_client: Any, cache: Any, ttl: int) -> None:
        self.redis, self.cache, self.ttl = redis_client, cache, ttl

    def revoke(self, sid: str) -> None:
        if self.redis is not None:
            self.redis.setex(self.PREFIX + sid, self.ttl, b"1")
        else:
            self.cache.set(self.PREFIX + sid, True, timeout=self.ttl)

    def revoked(self, sid: str) -> bool:
        if self.redis is not None:
            return bool(self.redis.exists(self.PREFIX + sid))
        return bool(self.cache.get(self.PREFIX + sid))


def _revocations() -> SessionRevocations:
    return extension("slurm_jwt_bridge_sessions", SessionRevocations)


def session_revoked(sid: object) -> bool:
    """Whether the browser session ``sid`` ended at logout (a missing id counts as ended)."""
    return not isinstance(sid, str) or _revocations().revoked(sid)


def session_seal(key: bytes, sid: str, grant: Any, ends: Any) -> str:
    """An HMAC (the session key) over a session id and the grant it holds: whoever can write
    to the session store, but does not hold session.key, cannot make a session for another
    user or move one to another id."""
    body = json.dumps({"sid": sid, "grant": grant, "ends": ends}, sort_keys=True)
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def _seal_value() -> str:
    key = current_app.secret_key
    assert isinstance(key, bytes)
    sid = session.sid  # type: ignore[attr-defined]
    return session_seal(key, sid, session.get("grant"), session.get("ends"))


def _seal() -> None:
    session["seal"] = _seal_value()


def _session_valid() -> bool:
    """The session is neither revoked by logout nor altered in the store."""
    sid = getattr(session, "sid", None)
    if not sid or _revocations().revoked(sid):
        return False
    seal = session.get("seal")
    return isinstance(seal, str) and hmac.compare_digest(seal, _seal_value())


def init_browser(app: Flask, settings: Settings) -> None:
    """Register the IdP clients and, when there is a login issuer, the session store."""
    if login_issuers(settings):
        init_sessions(app, settings)
    oauth = OAuth(app)
    for iss in login_issuers(settings):
        kwargs: dict[str, Any] = {
            "scope": " ".join(iss.scopes),
            "code_challenge_method": "S256",
            # authlib sends through requests: the issuer's ca_file or the system store, no
            # redirect followed, nothing from the environment.
            **requests_options(iss.ca_file or None),
        }
        if not iss.client_secret:
            kwargs["token_endpoint_auth_method"] = "none"
        oauth.register(
            name=iss.name,
            client_id=iss.client_id,
            client_secret=iss.client_secret or None,
            server_metadata_url=discovery_url(iss),
            client_kwargs=kwargs,
        )
    app.extensions["slurm_jwt_bridge_oauth"] = oauth
    app.register_blueprint(bp)
    if login_issuers(settings) and settings.browser.device_login:
        from .device import init_device

        init_device(app, settings)


def _oauth() -> OAuth:
    return extension("slurm_jwt_bridge_oauth", OAuth)


# Where authlib's copy of the discovery document sends the browser, the code, the refresh
# token, the ID token hint, or fetches the keys from.
ENDPOINTS = (
    "authorization_endpoint",
    "token_endpoint",
    "jwks_uri",
    "revocation_endpoint",
    "end_session_endpoint",
)


class UnsafeEndpoint(Exception):
    """The discovery document names an endpoint the login must not use; one line."""


def endpoint_problem(iss: IssuerSettings, what: str, uri: Any) -> str | None:
    """Why ``uri`` may not be used, or None: https, or plain http only when the issuer itself is
    plain http and allowed so (this machine, or ``allow_insecure_http`` for another)."""
    if not isinstance(uri, str) or not uri.lower().startswith(("https://", "http://")):
        return f"the discovery document names no http(s) {what}: {printable(uri, 100)}"
    if uri.lower().startswith("https://"):
        return None
    if iss.issuer.lower().startswith("http://") and (
        iss.allow_insecure_http or not insecure_url(uri)
    ):
        return None
    return f"the discovery document names a plain http {what} {printable(uri, 100)}"


def _metadata(client: Any, iss: IssuerSettings) -> dict[str, Any]:
    """authlib's discovery document for ``iss``, every endpoint in it checked; a refused one is
    fetched again next time (the provider may be fixed)."""
    meta = client.load_server_metadata() or {}
    for what in ENDPOINTS:
        if what in meta:
            problem = endpoint_problem(iss, what, meta[what])
            if problem:
                client.server_metadata.pop("_loaded_at", None)
                raise UnsafeEndpoint(f"issuer {iss.name!r}: {problem}")
    return meta


def _page(template: str, status: int = 200, **context: Any) -> Response:
    resp = Response(render_template(template, **context), status=status, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def error_page(title: str, reason: str, status: int = 400, login: bool = False) -> Response:
    return _page("error.html", status, title=title, reason=reason, login=login)


def _ended(title: str, reason: str) -> Response:
    """The session is over: delete it from the store and ask for a new login."""
    session.clear()
    return error_page(title, reason, 401, login=True)


def _csrf() -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(24)
    return token


def _audit_refusal(event: str, reason: str, metric: str, **fields: Any) -> None:
    """The audit line and metric of a refusal decided here, before or beside the pipeline
    (forms, callback, session state); the page that says so is the caller's."""
    if not fields:
        grant = session.get("grant")
        fields = {"user": grant.get("user") if isinstance(grant, dict) else None}
    with contextlib.suppress(BridgeError):
        _bridge().pipeline.refuse_input(
            event, _origin(), BridgeError("access_denied", reason, metric=metric), **fields
        )


def _check_csrf() -> None:
    sent = request.form.get("csrf", "")
    if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
        _audit_refusal(
            request.endpoint or "form", "CSRF token of the form did not match", "csrf_mismatch"
        )
        abort(
            error_page("Form expired", "The form's CSRF token did not match; reload the page.", 400)
        )


def _origin() -> Request:
    return Request(door="browser", remote_addr=request.remote_addr)


def grant_to_dict(grant: Grant) -> dict[str, Any]:
    """A grant as plain JSON (the session, a device code approved with it)."""
    return {
        "user": grant.user,
        "issuer": grant.issuer,
        "subject": grant.subject,
        "client": grant.client,
        "kind": grant.kind.value,
        "max_lifetime": grant.max_lifetime,
        "algs": list(grant.algs),
        "not_after": grant.not_after,
        "identity_claims": grant.identity_claims,
        "identity": grant.identity.to_dict() if grant.identity else None,
    }


def grant_from_dict(raw: dict[str, Any]) -> Grant:
    raw = dict(raw)
    raw["algs"] = tuple(raw.get("algs") or ())
    if raw.get("identity") is not None:
        raw["identity"] = PosixIdentity.from_dict(raw["identity"])
    return Grant(**raw)


def _store(result: Any) -> None:
    session["grant"] = grant_to_dict(result.grant)
    session["token"] = result.token.token
    session["exp"] = result.token.exp


def _keep_refresh_token(tokens: dict[str, Any]) -> None:
    if tokens.get("refresh_token"):
        session["refresh_token"] = tokens["refresh_token"]


def session_grant(usable: bool = False) -> Grant | None:
    """The session's grant while the session lasts; with ``usable``, only while it can still
    mint (before the upstream token's exp: a refresh at the IdP is needed after that)."""
    raw = session.get("grant")
    if not isinstance(raw, dict):
        return None
    if not _session_valid():
        _audit_refusal(
            "session",
            "browser session revoked at logout or altered in its store",
            "session_invalid",
        )
        return None
    now = time.time()
    if int(session.get("ends", 0)) <= now:
        return None
    grant = grant_from_dict(raw)
    if usable and (grant.not_after is None or grant.not_after <= now):
        return None
    return grant


def _revoke(name: str | None, refresh_token: str | None) -> None:
    """RFC 7009: revoke the refresh token where the IdP advertises revocation_endpoint."""
    if not name or not refresh_token:
        return
    iss = _bridge().settings.issuer_named(name)
    client = _oauth().create_client(name)
    if iss is None or client is None:
        return
    try:
        endpoint = _metadata(client, iss).get("revocation_endpoint")
        if not endpoint:
            return
        data = {"token": refresh_token, "token_type_hint": "refresh_token"}
        auth = None
        if iss.client_secret:
            auth = (quote(iss.client_id, safe=""), quote(iss.client_secret, safe=""))
        else:
            data["client_id"] = iss.client_id
        with http_client(iss.ca_file or None, timeout=REVOKE_TIMEOUT) as http:
            if auth is None:
                r = http.post(endpoint, data=data)
            else:
                r = http.post(endpoint, data=data, auth=auth)
        if r.status_code != 200:
            log.warning("refresh token revocation at %s answered %s", name, r.status_code)
    except UnsafeEndpoint as exc:  # the logout goes on; the token expires at the IdP
        log.warning("refresh token revocation refused: %s", exc)
    except Exception as exc:
        log.warning("refresh token revocation at %s failed: %s", name, type(exc).__name__)


# ---------------------------------------------------------------- routes


@bp.get("/")
def index() -> ResponseReturnValue:
    settings: Settings = _bridge().settings
    grant = session_grant()
    if grant is None:
        if "grant" in session:  # past session_lifetime: the login is over
            session.clear()
        return _page("index.html", issuers=login_issuers(settings))
    token = session.get("token", "")
    exp = int(session.get("exp", 0))
    public = own_url("browser.index").rstrip("/")
    proxy = settings.browser.proxy_url or (public if settings.proxy.enabled else "")
    return _page(
        "token.html",
        user=grant.user,
        token=token,
        exp=exp,
        exp_text=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(exp)),
        remaining=max(0, exp - int(time.time())),
        max_lifetime=min(
            settings.tokens.max_lifetime, grant.max_lifetime or settings.tokens.max_lifetime
        ),
        default_lifetime=settings.tokens.default_lifetime,
        proxy_url=proxy,
        passthrough=settings.proxy.passthrough_slurm_tokens,
        api=settings.browser.slurm_api_version,
        csrf=_csrf(),
    )


@bp.get("/login")
def login() -> ResponseReturnValue:
    settings: Settings = _bridge().settings
    issuers = login_issuers(settings)
    if not issuers:
        return error_page(
            "Browser login is not configured",
            "No [[issuers]] entry has a client_id for browser login.",
            404,
        )
    device = request.args.get("device") == "1"
    if not device:
        # A terminal code waits for this login only when the person started the login from
        # the device page: a code planted in the session by another page is dropped.
        session.pop("device_next", None)
    name = request.args.get("issuer")
    if name is None and len(issuers) > 1:
        return _page("chooser.html", issuers=issuers, device=1 if device else None)
    chosen = issuers[0] if name is None else next((i for i in issuers if i.name == name), None)
    if chosen is None:
        _audit_refusal("login", f"no login issuer is named {(name or '')[:64]!r}", "unknown_issuer")
        return error_page(
            "Unknown identity provider", f"No login issuer is named {(name or '')[:64]!r}.", 404
        )
    session["login_issuer"] = chosen.name
    client: FlaskOAuth2App = _oauth().create_client(chosen.name)
    redirect_uri = own_url("browser.callback")
    try:
        _metadata(client, chosen)
        return client.authorize_redirect(redirect_uri)
    except UnsafeEndpoint as exc:
        _audit_refusal("login", str(exc)[:200], "unsafe_idp_endpoint")
        return error_page(
            "Identity provider refused",
            f"{chosen.display_name or chosen.name} names an endpoint that is not https; "
            "login refused.",
            502,
        )
    except Exception as exc:  # discovery failed: the IdP is unreachable
        log.warning("login redirect for %s failed: %s", chosen.name, exc)
        return error_page(
            "Identity provider unreachable",
            f"Could not reach {chosen.display_name or chosen.name}; try again later.",
            503,
        )


@bp.get("/auth/callback")
def callback() -> ResponseReturnValue:
    name = session.get("login_issuer")
    if request.args.get("error"):
        session.pop("login_issuer", None)
        error = request.args.get("error", "")[:64]
        desc = request.args.get("error_description", "")[:200]
        _audit_refusal(
            "login", f"the identity provider refused the login: {error}", "idp_refused_login"
        )
        return error_page("Login refused by the identity provider", f"{error}: {desc}".strip(": "))
    if not name:
        _audit_refusal("login", "no login is in progress in this browser", "no_login_in_progress")
        return error_page("Login expired", "No login is in progress in this browser; start again.")
    client = _oauth().create_client(name)
    if client is None:
        _audit_refusal(
            "login", f"login issuer {name[:64]!r} is no longer configured", "unknown_issuer"
        )
        return error_page("Unknown identity provider", "The login issuer is no longer configured.")
    mixup = _mixup_reason(client, name)
    if mixup:
        session.pop("login_issuer", None)
        _audit_refusal("login", mixup, "issuer_mixup", user=None)
        return error_page("Login refused", mixup)
    try:
        tokens = _token_answer(client, name)
    except UnsafeEndpoint as exc:
        session.pop("login_issuer", None)
        _audit_refusal("login", str(exc)[:200], "unsafe_idp_endpoint", user=None)
        return error_page(
            "Login failed", "The identity provider names an endpoint that is not https.", 502
        )
    except OAuthError as exc:
        _audit_refusal("login", f"login answer refused: {exc.error}"[:200], "login_answer_refused")
        return error_page("Login failed", f"{exc.error}: {exc.description or ''}".strip(": "))
    except Exception as exc:
        log.warning("code exchange with %s failed: %s", name, type(exc).__name__)
        _audit_refusal(
            "login",
            f"the identity provider's answer could not be used: {type(exc).__name__}",
            "login_answer_unusable",
        )
        return error_page("Login failed", "The identity provider's answer could not be used.", 502)
    id_token = tokens.get("id_token")
    if not id_token:
        _audit_refusal("login", "the identity provider returned no ID token", "no_id_token")
        return error_page("Login failed", "The identity provider returned no ID token.")
    settings: Settings = _bridge().settings
    # A login started at the device page goes back there (with the typed code, if any).
    device_next = session.get("device_next")
    # A new session id for the logged-in session; nothing from before the login is kept.
    current_app.session_interface.regenerate(session)  # type: ignore[attr-defined]
    session.clear()
    ends = int(time.time()) + settings.browser.session_lifetime
    try:
        result = _bridge().pipeline.login(
            id_token, ends, _origin(), access_token=tokens.get("access_token")
        )
    except BridgeError as exc:
        return error_page("No Slurm token for this account", exc.reason, exc.status)
    _store(result)
    _keep_refresh_token(tokens)
    session["ends"] = ends
    session["end_session"] = (client.load_server_metadata() or {}).get("end_session_endpoint")
    session["issuer"] = name
    _seal()
    if isinstance(device_next, str):
        return redirect(url_for("device.page", code=device_next or None))
    return redirect(url_for("browser.index"))


def _token_answer(client: Any, name: str) -> dict[str, Any]:
    """The code exchange, once the endpoints it uses are checked."""
    iss = _bridge().settings.issuer_named(name)
    if iss is None:
        raise UnsafeEndpoint(f"issuer {name!r} is no longer configured")
    _metadata(client, iss)
    tokens: dict[str, Any] = client.authorize_access_token()
    return tokens


def _mixup_reason(client: Any, name: str) -> str | None:
    """RFC 9207: the authorization response names the issuer that answered. Login issuers share
    one callback, so an answer from another issuer than the one this browser was sent to (a
    mix-up: that issuer's code would go to this one's token endpoint) is refused."""
    try:
        meta = client.load_server_metadata() or {}
    except Exception:  # the IdP is unreachable: the code exchange reports it
        return None
    expected = meta.get("issuer")
    sent = request.args.get("iss")
    if sent is None:
        if meta.get("authorization_response_iss_parameter_supported") is True:
            return (
                f"the answer carries no iss although issuer {name!r} always sends it "
                "(RFC 9207); start the login again"
            )
        return None
    if sent != expected and not _tenant_form(str(expected), sent):
        return (
            f"the answer comes from issuer {sent[:100]!r}, but this login was sent to "
            f"{name!r} ({str(expected)[:100]!r}); start the login again"
        )
    return None


def _tenant_form(template: str, sent: str) -> bool:
    """Entra's ``{tenantid}`` metadata issuer stands for each tenant's own issuer."""
    if TENANT_PLACEHOLDER not in template:
        return False
    head, _, tail = template.partition(TENANT_PLACEHOLDER)
    tenant = sent[len(head) : len(sent) - len(tail)] if sent.endswith(tail) else ""
    return (
        sent.startswith(head)
        and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,99}", tenant) is not None
    )


@bp.post("/token")
def new_token() -> ResponseReturnValue:
    grant = session_grant()
    if grant is None:
        if "grant" in session:
            session.clear()
        return redirect(url_for("browser.index"))
    _check_csrf()
    try:
        lifetime = parse_seconds(request.form.get("lifetime"), "lifetime")
    except BridgeError as exc:
        with contextlib.suppress(BridgeError):
            _bridge().pipeline.refuse_input("remint", _origin(), exc)
        return error_page("Bad lifetime", exc.reason, exc.status)
    if session.get("refresh_token"):
        return _refreshed_token(grant, lifetime)
    if grant.not_after is None or grant.not_after <= time.time():
        _refused(
            grant,
            "the ID token expired and the identity provider gave no refresh token",
            "grant_expired",
        )
        return _ended(
            "Login expired",
            "Your login at the identity provider has expired (it gave this service no refresh "
            "token): log in again to get a new token.",
        )
    try:
        result = _bridge().pipeline.remint(grant, lifetime, None, _origin())
    except BridgeError as exc:
        return error_page("No new token", exc.reason, exc.status)
    _store(result)
    _seal()
    return redirect(url_for("browser.index"))


def _refused(grant: Grant, reason: str, metric: str) -> None:
    _audit_refusal("remint", reason, metric, **grant.audit_fields())


def _refreshed_token(grant: Grant, lifetime: int | None) -> ResponseReturnValue:
    """Refresh at the IdP, then verify -> map -> authorize -> mint on the fresh ID token."""
    name = session.get("issuer")
    client = _oauth().create_client(name) if name else None
    if client is None:
        _refused(
            grant, f"login issuer {str(name)[:64]!r} is no longer configured", "unknown_issuer"
        )
        return _ended("Login ended", "The login issuer is no longer configured; log in again.")
    iss = _bridge().settings.issuer_named(name) if name else None
    try:
        if iss is None:
            raise UnsafeEndpoint(f"issuer {name!r} is no longer configured")
        _metadata(client, iss)
        tokens = client.fetch_access_token(
            grant_type="refresh_token", refresh_token=session["refresh_token"]
        )
    except UnsafeEndpoint as exc:
        _refused(grant, str(exc)[:200], "unsafe_idp_endpoint")
        return error_page(
            "Identity provider refused",
            "The identity provider names an endpoint that is not https; try again later.",
            502,
        )
    except OAuthError as exc:
        _refused(grant, f"refresh refused by the identity provider: {exc.error}", "refresh_refused")
        return _ended(
            "Login ended",
            "Your identity provider no longer accepts this login "
            f"({(exc.error or 'refused')[:64]}): log in again.",
        )
    except Exception as exc:
        log.warning("refresh at %s failed: %s", name, type(exc).__name__)
        return error_page(
            "Identity provider unreachable",
            "Could not renew the login at the identity provider; try again later.",
            503,
        )
    id_token = tokens.get("id_token")
    if not id_token:
        _refused(grant, "the identity provider's refresh answer has no ID token", "no_id_token")
        return _ended(
            "Login ended",
            "The identity provider renewed the login without an ID token: log in again.",
        )
    try:
        result = _bridge().pipeline.login(
            id_token,
            int(session["ends"]),
            _origin(),
            lifetime,
            event="remint",
            access_token=tokens.get("access_token"),
        )
    except BridgeError as exc:
        session.clear()
        return error_page("No new token", exc.reason, exc.status, login=True)
    fresh = result.grant
    if (fresh.user, fresh.issuer, fresh.subject) != (grant.user, grant.issuer, grant.subject):
        _refused(grant, "the identity provider renewed another account", "login_changed")
        return _ended(
            "Login changed", "The identity provider renewed another account: log in again."
        )
    if _revocations().revoked(session.sid):  # type: ignore[attr-defined]
        # Logged out while the identity provider answered: the rotated refresh token must not
        # outlive the session.
        _revoke(name, tokens.get("refresh_token"))
        _refused(grant, "the login ended while a new token was being made", "session_invalid")
        session.clear()
        return _ended("Logged out", "This login ended while a new token was being made.")
    _store(result)
    _keep_refresh_token(tokens)
    _seal()
    return redirect(url_for("browser.index"))


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    if not isinstance(session.get("grant"), dict):  # already logged out (another tab)
        session.clear()
        return redirect(url_for("browser.index"))
    _check_csrf()
    end_session = session.get("end_session")
    name = session.get("issuer")
    refresh_token = session.get("refresh_token")
    _revocations().revoke(session.sid)  # type: ignore[attr-defined]
    session.clear()  # deleted from the store: a replayed cookie finds nothing
    _revoke(name, refresh_token)
    if end_session and name:
        iss = _bridge().settings.issuer_named(name)
        params = {
            "client_id": iss.client_id if iss else "",
            "post_logout_redirect_uri": own_url("browser.index"),
        }
        return redirect(f"{end_session}?{urlencode(params)}")
    return redirect(url_for("browser.index"))
