"""Found by the review of the edges: JSON bodies at /api/v1/token never answer 500."""

from __future__ import annotations

import json

import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.proxy_settings import proxy_settings_data


def client(keys_dir, tmp_path, idp):
    return create_app(
        parse_settings(proxy_settings_data(keys_dir, tmp_path, idp, None))
    ).test_client()


def tok(idp):
    return idp.mint(idp.oidc_claims(sub="s-alice", aud="bridge", preferred_username="alice"))


@pytest.mark.parametrize(
    "body",
    [
        "[" * 3000 + "]" * 3000,
        '{"lifetime": ' + "[" * 3000 + "]" * 3000 + "}",
        '{"lifetime": ' + "9" * 5000 + "}",
        '{"lifetime": 1e400}',
        '{"lifetime": NaN}',
        '{"lifetime": 300, "lifetime": 99999999}',
        '{"lifetime": 59}',
        '{"lifetime": 60}',
        '{"alg": "none"}',
        '\ufeff{"lifetime": 300}',
    ],
)
def test_api_json_bodies(keys_dir, tmp_path, idp, body):
    c = client(keys_dir, tmp_path, idp)
    r = c.post(
        "/api/v1/token",
        data=body.encode("utf-8"),
        content_type="application/json",
        headers={"Authorization": f"Bearer {tok(idp)}"},
    )
    lines = (
        [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
        if (tmp_path / "audit.log").exists()
        else []
    )
    print(
        body[:40],
        r.status_code,
        (r.get_json() or {}).get("error_description", "")[:80],
        [a["outcome"] for a in lines],
    )
    assert r.status_code != 500
    if r.status_code != 200:
        assert any(a["outcome"] == "refused" for a in lines)


def test_unauthenticated_deep_json_is_no_500(keys_dir, tmp_path, idp):
    """No valid token needed: the body is parsed before the token is looked at."""
    c = client(keys_dir, tmp_path, idp)
    r = c.post(
        "/api/v1/token",
        data="[" * 3000 + "]" * 3000,
        content_type="application/json",
        headers={"Authorization": "Bearer x"},
    )
    print("unauthenticated:", r.status_code, r.get_json())
    assert r.status_code != 500
