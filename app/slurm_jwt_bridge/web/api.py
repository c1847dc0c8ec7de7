"""The token API door: RFC 8693 ``POST /oauth/token`` and ``POST /api/v1/token``."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..errors import BridgeError, invalid_request, malformed_body
from ..pipeline import Exchange, Pipeline, Request
from ..policy import parse_seconds
from . import current_bridge as _bridge
from .device import GRANT_DEVICE_CODE, device_authorization, device_login_enabled, device_token
from .urls import own_url

bp = Blueprint("api", __name__)

GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TT_ACCESS = "urn:ietf:params:oauth:token-type:access_token"
TT_ID = "urn:ietf:params:oauth:token-type:id_token"
TT_JWT = "urn:ietf:params:oauth:token-type:jwt"
SUBJECT_TOKEN_TYPES = {TT_ACCESS: "access", TT_ID: "id", TT_JWT: None}
REQUESTED_TOKEN_TYPES = (TT_JWT, TT_ACCESS)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def refusal_headers(exc: BridgeError) -> list[tuple[str, str]]:
    """The headers of a token endpoint's refusal (this door's view and the fast path in front
    of Flask, web/token_door.py)."""
    headers = list(NO_STORE.items())
    if exc.status == 401:
        headers.append(("WWW-Authenticate", exc.challenge()))
    if exc.retry_after:
        headers.append(("Retry-After", str(exc.retry_after)))
    return headers


def oauth_error(exc: BridgeError) -> Response:
    resp = jsonify(exc.oauth_body())
    resp.status_code = exc.status
    resp.headers.extend(refusal_headers(exc))
    return resp


bp.register_error_handler(BridgeError, oauth_error)


def token_body(result: Exchange) -> dict[str, Any]:
    """The RFC 8693 answer to a token request that got a token."""
    t = result.token
    return {
        "access_token": t.token,
        "issued_token_type": TT_JWT,
        "token_type": "Bearer",
        "expires_in": t.lifetime,
        "slurm_user": t.user,
    }


def token_answer(result: Exchange) -> Response:
    resp = jsonify(token_body(result))
    resp.headers.update(NO_STORE)
    return resp


def _json_options() -> tuple[int | None, str | None]:
    """``{"lifetime": int, "alg": str}``, both optional, typed strictly; which algorithms a
    token may have is the pipeline's decision."""
    if not request.content_length:
        return None, None
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # deeply nested arrays: not a JSON object anyway
        data = None
    if not isinstance(data, dict):
        raise invalid_request("the body must be a JSON object")
    unknown = set(data) - {"lifetime", "alg"}
    if unknown:
        raise invalid_request(f"unknown field {sorted(unknown)[0][:32]!r}")
    lifetime = data.get("lifetime")
    if "lifetime" in data and (isinstance(lifetime, bool) or not isinstance(lifetime, int)):
        raise invalid_request("lifetime must be an integer number of seconds", "bad_number")
    alg = data.get("alg")
    if "alg" in data and not isinstance(alg, str):
        raise invalid_request("alg must be RS256 or HS256")
    return lifetime, alg


