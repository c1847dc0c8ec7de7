"""``GET /proxy/auth``: the nginx ``auth_request`` target (``[proxy] auth_request = true``).

In-process here (Flask test client, a local HTTP issuer); nginx in front of a real slurmrestd
runs in tests/integration/test_nginx_auth_request.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import KeyRing
from slurm_jwt_bridge.minting import mint_slurm_token
from slurm_jwt_bridge.settings import SettingsError, parse_settings
from tests.helpers.proxy_settings import proxy_settings_data


def settings_data(keys_dir: Path, tmp_path: Path, idp: Any, **proxy: Any) -> dict[str, Any]:
    return proxy_settings_data(keys_dir, tmp_path, idp, {"auth_request": True, **proxy})


def client_for(keys_dir: Path, tmp_path: Path, idp: Any, **proxy: Any) -> Any:
    return create_app(parse_settings(settings_data(keys_dir, tmp_path, idp, **proxy))).test_client()


def idp_token(idp: Any, name: str = "alice", ttl: int = 3600) -> str:
    claims = idp.oidc_claims(sub=f"s-{name}", aud="bridge", preferred_username=name)
    return idp.mint({**claims, "exp": int(time.time()) + ttl})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_answers_the_user_and_a_slurm_token_nginx_may_cache(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    client = client_for(keys_dir, tmp_path, idp)
    r = client.get("/proxy/auth", headers=bearer(idp_token(idp)))
    assert r.status_code == 200, r.text
    assert r.headers["X-Slurm-User-Name"] == "alice"
    token = r.headers["X-Slurm-User-Token"]
    ring = KeyRing.load(keys_dir)
    assert jwt.get_unverified_header(token)["kid"] == ring.active.kid
    claims = jwt.decode(token, ring.active.private_key.public_key(), algorithms=["RS256"])
    assert claims["sun"] == "alice"
    assert r.headers["X-Accel-Expires"] == "60"  # the default auth_request_max_age
    names = [k.lower() for k, _ in r.headers]
    assert names.index("x-accel-expires") < names.index("cache-control")
    assert r.headers["Cache-Control"] == "no-store"
    assert r.data == b""


def test_every_method_is_answered_and_one_token_serves_steady_traffic(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    """nginx's subrequest may carry the client's method; the Slurm token is reused."""
    client = client_for(keys_dir, tmp_path, idp)
    token = idp_token(idp)
    seen = set()
    for method in ("GET", "POST", "PUT", "DELETE", "HEAD"):
        r = client.open("/proxy/auth", method=method, headers=bearer(token))
        assert r.status_code == 200, (method, r.status_code)
        seen.add(r.headers["X-Slurm-User-Token"])
    assert len(seen) == 1
    audit = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert [a["outcome"] for a in audit] == ["minted"]


def test_cache_lifetime_never_outlives_the_upstream_token(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    client = client_for(keys_dir, tmp_path, idp, auth_request_max_age=600)
    r = client.get("/proxy/auth", headers=bearer(idp_token(idp, ttl=90)))
    assert r.status_code == 200
    # the Slurm token is capped to the upstream token's 90 s ([tokens] cap_to_upstream_exp)
    # and reused until 80 % of that: nginx may keep the answer about 72 s, never 600
    assert 60 <= int(r.headers["X-Accel-Expires"]) <= 72
    r = client.get("/proxy/auth", headers=bearer(idp_token(idp, "bob", ttl=3600)))
    # the Slurm token (default 1800 s) is reused until 80 % of its life: 1440 s > 600
    assert r.headers["X-Accel-Expires"] == "600"


def test_cache_lifetime_never_outlives_the_slurm_tokens_reuse(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    client = client_for(keys_dir, tmp_path, idp, auth_request_max_age=3600, token_lifetime=300)
    r = client.get("/proxy/auth", headers=bearer(idp_token(idp)))
    assert 235 <= int(r.headers["X-Accel-Expires"]) <= 240  # 80 % of 300 s


def test_max_age_zero_tells_nginx_not_to_cache(keys_dir: Path, tmp_path: Path, idp: Any) -> None:
    client = client_for(keys_dir, tmp_path, idp, auth_request_max_age=0)
    r = client.get("/proxy/auth", headers=bearer(idp_token(idp)))
    assert r.status_code == 200 and r.headers["X-Accel-Expires"] == "0"


@pytest.mark.parametrize(
    ("headers", "error", "reason"),
    [
        ({}, "invalid_request", "Authorization: Bearer"),
        ({"Authorization": "Basic YTpi"}, "invalid_request", "Bearer"),
        ({"Authorization": "Bearer not-a-jwt"}, "invalid_grant", ""),
    ],
)
def test_refusals_are_401_with_the_reason_in_the_challenge(
    keys_dir: Path, tmp_path: Path, idp: Any, headers: dict[str, str], error: str, reason: str
) -> None:
    """nginx answers the client with its own 401 page but passes WWW-Authenticate on, so the
    reason travels there too (RFC 6750 error / error_description)."""
    client = client_for(keys_dir, tmp_path, idp)
    r = client.get("/proxy/auth", headers=headers)
    assert r.status_code == 401
    assert r.json["error"] == error and reason in r.json["error_description"]
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="slurm-jwt-bridge"')
    assert f'error="{error}"' in challenge and "error_description=" in challenge
    assert "X-Slurm-User-Token" not in r.headers and "X-Accel-Expires" not in r.headers


def test_denied_user_is_refused(keys_dir: Path, tmp_path: Path, idp: Any) -> None:
    client = client_for(keys_dir, tmp_path, idp)
    r = client.get("/proxy/auth", headers=bearer(idp_token(idp, "root")))
    assert r.status_code in (401, 403)
    assert "X-Slurm-User-Token" not in r.headers


def test_expired_idp_token_is_refused(keys_dir: Path, tmp_path: Path, idp: Any) -> None:
    client = client_for(keys_dir, tmp_path, idp)
    r = client.get("/proxy/auth", headers=bearer(idp_token(idp, ttl=-600)))
    assert r.status_code == 401 and r.json["error"] == "invalid_grant"
    assert "expired" in r.json["error_description"]
    assert "X-Slurm-User-Token" not in r.headers


def test_raw_slurm_token_refused_unless_passthrough_and_never_cached(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    raw = mint_slurm_token(KeyRing.load(keys_dir), "alice", 600).token
    r = client_for(keys_dir, tmp_path, idp).get("/proxy/auth", headers=bearer(raw))
    assert r.status_code == 401 and "raw Slurm token" in r.json["error_description"]
    passing = client_for(keys_dir, tmp_path, idp, passthrough_slurm_tokens=True)
    r = passing.get("/proxy/auth", headers=bearer(raw))
    assert r.status_code == 200
    assert r.headers["X-Slurm-User-Name"] == "alice"
    assert r.headers["X-Slurm-User-Token"] == raw
    assert r.headers["X-Accel-Expires"] == "0"


def test_challenge_values_are_quoted_safely() -> None:
    from slurm_jwt_bridge.errors import quotable as _quotable

    assert _quotable('a "b" \\ c\x00\n\u00e9') == "a 'b' ? c???"
    assert len(_quotable("x" * 1000)) == 300


def test_off_by_default_and_without_upstream_no_forwarding_routes(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    off = create_app(parse_settings(proxy_settings_data(keys_dir, tmp_path, idp, None)))
    off = off.test_client()
    assert off.get("/proxy/auth", headers=bearer(idp_token(idp))).status_code == 404
    only_auth = client_for(keys_dir, tmp_path, idp)
    assert only_auth.get("/slurm/v0.0.44/jobs", headers=bearer(idp_token(idp))).status_code == 404


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "proxy.auth_request_max_age: must be >= 0"),
        (3601, "proxy.auth_request_max_age: must be <= 3600"),
        ("60", "proxy.auth_request_max_age: must be an integer"),
    ],
)
def test_max_age_setting_is_checked(
    keys_dir: Path, tmp_path: Path, idp: Any, value: Any, message: str
) -> None:
    with pytest.raises(SettingsError, match=message.replace(".", r"\.")):
        parse_settings(settings_data(keys_dir, tmp_path, idp, auth_request_max_age=value))


def _auth_count(client: Any, status: int) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'slurm_jwt_bridge_auth_requests_total{{status="{status}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_answers_are_counted_by_status(keys_dir: Path, tmp_path: Path, idp: Any) -> None:
    client = client_for(keys_dir, tmp_path, idp)
    ok, refused = _auth_count(client, 200), _auth_count(client, 401)
    assert client.get("/proxy/auth", headers=bearer(idp_token(idp))).status_code == 200
    assert client.get("/proxy/auth").status_code == 401
    assert client.get("/proxy/auth").status_code == 401
    assert (_auth_count(client, 200), _auth_count(client, 401)) == (ok + 1, refused + 2)


def _slurm_claims(resp: Any) -> dict[str, Any]:
    return jwt.decode(resp.headers["X-Slurm-User-Token"], options={"verify_signature": False})


def test_cached_slurm_token_never_outlives_the_upstream_token_it_is_handed_for(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    """alice's long-lived upstream token fills the cache; her next, 90-second upstream token
    must not be answered with the cached Slurm token that lives 30 minutes."""
    client = client_for(keys_dir, tmp_path, idp)
    long = client.get("/proxy/auth", headers=bearer(idp_token(idp, ttl=3600)))
    assert _slurm_claims(long)["exp"] > time.time() + 1000
    short_token = idp_token(idp, ttl=90)
    short = client.get("/proxy/auth", headers=bearer(short_token))
    assert short.status_code == 200
    upstream_exp = jwt.decode(short_token, options={"verify_signature": False})["exp"]
    assert _slurm_claims(short)["exp"] <= upstream_exp


def test_cached_slurm_token_is_reused_only_within_the_grants_limits(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    """Two grants for the same (issuer, user) with different limits: the cached token of the
    first is not handed to the second when it outlives the second's maximum lifetime."""
    from slurm_jwt_bridge.pipeline import Grant, Request

    app = create_app(parse_settings(settings_data(keys_dir, tmp_path, idp)))
    proxy = app.extensions["slurm_jwt_bridge_proxy"]
    origin = Request(door="proxy")
    wide = Grant(user="svc", issuer="oidc", kind="user")
    first = proxy.reusable_token(wide, origin).token
    assert first.alg == "RS256" and first.exp - first.iat == 1800
    narrow = Grant(user="svc", issuer="oidc", kind="service", max_lifetime=300, algs=("RS256",))
    second = proxy.reusable_token(narrow, origin).token
    assert second.exp - second.iat <= 300
    # and the first grant still reuses its own token
    assert proxy.reusable_token(wide, origin).token is first
