"""Every 429 says when to retry (``Retry-After``), and the token endpoint's per-address 429 is
``Cache-Control: no-store`` like its other refusals (docs/http.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.proxy_settings import proxy_settings_data
from tests.unit.test_proxy_auth_request import bearer, idp_token


def _client(keys_dir: Path, tmp_path: Path, idp: Any, **rate_limit: str) -> Any:
    data = proxy_settings_data(
        keys_dir, tmp_path, idp, {"auth_request": True, "upstream": "http://127.0.0.1:9"}
    )
    data["rate_limit"] = rate_limit
    return create_app(parse_settings(data)).test_client()


def _assert_retry_after(r: Any) -> None:
    assert r.status_code == 429, r.text
    assert r.json["error"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1
    assert r.headers["Cache-Control"] == "no-store"


def test_per_subject_429_from_the_proxy_and_proxy_auth_carries_retry_after(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    client = _client(keys_dir, tmp_path, idp, per_subject="1/minute")
    # Each new upstream token is verified once, and each verification counts for its subject.
    assert client.get("/proxy/auth", headers=bearer(idp_token(idp, ttl=3000))).status_code == 200
    _assert_retry_after(client.get("/proxy/auth", headers=bearer(idp_token(idp, ttl=3001))))
    _assert_retry_after(client.get("/slurm/v0.0.40/ping", headers=bearer(idp_token(idp, ttl=3002))))


def test_per_address_429_on_the_token_endpoint_is_no_store_with_retry_after(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    client = _client(keys_dir, tmp_path, idp, per_address="1/minute")
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange"}
    assert client.post("/oauth/token", data=form).status_code == 400
    _assert_retry_after(client.post("/oauth/token", data=form))
