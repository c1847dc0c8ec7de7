"""The bridge's own device authorization grant (RFC 8628) for ``slurm-jwt-bridge login`` where
the identity provider offers none (Amazon Cognito, many site IdPs).

- ``POST /oauth/device_authorization``: a device_code (secret, polled with) and a short
  user_code (shown, typed or compared by the person);
- ``GET /device``: after a login through the browser door, the person enters or confirms the
  code, sees which terminal asks (code, time, address) and answers Allow or Deny (POST, CSRF);
- ``POST /oauth/token`` with ``grant_type=urn:ietf:params:oauth:grant-type:device_code``:
  authorization_pending / slow_down / access_denied / expired_token, or once, after Allow, a
  Slurm token from the approving user's grant (capped like every browser-door token).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    jsonify,
    redirect,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue

from ..device_store import DeviceStore, DirectoryStore, RedisStore
from ..errors import BridgeError, invalid_grant, invalid_request
from ..pipeline import Request
from ..settings import Settings
from . import current_bridge as _bridge
from .urls import own_url

bp = Blueprint("device", __name__)

GRANT_DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628 section 6.1: consonants only (no vowels: no words; no look-alike 0/O, 1/I/L).
USER_CODE_ALPHABET = "BCDFGHJKMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
CLIENT_NAME_MAX = 64
SLOW_DOWN_STEP = 5


def _store() -> DeviceStore:
    store: DeviceStore = current_app.extensions["slurm_jwt_bridge_device_store"]  # init_device
    return store


def device_login_enabled(app: Flask) -> bool:
    return "slurm_jwt_bridge_device_store" in app.extensions


def init_device(app: Flask, settings: Settings) -> None:
    """Register the device endpoints beside the browser door's sessions."""
    from .browser import _private_dir

    cfg = settings.browser
    if cfg.session_storage_uri:
        import redis

        store: DeviceStore = RedisStore(redis.Redis.from_url(cfg.session_storage_uri))
    else:
        path = cfg.session_dir.with_name(cfg.session_dir.name + "-device")
        store = DirectoryStore(_private_dir(path))
    app.extensions["slurm_jwt_bridge_device_store"] = store
    app.register_blueprint(bp)


def normalize_user_code(raw: str) -> str | None:
    """Upper case, separators dropped; None unless exactly the code's alphabet and length."""
    code = "".join(c for c in raw.upper() if c not in "- \t")
    if len(code) != USER_CODE_LENGTH or any(c not in USER_CODE_ALPHABET for c in code):
        return None
    return code


