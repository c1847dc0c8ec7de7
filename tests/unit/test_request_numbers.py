"""Numbers read from requests, and upstream tokens that expire too soon to be worth a Slurm token.

Every door that reads a lifetime (token API form and JSON, the browser form, ``login``) takes
ASCII digits only, of bounded length; a refusal is a 400 with a reason and an audit line, never
a 500. A Slurm token is never minted with less than the minimum useful lifetime left.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.cli import main
from slurm_jwt_bridge.policy import MIN_LIFETIME
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.proxy_settings import proxy_settings_data
from tests.helpers.sessions import plant_session
from tests.helpers.stub_http import StubServer

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"

BAD_NUMBERS = [
    "\u00b2",  # superscript two: str.isdigit() accepts it, int() does not
    "\u0663\u0660\u0660",  # Arabic-Indic 300: int() accepts it
    "\uff13\uff10\uff10",  # fullwidth 300
    "+300",
    " 300",
    "300.0",
    "-1",
    "0x12c",
    "3" * 40,
]


def _app(keys_dir: Path, tmp_path: Path, idp: Any, **extra: Any) -> Any:
    data = proxy_settings_data(keys_dir, tmp_path, idp, None)
    data.update(extra)
    return create_app(parse_settings(data))


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _token(idp: Any, ttl: int = 3600, name: str = "alice") -> str:
    claims = idp.oidc_claims(sub=f"s-{name}", aud="bridge", preferred_username=name)
    return idp.mint({**claims, "exp": int(time.time()) + ttl})


@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_token_exchange_lifetime_is_ascii_digits_and_audited(
    keys_dir: Path, tmp_path: Path, idp: Any, value: str
) -> None:
    client = _app(keys_dir, tmp_path, idp).test_client()
    form = {
        "grant_type": TE,
        "subject_token": _token(idp),
        "subject_token_type": AT,
        "requested_lifetime": value,
    }
    r = client.post("/oauth/token", data=form)
    assert r.status_code == 400, (value, r.status_code, r.data[:200])
    assert r.json["error"] == "invalid_request"
    assert "requested_lifetime" in r.json["error_description"]
    assert "access_token" not in r.json
    lines = _audit(tmp_path)
    assert [a["outcome"] for a in lines] == ["refused"], lines
    assert "requested_lifetime" in lines[0]["reason"]


@pytest.mark.parametrize("value", ["300", 10**30, 1.5, True, [300], {"s": 1}])
def test_api_json_lifetime_refusals_are_audited(
    keys_dir: Path, tmp_path: Path, idp: Any, value: Any
) -> None:
    client = _app(keys_dir, tmp_path, idp).test_client()
    r = client.post(
        "/api/v1/token",
        headers={"Authorization": f"Bearer {_token(idp)}"},
        json={"lifetime": value},
    )
    assert r.status_code == 400, (value, r.status_code, r.data[:200])
    assert "lifetime" in r.json["error_description"]
    assert [a["outcome"] for a in _audit(tmp_path)] == ["refused"]


def test_a_plain_lifetime_still_works_everywhere(keys_dir: Path, tmp_path: Path, idp: Any) -> None:
    client = _app(keys_dir, tmp_path, idp).test_client()
    form = {"grant_type": TE, "subject_token": _token(idp), "subject_token_type": AT}
    r = client.post("/oauth/token", data={**form, "requested_lifetime": "0300"})
    assert r.status_code == 200 and r.json["expires_in"] == 300
    r = client.post(
        "/api/v1/token", headers={"Authorization": f"Bearer {_token(idp)}"}, json={"lifetime": 120}
    )
    assert r.status_code == 200 and r.json["expires_in"] == 120


def _browser_client(keys_dir: Path, tmp_path: Path, idp: Any) -> Any:
    """A client holding a browser session for alice, as the login callback leaves it."""
    data = proxy_settings_data(keys_dir, tmp_path, idp, None)
    data["server"] = {"public_url": "http://localhost"}
    data["browser"] = {"enabled": True, "secure_cookies": False}
    data["issuers"][0].update(client_id="bridge", token_use=["access", "id"])
    client = create_app(parse_settings(data, tmp_path)).test_client()
    grant = {
        "user": "alice",
        "issuer": "oidc",
        "subject": "s-alice",
        "client": "web",
        "kind": "user",
        "max_lifetime": None,
        "algs": ["RS256", "HS256"],
        "not_after": int(time.time()) + 600,
    }
    plant_session(client, grant=grant, ends=int(time.time()) + 3600, csrf="c" * 32)
    return client


@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_browser_form_lifetime_is_ascii_digits_and_audited(
    keys_dir: Path, tmp_path: Path, idp: Any, value: str
) -> None:
    client = _browser_client(keys_dir, tmp_path, idp)
    r = client.post("/token", data={"lifetime": value, "csrf": "c" * 32})
    assert r.status_code == 400, (value, r.status_code)
    assert b"lifetime" in r.data
    lines = _audit(tmp_path)
    assert [a["outcome"] for a in lines] == ["refused"], lines
    r = client.post("/token", data={"lifetime": "120", "csrf": "c" * 32})
    assert r.status_code == 302
    assert [a["outcome"] for a in _audit(tmp_path)] == ["refused", "minted"]


@pytest.mark.parametrize("value", ["\u0663\u0660\u0660", "\u00b2", "+300", "3" * 40])
def test_login_lifetime_option_takes_ascii_digits_only(value: str) -> None:
    r = CliRunner().invoke(main, ["login", "--url", "http://127.0.0.1:9", "--lifetime", value])
    assert r.exit_code == 2, r.output
    assert "--lifetime" in r.output and "ASCII digits" in r.output


# ---------------------------------------------------------------- minimum useful lifetime


@pytest.mark.parametrize("left", [-5, 0, 30, MIN_LIFETIME - 1])
def test_no_token_when_the_upstream_token_expires_too_soon(
    keys_dir: Path, tmp_path: Path, idp: Any, left: int
) -> None:
    """Inside the issuer's clock-skew leeway (60 s) a token past its exp still verifies."""
    client = _app(keys_dir, tmp_path, idp).test_client()
    form = {"grant_type": TE, "subject_token": _token(idp, ttl=left), "subject_token_type": AT}
    r = client.post("/oauth/token", data=form)
    assert r.status_code in (400, 401), (left, r.json)
    assert "access_token" not in r.json
    # past its exp (inside the leeway) it is "expired"; before it, "expires too soon"
    assert "expire" in r.json["error_description"]
    lines = _audit(tmp_path)
    assert [a["outcome"] for a in lines] == ["refused"]
    assert "expire" in lines[0]["reason"]


def test_a_token_with_enough_time_left_is_capped_to_it(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    client = _app(keys_dir, tmp_path, idp).test_client()
    form = {"grant_type": TE, "subject_token": _token(idp, ttl=150), "subject_token_type": AT}
    r = client.post("/oauth/token", data=form)
    assert r.status_code == 200
    assert MIN_LIFETIME <= r.json["expires_in"] <= 150


def test_the_proxy_refuses_an_upstream_token_about_to_expire(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    upstream = StubServer()
    try:
        client = _app(
            keys_dir, tmp_path, idp, proxy={"upstream": upstream.url, "read_timeout": 2.0}
        ).test_client()
        token = _token(idp, ttl=30)
        for _ in range(3):
            r = client.get("/slurm/v0.0.44/jobs", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, r.data[:200]
            assert "expires too soon" in r.json["error_description"]
        assert upstream.seen == []
    finally:
        upstream.close()
