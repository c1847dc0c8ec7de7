"""Terminal login: the OAuth 2.0 device authorization grant (RFC 8628) at the identity provider,
then a token exchange at the bridge. Used by ``slurm-jwt-bridge login``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

import httpx

from .login_exec import COMPACT_JWT
from .outbound import TrustError, http_client
from .untrusted import insecure_url, origin, printable

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


class LoginError(Exception):
    """Terminal login failed; one line saying why."""


def _secure(url: Any, what: str) -> str:
    """``url`` if it is https (or http to this machine); the user's tokens travel there."""
    if not isinstance(url, str) or not url.lower().startswith(("https://", "http://")):
        raise LoginError(f"{what} must be an https:// URL, got {printable(url, 100)}")
    if insecure_url(url):
        raise LoginError(
            f"{what} must be https:// (plain http only to this machine), got {printable(url, 100)}"
        )
    return url


def _refusal(what: str, answer: dict[str, Any]) -> str:
    error = printable(answer.get("error"), 64)
    return f"{what}: {error}: {printable(answer.get('error_description', ''))}"


def _json(resp: httpx.Response, what: str) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        raise LoginError(f"{what}: HTTP {resp.status_code}, not JSON") from None
    if not isinstance(data, dict):
        raise LoginError(f"{what}: unexpected answer")
    return data


def device_login(
    bridge_url: str,
    *,
    lifetime: int | None = None,
    interval: float | None = None,
    prompt: Callable[[str], None] = print,
    timeout: float = 10.0,
    ca_file: str | None = None,
) -> dict[str, Any]:
    """Run the device grant and return the bridge's token answer (``access_token`` etc.).

    HTTPS to the bridge and to the identity provider trusts the system store, or ``ca_file``
    alone when given."""
    base = _secure(bridge_url, "--url").rstrip("/")
    try:
        client = http_client(ca_file, timeout=timeout)
    except TrustError as exc:
        raise LoginError(f"--ca-file {exc}") from None
    with client as http:
        try:
            cfg_resp = http.get(f"{base}/api/v1/cli-login")
        except httpx.HTTPError as exc:
            raise LoginError(f"cannot reach {base}: {type(exc).__name__}") from None
        cfg = _json(cfg_resp, "bridge login configuration")
        if cfg_resp.status_code != 200:
            raise LoginError(
                printable(cfg.get("error_description") or f"HTTP {cfg_resp.status_code}")
            )
        if cfg.get("grant") == "bridge":
            return _bridge_grant(http, base, cfg, lifetime, interval, prompt)
        try:
            device_endpoint = _secure(
                cfg["device_authorization_endpoint"], "device_authorization_endpoint"
            )
            token_endpoint = _secure(cfg["token_endpoint"], "token_endpoint")
            # The identity provider's token goes to the bridge named by --url and nowhere else.
            exchange_endpoint = urljoin(base + "/", cfg["token_exchange_endpoint"])
            if origin(exchange_endpoint) != origin(base):
                raise LoginError(
                    "the bridge names a token_exchange_endpoint on another origin "
                    f"({printable(exchange_endpoint, 100)}); refusing to send it your token"
                )
        except (KeyError, TypeError, ValueError):
            raise LoginError("bridge login configuration: unexpected answer") from None
        form = {"client_id": cfg["client_id"], "scope": cfg["scope"]}
        if cfg.get("resource"):
            form["resource"] = cfg["resource"]
        try:
            dev_resp = http.post(device_endpoint, data=form)
        except httpx.HTTPError as exc:
            raise LoginError(f"identity provider unreachable: {type(exc).__name__}") from None
        dev = _json(dev_resp, "device authorization")
        if dev_resp.status_code != 200:
            raise LoginError(_refusal("device authorization refused", dev))
        upstream = _wait_for_approval(http, cfg["client_id"], token_endpoint, dev, interval, prompt)
        exchange = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": upstream["access_token"],
            "subject_token_type": ACCESS_TOKEN_TYPE,
        }
        if lifetime:
            exchange["requested_lifetime"] = str(lifetime)
        ex_resp = http.post(exchange_endpoint, data=exchange)
        answer = _json(ex_resp, "token exchange")
        if ex_resp.status_code != 200:
            raise LoginError(_refusal("the bridge refused", answer))
        return _slurm_token_answer(answer)