def shown(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


def _device_key(device_code: str) -> str:
    return "dc:" + hashlib.sha256(device_code.encode()).hexdigest()


def _origin() -> Request:
    return Request(door="device", remote_addr=request.remote_addr)


def _audit(outcome: str, **fields: Any) -> None:
    """A decision of the device grant that is not a refusal (issued, approved, denied)."""
    _bridge().pipeline.audit.record(
        "device", outcome, reason=None, door="device", remote_addr=request.remote_addr, **fields
    )


def _refuse(exc: BridgeError, **fields: Any) -> BridgeError:
    """A refusal of the device grant, through the pipeline's one refusal path (one audit line,
    counted in tokens_refused_total by ``exc.metric``); returns ``exc`` for the caller to
    raise or to answer with a page."""
    with contextlib.suppress(BridgeError):
        _bridge().pipeline.refuse_input("device", _origin(), exc, **fields)
    return exc


def _refuse_page(reason: str, metric: str, **fields: Any) -> None:
    """A refusal the device page answers with its own page."""
    _refuse(BridgeError("access_denied", reason, 400, metric=metric), **fields)


def _printable(value: str) -> str:
    return "".join(c for c in value if c.isprintable())[:CLIENT_NAME_MAX]


# ---------------------------------------------------------------- the terminal's side


def device_authorization() -> Response:
    """``POST /oauth/device_authorization`` (routed by the token door)."""
    cfg = _bridge().settings.browser
    if request.mimetype != "application/x-www-form-urlencoded":
        raise _refuse(
            invalid_request(
                "send the request form-encoded (application/x-www-form-urlencoded)",
                "bad_content_type",
            )
        )
    client = _printable(request.form.get("client_id", "") or "slurm-jwt-bridge login")
    now = int(time.time())
    device_code = secrets.token_urlsafe(32)
    record = {
        "status": "pending",
        "created": now,
        "expires": now + cfg.device_code_lifetime,
        "addr": request.remote_addr,
        "client": client,
        "interval": cfg.device_poll_interval,
        "last_poll": now,
    }
    for _ in range(5):  # a clash of two pending user codes is rare; pick again
        user_code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
        key = _device_key(device_code)
        if _store().put("uc:" + user_code, {"device": key}, cfg.device_code_lifetime):
            break
    else:
        raise _refuse(BridgeError("temporarily_unavailable", "no free user code; try again", 503))
    record["user_code"] = user_code
    _store().put(key, record, cfg.device_code_lifetime)
    _audit("issued", user_code=shown(user_code), client=client)
    page = own_url("device.page")
    resp = jsonify(
        device_code=device_code,
        user_code=shown(user_code),
        verification_uri=page,
        verification_uri_complete=f"{page}?code={shown(user_code)}",
        expires_in=cfg.device_code_lifetime,
        interval=cfg.device_poll_interval,
    )
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _poll(record: dict[str, Any] | None) -> tuple[dict[str, Any] | None, Any]:
    now = int(time.time())
    if record is None:
        return None, invalid_grant("unknown or expired device_code", "device_unknown")
    if record["expires"] <= now:
        return None, BridgeError("expired_token", "the device code expired; log in again", 400)
    status = record["status"]
    if status == "denied":
        return None, BridgeError(
            "access_denied", "the login was denied in the browser", 400, metric="device_denied"
        )
    if status == "used":
        return None, invalid_grant("this device code was already used", "device_reused")
    if status == "approved":
        return {**record, "status": "used", "used": now}, record
    if now - int(record["last_poll"]) < int(record["interval"]):
        interval = int(record["interval"]) + SLOW_DOWN_STEP
        exc = BridgeError("slow_down", f"polling too fast; wait {interval} s between requests", 400)
        return {**record, "interval": interval, "last_poll": now}, exc
    return {**record, "last_poll": now}, BridgeError(
        "authorization_pending", "waiting for the person to allow this login", 400
    )


def device_token(form: dict[str, str], lifetime: int | None) -> Response:
    """``POST /oauth/token`` with the device_code grant (called by the token door)."""
    from .api import token_answer

    device_code = form.get("device_code", "")
    if not device_code or len(device_code) > 128:
        raise _refuse(invalid_request("device_code is missing", "device_code_missing"))
    outcome = _store().update(_device_key(device_code), _poll)
    if isinstance(outcome, BridgeError):
        if outcome.error != "authorization_pending":
            raise _refuse(outcome, error=outcome.error)
        raise outcome
    from .browser import grant_from_dict, session_revoked

    if session_revoked(outcome.get("session")):
        # The person who allowed the code has logged out since: the code dies with the login.
        raise _refuse(
            BridgeError(
                "access_denied",
                "the login that allowed this code has ended",
                400,
                metric="device_login_ended",
            )
        )
    grant = grant_from_dict(outcome["grant"])
    result = _bridge().pipeline.remint(grant, lifetime, None, _origin(), "device")
    return token_answer(result)


# ---------------------------------------------------------------- the person's side


def _fail_attempt(reason: str) -> Response:
    """A wrong or unknown user code: counted per session and per address."""
    from .browser import error_page

    cfg = _bridge().settings.browser
    session["device_fails"] = int(session.get("device_fails", 0)) + 1
    _store().incr(f"fail:{request.remote_addr}", cfg.device_code_lifetime)
    _refuse_page(reason, "device_bad_code")
    return error_page("Code not accepted", reason, 400)


def _locked_out() -> bool:
    cfg = _bridge().settings.browser
    if int(session.get("device_fails", 0)) >= cfg.device_max_attempts:
        return True
    return _store().count(f"fail:{request.remote_addr}") >= cfg.device_max_attempts_per_address


def _lookup(raw: str) -> tuple[str, dict[str, Any]] | Response:
    """The pending record of a typed code, or the page that says why not."""
    from .browser import error_page

    if _locked_out():
        _refuse_page("too many wrong codes", "device_locked_out")
        return error_page(
            "Too many wrong codes",
            "Too many wrong codes were entered; start the login in the terminal again later.",
            429,
        )
    code = normalize_user_code(raw)
    if code is None:
        return _fail_attempt("That is not a code of this service (8 letters, like BCDF-GHJK).")
    ref = _store().get("uc:" + code)
    record = _store().get(ref["device"]) if ref else None
    if ref is None or record is None or record["expires"] <= time.time():
        return _fail_attempt("No login is waiting for that code (wrong or expired code).")
    if record["status"] != "pending":
        _refuse_page("code already answered", "device_code_answered", user_code=shown(code))
        return error_page(
            "Code already used",
            "This code was already allowed or denied; start the login in the terminal again.",
            409,
        )
    return ref["device"], record


@bp.get("/device")
def page() -> ResponseReturnValue:
    from .browser import _csrf, _page, session_grant

    raw = request.args.get("code", "")[:32]
    grant = session_grant(usable=True)
    if grant is None:
        session["device_next"] = raw if normalize_user_code(raw) else ""
        return _page("device_login.html")
    if not raw:
        return _page("device_enter.html", user=grant.user)
    found = _lookup(raw)
    if not isinstance(found, tuple):
        return found
    _, record = found
    return _page(
        "device_confirm.html",
        user=grant.user,
        code=shown(record["user_code"]),
        client=record["client"],
        addr=record["addr"],
        when=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record["created"])),
        csrf=_csrf(),
    )


@bp.post("/device")
def answer() -> ResponseReturnValue:
    from .browser import _check_csrf, _page, error_page, grant_to_dict, session_grant

    grant = session_grant(usable=True)
    if grant is None:
        return redirect(url_for("device.page"))
    _check_csrf()
    decision = request.form.get("decision", "")
    if decision not in ("allow", "deny"):
        _refuse_page(
            "the device page's answer was neither allow nor deny",
            "device_bad_answer",
            user=grant.user,
        )
        return error_page("No answer", "Choose Allow or Deny.", 400)
    found = _lookup(request.form.get("code", "")[:32])
    if not isinstance(found, tuple):
        return found
    key, record = found
    code = shown(record["user_code"])

    def decide(current: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
        if current is None or current["status"] != "pending" or current["expires"] <= time.time():
            return None, False
        if decision == "deny":
            return {**current, "status": "denied", "by": grant.user}, True
        return {
            **current,
            "status": "approved",
            "by": grant.user,
            "grant": grant_to_dict(grant),
            "session": session.sid,  # type: ignore[attr-defined]
        }, True

    if not _store().update(key, decide):
        _refuse_page(
            "code already answered or expired",
            "device_code_answered",
            user_code=code,
            user=grant.user,
        )
        return error_page(
            "Code already used",
            "This code was already allowed, denied or has expired; start again in the terminal.",
            409,
        )
    _audit("approved" if decision == "allow" else "denied", user_code=code, user=grant.user)
    return _page("device_done.html", allowed=decision == "allow", code=code, user=grant.user)
