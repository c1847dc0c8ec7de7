"""The browser door: log in at the identity provider (code + PKCE), see and copy a Slurm token.

authlib's Flask client does the OAuth part (state, nonce, PKCE S256, code exchange, ID token
checks); the ID token then goes through the same pipeline as the API. The session cookie holds
only the grant (user, issuer, subject), the current Slurm token and a CSRF token: never an
upstream token, never the user's groups, so it stays far under 4 KB.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.flask_client import OAuth
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
from ..keys import SESSION_KEY_FILE
from ..pipeline import Grant, Request
from ..settings import TENANT_PLACEHOLDER, IssuerSettings, Settings
from ..upstream import discovery_url

log = logging.getLogger(__name__)

bp = Blueprint("browser", __name__)

SESSION_KEYS = ("grant", "token", "exp", "user", "issuer", "csrf")


def session_secret(settings: Settings) -> bytes:
    """The cookie signing key, shared by every worker: the configured file or keys/session.key."""
    path = Path(settings.server.secret_key_file or settings.keys.dir / SESSION_KEY_FILE)
    try:
        return path.read_bytes()
    except OSError:
        log.warning(
            "%s missing: browser sessions use a per-process key and will not survive a "
            "restart or span several workers (run: slurm-jwt-bridge keys init)",
            path,
        )
        return secrets.token_bytes(32)


def login_issuers(settings: Settings) -> list[IssuerSettings]:
    return [i for i in settings.issuers if i.client_id]


def init_browser(app: Flask, settings: Settings) -> None:
    """Register the IdP clients and the session settings on ``app``."""
    app.secret_key = session_secret(settings)
    app.config.update(
        SESSION_COOKIE_NAME="sjb_session",
        SESSION_COOKIE_SECURE=settings.browser.secure_cookies,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=settings.browser.session_lifetime,
    )
    oauth = OAuth(app)
    for iss in login_issuers(settings):
        kwargs: dict[str, Any] = {
            "scope": " ".join(iss.scopes),
            "code_challenge_method": "S256",
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


def _bridge() -> Any:
    return current_app.extensions["slurm_jwt_bridge"]


def _oauth() -> OAuth:
    return current_app.extensions["slurm_jwt_bridge_oauth"]


def _page(template: str, status: int = 200, **context: Any) -> Response:
    resp = Response(render_template(template, **context), status=status, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def error_page(title: str, reason: str, status: int = 400) -> Response:
    return _page("error.html", status, title=title, reason=reason)


def _csrf() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(24)
    return session["csrf"]


def _check_csrf() -> None:
    sent = request.form.get("csrf", "")
    if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
        abort(
            error_page("Form expired", "The form's CSRF token did not match; reload the page.", 400)
        )


def _origin() -> Request:
    return Request(door="browser", remote_addr=request.remote_addr)


def _store(result: Any) -> None:
    grant: Grant = result.grant
    session["grant"] = {
        "user": grant.user,
        "issuer": grant.issuer,
        "subject": grant.subject,
        "client": grant.client,
        "kind": grant.kind,
        "max_lifetime": grant.max_lifetime,
        "algs": list(grant.algs),
        "not_after": grant.not_after,
        "identity_claims": grant.identity_claims,
        "identity": grant.identity.to_dict() if grant.identity else None,
    }
    session["token"] = result.token.token
    session["exp"] = result.token.exp


def session_grant() -> Grant | None:
    raw = session.get("grant")
    if not isinstance(raw, dict):
        return None
    raw = dict(raw)
    raw["algs"] = tuple(raw.get("algs") or ())
    if raw.get("identity") is not None:
        raw["identity"] = PosixIdentity.from_dict(raw["identity"])
    return Grant(**raw)


# ---------------------------------------------------------------- routes


@bp.get("/")
def index() -> ResponseReturnValue:
    settings: Settings = _bridge().settings
    grant = session_grant()
    if grant is None:
        return _page("index.html", issuers=login_issuers(settings))
    token = session.get("token", "")
    exp = int(session.get("exp", 0))
    public = settings.server.public_url or request.host_url.rstrip("/")
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
    name = request.args.get("issuer")
    if name is None and len(issuers) > 1:
        return _page("chooser.html", issuers=issuers)
    chosen = issuers[0] if name is None else next((i for i in issuers if i.name == name), None)
    if chosen is None:
        return error_page(
            "Unknown identity provider", f"No login issuer is named {name[:64]!r}.", 404
        )
    session["login_issuer"] = chosen.name
    client = _oauth().create_client(chosen.name)
    redirect_uri = url_for("browser.callback", _external=True)
    try:
        return client.authorize_redirect(redirect_uri)
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
        return error_page("Login refused by the identity provider", f"{error}: {desc}".strip(": "))
    if not name:
        return error_page("Login expired", "No login is in progress in this browser; start again.")
    client = _oauth().create_client(name)
    if client is None:
        return error_page("Unknown identity provider", "The login issuer is no longer configured.")
    mixup = _mixup_reason(client, name)
    if mixup:
        session.pop("login_issuer", None)
        origin = _origin()
        _bridge().pipeline.audit.record(
            "login", "refused", reason=mixup, door=origin.door, remote_addr=origin.remote_addr
        )
        return error_page("Login refused", mixup)
    try:
        tokens = client.authorize_access_token()
    except OAuthError as exc:
        return error_page("Login failed", f"{exc.error}: {exc.description or ''}".strip(": "))
    except Exception as exc:
        log.warning("code exchange with %s failed: %s", name, type(exc).__name__)
        return error_page("Login failed", "The identity provider's answer could not be used.", 502)
    id_token = tokens.get("id_token")
    if not id_token:
        return error_page("Login failed", "The identity provider returned no ID token.")
    settings: Settings = _bridge().settings
    for key in (*SESSION_KEYS, "login_issuer"):
        session.pop(key, None)
    session.permanent = True
    not_after = int(time.time()) + settings.browser.session_lifetime
    try:
        result = _bridge().pipeline.login(id_token, not_after, _origin())
    except BridgeError as exc:
        return error_page("No Slurm token for this account", exc.reason, exc.status)
    _store(result)
    session["end_session"] = (client.load_server_metadata() or {}).get("end_session_endpoint")
    session["issuer"] = name
    return redirect(url_for("browser.index"))


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
        return redirect(url_for("browser.index"))
    _check_csrf()
    raw = request.form.get("lifetime", "")
    lifetime = int(raw) if raw.isdigit() and len(raw) < 10 else None
    if raw and lifetime is None:
        return error_page("Bad lifetime", "The lifetime must be a whole number of seconds.")
    try:
        result = _bridge().pipeline.remint(grant, lifetime, None, _origin())
    except BridgeError as exc:
        return error_page("No new token", exc.reason, exc.status)
    _store(result)
    return redirect(url_for("browser.index"))


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    if session_grant() is None:  # already logged out (expired session, another tab)
        session.clear()
        return redirect(url_for("browser.index"))
    _check_csrf()
    end_session = session.get("end_session")
    name = session.get("issuer")
    session.clear()
    if end_session and name:
        iss = _bridge().settings.issuer_named(name)
        params = {
            "client_id": iss.client_id if iss else "",
            "post_logout_redirect_uri": url_for("browser.index", _external=True),
        }
        return redirect(f"{end_session}?{urlencode(params)}")
    return redirect(url_for("browser.index"))
