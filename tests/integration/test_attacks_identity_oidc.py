"""Attacks for someone else's account against a real OpenID provider (npm oidc-provider): a user
who logs in through a portal's client uses her own token as the portal's actor token; a login
issuer's authorization answer is mixed up with another's (RFC 9207). The bridge is the real app
(Flask test client over WSGI); the provider answers over real HTTP.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.browser import require_node
from tests.helpers.oidc import OidcProvider, start_oidc_provider

pytestmark = [pytest.mark.oidc]

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
CALLBACK = "http://localhost/auth/callback"

# The portal: one client for its users' login and for its own client-credentials token.
PORTAL = {
    "client_id": "portal",
    "client_secret": "portal-secret",
    "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
    "response_types": ["code"],
    "redirect_uris": ["http://127.0.0.1/cb"],
    "token_endpoint_auth_method": "client_secret_basic",
}
BRIDGE_WEB = {
    "client_id": "bridge-test",
    "client_secret": "bridge-test-secret",
    "grant_types": ["authorization_code"],
    "response_types": ["code"],
    "redirect_uris": [CALLBACK],
    "token_endpoint_auth_method": "client_secret_basic",
}


@pytest.fixture(scope="module", params=["plain", "keycloak"])
def provider(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    require_node()
    prov = start_oidc_provider(
        tmp_path_factory.mktemp(f"op-{request.param}"), style=request.param, clients=[PORTAL]
    )
    yield prov
    prov.stop()


def _delegation_app(prov: OidcProvider, tmp_path: Path, keys_dir: Path) -> tuple[Any, Path]:
    audit = tmp_path / "audit.log"
    kind = "keycloak" if prov.style == "keycloak" else "oidc"
    issuer: dict[str, Any] = {"name": "op", "kind": kind, "issuer": prov.issuer}
    if kind == "keycloak":
        issuer["allowed_clients"] = ["portal"]
    else:
        issuer["audiences"] = [prov.resource]
    settings = parse_settings(
        {
            "keys": {"dir": str(keys_dir)},
            "audit": {"destination": f"file:{audit}"},
            "browser": {"enabled": False},
            "issuers": [issuer],
            "mapping": {
                "require_local_account": False,
                "rules": [{"issuer": "op", "claim": "preferred_username"}],
            },
            "delegation": {
                "actors": [
                    {
                        "issuer": "op",
                        "client_id": "portal",
                        "allow_requested_subject": True,
                        "subject_regex": "[a-z]+",
                    }
                ]
            },
        }
    )
    return create_app(settings).test_client(), audit


def _last_audit(audit: Path) -> dict[str, Any]:
    return json.loads(audit.read_text().splitlines()[-1])


def test_user_logged_in_through_the_portal_cannot_act_as_the_portal(
    provider: OidcProvider, tmp_path: Path, keys_dir: Path
) -> None:
    client, audit = _delegation_app(provider, tmp_path, keys_dir)
    alice = provider.login_tokens("alice", client_id="portal")["access_token"]
    form = {"grant_type": TE, "actor_token": alice, "actor_token_type": AT}
    r = client.post("/oauth/token", data={**form, "requested_subject": "bob"})
    got = {k: v for k, v in (r.json or {}).items() if k != "access_token"}
    assert r.status_code == 400, f"the attack got through: {got}"
    assert r.json["error"] == "unauthorized_client", got
    assert "user's token" in r.json["error_description"]
    line = _last_audit(audit)
    assert (line["outcome"], line["actor_issuer"], line["actor_client"]) == (
        "refused",
        "op",
        "portal",
    )
    assert line["actor_sub"] == "alice"

    # The portal's own client-credentials token still delegates.
    service = provider.client_credentials("portal", "portal-secret")["access_token"]
    r = client.post(
        "/oauth/token",
        data={**form, "actor_token": service, "requested_subject": "bob"},
    )
    assert r.status_code == 200, r.json
    assert r.json["slurm_user"] == "bob"
    bob = provider.login_tokens("bob", client_id="portal")["access_token"]
    r = client.post(
        "/oauth/token",
        data={**form, "actor_token": service, "subject_token": bob, "subject_token_type": AT},
    )
    assert r.status_code == 200 and r.json["slurm_user"] == "bob", r.json
    line = _last_audit(audit)
    assert (line["outcome"], line["kind"], line["user"], line["sub"]) == (
        "minted",
        "delegated",
        "bob",
        "bob",
    )
    assert (line["actor_issuer"], line["actor_client"]) == ("op", "portal")
    assert line["actor_sub"] == "portal"


# ---------------------------------------------------------------- RFC 9207 mix-up


@pytest.fixture(scope="module")
def two_issuers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[OidcProvider]]:
    require_node()
    work = tmp_path_factory.mktemp("mixup")
    started: list[OidcProvider] = []
    try:
        for name in ("honest", "other"):
            started.append(start_oidc_provider(work / name, clients=[BRIDGE_WEB]))
        yield started
    finally:
        for prov in started:
            prov.stop()


def _login_issuer(name: str, prov: OidcProvider) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "oidc",
        "issuer": prov.issuer,
        "audiences": [prov.resource, "bridge-test"],
        "token_use": ["access", "id"],
        "client_id": "bridge-test",
        "client_secret": "bridge-test-secret",
    }


def test_login_answer_from_another_issuer_is_refused(
    two_issuers: list[OidcProvider], keys_dir: Path, tmp_path: Path
) -> None:
    """The browser is sent to issuer "other"; whoever runs it forwards the authorization
    request to "honest", whose answer (code for alice) comes back to the shared callback."""
    honest, other = two_issuers
    settings = parse_settings(
        {
            "keys": {"dir": str(keys_dir)},
            "audit": {"destination": f"file:{tmp_path / 'audit.log'}"},
            "browser": {"secure_cookies": False},
            "issuers": [_login_issuer("honest", honest), _login_issuer("other", other)],
            "mapping": {"require_local_account": False, "rules": [{"claim": "sub"}]},
        }
    )
    browser = create_app(settings).test_client()
    r = browser.get("/login?issuer=other")
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    sent = urllib.parse.urlsplit(r.headers["Location"])
    assert sent.geturl().startswith(other.endpoint("authorization_endpoint"))
    forwarded = honest.endpoint("authorization_endpoint") + "?" + sent.query
    s = requests.Session()
    first = s.get(forwarded, allow_redirects=False, timeout=10)
    answer = honest._drive_interactions(s, first, "alice", stop_prefix=CALLBACK)
    query = urllib.parse.urlsplit(answer).query
    assert dict(urllib.parse.parse_qsl(query))["iss"] == honest.issuer

    token_posts = _settled_count(other, "POST /token")
    r = browser.get("/auth/callback?" + query)
    page = r.get_data(as_text=True)
    leaked = _settled_count(other, "POST /token") - token_posts
    assert leaked == 0, "honest's authorization code was sent to other's token endpoint"
    assert r.status_code == 400, page[:500]
    assert "Login refused" in page and "start the login again" in page
    with browser.session_transaction() as session:
        assert "grant" not in session and "token" not in session
    line = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
    assert (line["event"], line["outcome"], line["door"]) == ("login", "refused", "browser")
    assert "start the login again" in line["reason"]


def _settled_count(prov: OidcProvider, prefix: str) -> int:
    """Lines of the provider's request log starting with ``prefix``, once every earlier request
    is in the log: a marker request is sent and awaited (the log is read by another thread)."""
    marker = "GET /.well-known/openid-configuration"
    before = sum(1 for line in prov._log_lines if line.startswith(marker))
    requests.get(prov.issuer + "/.well-known/openid-configuration", timeout=10)
    for _ in range(500):
        if sum(1 for line in prov._log_lines if line.startswith(marker)) > before:
            break
        threading.Event().wait(0.01)
    else:
        raise AssertionError("the provider's request log did not show the marker request")
    return sum(1 for line in prov._log_lines if line.startswith(prefix))


# ---------------------------------------------------------------- found by the adversarial review


def test_person_whose_sub_is_the_portals_client_id_is_not_the_portal(
    provider: Any, tmp_path: Path, keys_dir: Path
) -> None:
    """A person whose account id equals the portal's client id logs in through the portal: her
    token has sub = client_id = "portal" but is a login's token (openid scope), never the
    portal's service token, at the actor door and at the service-account door."""
    from slurm_jwt_bridge import create_app
    from slurm_jwt_bridge.settings import parse_settings

    client, audit = _delegation_app(provider, tmp_path, keys_dir)
    account = "portal" if provider.style == "plain" else "service-account-portal"
    token = provider.login_tokens(account, client_id="portal")["access_token"]
    r = client.post(
        "/oauth/token",
        data={
            "grant_type": TE,
            "actor_token": token,
            "actor_token_type": AT,
            "requested_subject": "bob",
        },
    )
    assert r.status_code != 200, r.json
    assert _last_audit(audit)["outcome"] == "refused"
    if provider.style != "plain":
        return
    settings = parse_settings(
        {
            "keys": {"dir": str(keys_dir)},
            "audit": {"destination": "none"},
            "browser": {"enabled": False},
            "issuers": [
                {
                    "name": "op",
                    "kind": "oidc",
                    "issuer": provider.issuer,
                    "audiences": [provider.resource],
                }
            ],
            "mapping": {
                "require_local_account": False,
                "rules": [{"issuer": "op", "claim": "preferred_username"}],
            },
            "service_accounts": [{"issuer": "op", "client_id": "portal", "account": "batch"}],
        }
    )
    r = (
        create_app(settings)
        .test_client()
        .post("/api/v1/token", headers={"Authorization": "Bearer " + token})
    )
    assert not (r.status_code == 200 and r.json["slurm_user"] == "batch"), r.json