def parse_form(body: bytes) -> dict[str, str]:
    """A form-encoded body, first value per name (as ``request.form.to_dict()``), decoded
    exactly as werkzeug's form parser does (UTF-8, a body that is not UTF-8 reads as an empty
    form) but without its parser machinery: the largest single cost of a token request."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return {}
    form: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True, errors="werkzeug.url_quote"):
        form.setdefault(name, value)
    return form


def _form() -> dict[str, str]:
    """The request's form (``parse_form``), read through ``request.get_data`` so that
    MAX_CONTENT_LENGTH still answers 413 (and a body that stopped 408); a body the server
    could not read as framed is a 400."""
    try:
        body = request.get_data(cache=False)
    except HTTPException:
        raise
    except Exception as exc:
        raise malformed_body(exc) from None
    return parse_form(body)


def _origin(door: str) -> Request:
    return Request(door=door, remote_addr=request.remote_addr)


@bp.post("/oauth/token")
def oauth_token() -> Response:
    pipeline = _bridge().pipeline
    origin = _origin("token-exchange")
    with pipeline.parsing("exchange", origin):
        if request.mimetype != "application/x-www-form-urlencoded":
            raise invalid_request(
                "send the request form-encoded (application/x-www-form-urlencoded)",
                "bad_content_type",
            )
        form = _form()
    grant = form.get("grant_type", "")
    if grant == GRANT_DEVICE_CODE and device_login_enabled(current_app):
        with pipeline.parsing("device", _origin("device")):
            lifetime = parse_seconds(form.get("requested_lifetime"), "requested_lifetime")
        return device_token(form, lifetime)
    return token_answer(exchange_form(pipeline, form, origin))


def exchange_form(pipeline: Pipeline, form: dict[str, str], origin: Request) -> Exchange:
    """The token exchange a parsed ``POST /oauth/token`` form asks for (this view and the
    fast path in front of Flask, web/token_door.py, both call it)."""
    with pipeline.parsing("exchange", origin):
        subject_token, stt, actor_token = _exchange_form(form, form.get("grant_type", ""))
        lifetime = parse_seconds(form.get("requested_lifetime"), "requested_lifetime")
    return pipeline.exchange(
        subject_token or None,
        expected_use=SUBJECT_TOKEN_TYPES[stt] if stt else None,
        lifetime=lifetime,
        alg=form.get("alg") or None,
        request=origin,
        actor_token=actor_token,
        requested_subject=form.get("requested_subject") or None,
    )


def _exchange_form(form: dict[str, str], grant: str) -> tuple[str, str, str | None]:
    """The token-exchange form's subject_token, subject_token_type and actor_token, or the
    BridgeError naming what is wrong with it."""
    if grant != GRANT_TOKEN_EXCHANGE:
        raise BridgeError(
            "unsupported_grant_type", f"grant_type must be {GRANT_TOKEN_EXCHANGE}", 400
        )
    subject_token = form.get("subject_token", "")
    if not subject_token and not form.get("requested_subject"):
        raise invalid_request("subject_token is missing", "missing_subject_token")
    stt = form.get("subject_token_type", "")
    if (subject_token or stt) and stt not in SUBJECT_TOKEN_TYPES:
        raise invalid_request(
            "subject_token_type must be one of " + ", ".join(SUBJECT_TOKEN_TYPES),
            "bad_token_type",
        )
    rtt = form.get("requested_token_type")
    if rtt and rtt not in REQUESTED_TOKEN_TYPES:
        raise invalid_request(f"requested_token_type must be {TT_JWT}", "bad_token_type")
    actor_token = form.get("actor_token") or None
    if actor_token and form.get("actor_token_type") not in (TT_ACCESS, TT_JWT):
        raise invalid_request(f"actor_token_type must be {TT_ACCESS} or {TT_JWT}", "bad_token_type")
    return subject_token, stt, actor_token


@bp.post("/api/v1/token")
def api_token() -> Response:
    pipeline = _bridge().pipeline
    origin = _origin("api")
    auth = request.headers.get("Authorization", "")
    scheme, _, credentials = auth.partition(" ")
    with pipeline.parsing("exchange", origin):
        if scheme.lower() != "bearer" or not credentials.strip():
            raise BridgeError(
                "invalid_request",
                "send the identity provider's token as 'Authorization: Bearer <token>'",
                401,
                metric="no_bearer",
            )
        lifetime, alg = _json_options()
    result = pipeline.exchange(credentials.strip(), lifetime=lifetime, alg=alg, request=origin)
    return token_answer(result)


@bp.post("/oauth/device_authorization")
def oauth_device_authorization() -> Response:
    """RFC 8628 for the bridge's own device page ([browser] device_login)."""
    if not device_login_enabled(current_app):
        raise BridgeError(
            "invalid_request",
            "the device page is off (no login issuer, or [browser] device_login = false)",
            404,
        )
    return device_authorization()


@bp.get("/api/v1/cli-login")
def cli_login() -> Response:
    """What ``slurm-jwt-bridge login`` needs: the device grant at the IdP ([cli_login] names an
    issuer that offers one; ``"grant": "idp"``) or else the bridge's own (``"grant": "bridge"``)."""
    bridge = _bridge()
    cfg = bridge.settings.cli_login
    iss = bridge.settings.issuer_named(cfg.issuer) if cfg.issuer else None
    device = None
    if iss is not None:
        try:
            meta = bridge.discovery(iss)
        except BridgeError:
            if not device_login_enabled(current_app):
                raise
            meta = {}
        device = meta.get("device_authorization_endpoint")
    if not device or iss is None:
        if device_login_enabled(current_app):
            resp = jsonify(
                grant="bridge",
                client_id="slurm-jwt-bridge-cli",
                device_authorization_endpoint=own_url(
                    "api.oauth_device_authorization", relative=True
                ),
                token_endpoint=own_url("api.oauth_token", relative=True),
            )
            resp.headers.update(NO_STORE)
            return resp
        if iss is None:
            raise BridgeError(
                "invalid_request", "terminal login is not configured ([cli_login])", 404
            )
        raise BridgeError(
            "invalid_request",
            f"issuer {iss.name!r} does not offer the device authorization grant",
            404,
        )
    resp = jsonify(
        grant="idp",
        issuer=iss.issuer,
        client_id=cfg.client_id,
        scope=" ".join(cfg.scopes),
        resource=cfg.resource or None,
        device_authorization_endpoint=device,
        token_endpoint=meta["token_endpoint"],
        token_exchange_endpoint=own_url("api.oauth_token", relative=True),
    )
    resp.headers.update(NO_STORE)
    return resp