def _slurm_token_answer(answer: dict[str, Any]) -> dict[str, Any]:
    """The bridge's answer, once its access_token is a Slurm token (a compact JWT)."""
    token = answer.get("access_token")
    if not isinstance(token, str) or not COMPACT_JWT.fullmatch(token):
        raise LoginError(
            "the bridge answered with something that is not a Slurm token (a compact JWT)"
        )
    return answer


def _bridge_grant(
    http: httpx.Client,
    base: str,
    cfg: dict[str, Any],
    lifetime: int | None,
    interval: float | None,
    prompt: Callable[[str], None],
) -> dict[str, Any]:
    """The bridge's own device grant (its identity provider offers none): after Allow on the
    bridge's /device page, the token endpoint answers with the Slurm token itself. Every
    request goes to the origin of --url."""
    try:
        device_endpoint = urljoin(base + "/", cfg["device_authorization_endpoint"])
        token_endpoint = urljoin(base + "/", cfg["token_endpoint"])
        client_id = str(cfg["client_id"])
    except (KeyError, TypeError, ValueError):
        raise LoginError("bridge login configuration: unexpected answer") from None
    for what, url in (
        ("device_authorization_endpoint", device_endpoint),
        ("token_endpoint", token_endpoint),
    ):
        if origin(url) != origin(base):
            raise LoginError(
                f"the bridge names a {what} on another origin ({printable(url, 100)}); "
                "refusing to send there"
            )
    try:
        dev_resp = http.post(device_endpoint, data={"client_id": client_id})
    except httpx.HTTPError as exc:
        raise LoginError(f"cannot reach {base}: {type(exc).__name__}") from None
    dev = _json(dev_resp, "device authorization")
    if dev_resp.status_code != 200:
        raise LoginError(_refusal("device authorization refused", dev))
    extra = {"requested_lifetime": str(lifetime)} if lifetime else {}
    answer = _wait_for_approval(
        http, client_id, token_endpoint, dev, interval, prompt, extra, at_bridge=True
    )
    return _slurm_token_answer(answer)


def _wait_for_approval(
    http: httpx.Client,
    client_id: str,
    token_endpoint: str,
    dev: dict[str, Any],
    interval: float | None,
    prompt: Callable[[str], None],
    extra: dict[str, str] | None = None,
    at_bridge: bool = False,
) -> dict[str, Any]:
    """Show where to go and the code, then poll the token endpoint (RFC 8628 section 3.5).
    ``at_bridge``: the bridge's own device page answers (its refusals are its own words)."""
    where = dev.get("verification_uri_complete") or dev.get("verification_uri")
    if not where or not dev.get("user_code") or not dev.get("device_code"):
        raise LoginError("device authorization: unexpected answer")
    prompt(f"To log in, open {printable(where, 300)}")
    prompt(f"and check that the code shown is: {printable(dev['user_code'], 64)}")
    wait = float(interval or dev.get("interval") or 5)
    deadline = time.monotonic() + float(dev.get("expires_in") or 600)
    while time.monotonic() < deadline:
        time.sleep(wait)
        poll = {"grant_type": DEVICE_GRANT, "device_code": dev["device_code"]}
        poll["client_id"] = client_id
        poll.update(extra or {})
        tok_resp = http.post(token_endpoint, data=poll)
        tok = _json(tok_resp, "token endpoint")
        if tok_resp.status_code == 200 and isinstance(tok.get("access_token"), str):
            return tok
        error = tok.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            wait += 5
            continue
        if at_bridge and error == "access_denied":
            raise LoginError("login denied: the code was denied in the browser")
        if at_bridge and error == "expired_token":
            raise LoginError("login not completed before the code expired; run login again")
        raise LoginError(_refusal("login not completed", tok))
    raise LoginError("login not completed before the code expired")
