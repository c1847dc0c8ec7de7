"""Found by the review of the edges: proxy-door refusals and raw-token forwards are audited."""

from __future__ import annotations

import json

import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import KeyRing
from slurm_jwt_bridge.minting import mint_slurm_token
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.proxy_settings import proxy_settings_data


def make(keys_dir, tmp_path, idp, up, **proxy):
    table = {
        "upstream": up.url,
        "read_timeout": 1.0,
        "connect_timeout": 1.0,
        "max_body": 4096,
        "auth_request": True,
        **proxy,
    }
    return create_app(
        parse_settings(proxy_settings_data(keys_dir, tmp_path, idp, table))
    ).test_client()


def audit(tmp_path):
    p = tmp_path / "audit.log"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def tok(idp, name="alice"):
    return idp.mint(idp.oidc_claims(sub=name, aud="bridge", preferred_username=name))


@pytest.mark.parametrize(
    "path,headers_kind",
    [
        ("/slurm/v0.0.44/%2e%2e/x", "bearer"),  # bad path
        ("/slurm/v0.0.44/jobs", "basic"),  # wrong scheme
        ("/slurm/v0.0.44/jobs", "slurmtok"),  # raw slurm token, passthrough off
    ],
)
def test_proxy_door_refusals_are_audited(keys_dir, tmp_path, idp, upstream, path, headers_kind):
    c = make(keys_dir, tmp_path, idp, upstream)
    ring = KeyRing.load(keys_dir)
    h = {
        "bearer": {"Authorization": f"Bearer {tok(idp)}"},
        "basic": {"Authorization": "Basic cm9vdDpyb290"},
        "none": {},
        "slurmtok": {
            "Authorization": "Bearer " + mint_slurm_token(ring, "root", 60, "RS256").token
        },
    }[headers_kind]
    r = c.get(path, headers=h)
    print(headers_kind, r.status_code, r.get_json())
    assert 400 <= r.status_code < 500
    lines = audit(tmp_path)
    print("audit:", lines)
    assert any(a.get("outcome") == "refused" for a in lines), "refusal without an audit line"


def test_auth_request_door_refusals_are_audited(keys_dir, tmp_path, idp, upstream):
    c = make(keys_dir, tmp_path, idp, upstream)
    ring = KeyRing.load(keys_dir)
    r = c.get(
        "/proxy/auth",
        headers={"Authorization": "Bearer " + mint_slurm_token(ring, "root", 60, "RS256").token},
    )
    print(r.status_code, r.get_json())
    r2 = c.get(
        "/proxy/auth",
        headers={"Authorization": f"Bearer {tok(idp)}", "X-Original-URI": "/slurm/%2e%2e/x"},
    )
    print(r2.status_code, r2.get_json())
    assert r.status_code == 401 and r2.status_code == 403
    assert len([a for a in audit(tmp_path) if a.get("outcome") == "refused"]) >= 2, audit(tmp_path)


def test_passthrough_forward_is_audited(keys_dir, tmp_path, idp, upstream):
    """A raw Slurm token (sun=root) forwarded to slurmrestd: who used it should be traceable."""
    c = make(keys_dir, tmp_path, idp, upstream, passthrough_slurm_tokens=True)
    ring = KeyRing.load(keys_dir)
    t = mint_slurm_token(ring, "root", 60, "RS256").token
    r = c.get("/slurm/v0.0.44/jobs", headers={"Authorization": f"Bearer {t}"})
    r2 = c.get("/proxy/auth", headers={"Authorization": f"Bearer {t}"})
    print(r.status_code, r2.status_code, r2.headers.get("X-Slurm-User-Name"))
    assert any(a for a in audit(tmp_path)), "raw root token forwarded, no audit line"
