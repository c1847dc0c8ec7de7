"""Terminal login: the OAuth 2.0 device authorization grant (RFC 8628) at the identity provider,
then a token exchange at the bridge. Used by ``slurm-jwt-bridge login``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


class LoginError(Exception):
    """Terminal login failed; one line saying why."""


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
    verify: bool | str = True,
) -> dict[str, Any]:
    """Run the device grant and return the bridge's token answer (``access_token`` etc.)."""
    base = bridge_url.rstrip("/")
    with httpx.Client(timeout=timeout, verify=verify) as http:
        try:
            cfg_resp = http.get(f"{base}/api/v1/cli-login")
        except httpx.HTTPError as exc:
            raise LoginError(f"cannot reach {base}: {type(exc).__name__}") from None
        cfg = _json(cfg_resp, "bridge login configuration")
        if cfg_resp.status_code != 200:
            raise LoginError(cfg.get("error_description") or f"HTTP {cfg_resp.status_code}")
        form = {"client_id": cfg["client_id"], "scope": cfg["scope"]}
        if cfg.get("resource"):
            form["resource"] = cfg["resource"]
        try:
            dev_resp = http.post(cfg["device_authorization_endpoint"], data=form)
        except httpx.HTTPError as exc:
            raise LoginError(f"identity provider unreachable: {type(exc).__name__}") from None
        dev = _json(dev_resp, "device authorization")
        if dev_resp.status_code != 200:
            reason = f"{dev.get('error')}: {dev.get('error_description', '')}"
            raise LoginError(f"device authorization refused: {reason}")
        where = dev.get("verification_uri_complete") or dev["verification_uri"]
        prompt(f"To log in, open {where}")
        prompt(f"and check that the code shown is: {dev['user_code']}")
        wait = float(interval or dev.get("interval") or 5)
        deadline = time.monotonic() + float(dev.get("expires_in") or 600)
        upstream = None
        while time.monotonic() < deadline:
            time.sleep(wait)
            poll = {"grant_type": DEVICE_GRANT, "device_code": dev["device_code"]}
            poll["client_id"] = cfg["client_id"]
            tok_resp = http.post(cfg["token_endpoint"], data=poll)
            tok = _json(tok_resp, "token endpoint")
            if tok_resp.status_code == 200:
                upstream = tok
                break
            error = tok.get("error")
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                wait += 5
                continue
            raise LoginError(f"login not completed: {error}: {tok.get('error_description', '')}")
        if upstream is None:
            raise LoginError("login not completed before the code expired")
        exchange = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": upstream["access_token"],
            "subject_token_type": ACCESS_TOKEN_TYPE,
        }
        if lifetime:
            exchange["requested_lifetime"] = str(lifetime)
        ex_resp = http.post(cfg["token_exchange_endpoint"], data=exchange)
        answer = _json(ex_resp, "token exchange")
        if ex_resp.status_code != 200:
            raise LoginError(
                f"the bridge refused: {answer.get('error')}: {answer.get('error_description', '')}"
            )
        return answer
