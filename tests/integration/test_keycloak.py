"""The keycloak profile against a real Keycloak (tests/helpers/keycloak.py, realms in
tests/keycloak) and real Slurm 26.05.

What is proven, each with tokens Keycloak issued:
- alice's access token (authorization code + PKCE at Keycloak's login form) and her ID token
  become Slurm tokens; slurmrestd 26.05 accepts them and a job runs as alice;
- groups, realm roles and client roles (``resource_access``) reach the mapping rules;
- the mixed-case user ``Eve`` (Keycloak keeps user names and e-mail addresses in lower case)
  maps to ``eve`` through her e-mail address;
- client credentials of a listed client become its service account; delegation with the
  portal's service-account token works for alice, an unlisted actor and ``root`` are refused;
- Keycloak's standard token exchange: a portal's token for alice, refused by the bridge for its
  audience, is exchanged inside the realm for one carrying the bridge's audience, which the
  bridge accepts;
- refusals: a disabled user gets no token from Keycloak, a refresh token as subject, a client
  the bridge does not list, a token of another realm, a user without the required role;
- introspection through python-keycloak reaches Keycloak: a string that is not a token is
  inactive there, and a wrong introspection secret is an outage, not an acceptance.
"""

from __future__ import annotations

from typing import Any

import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.browser import jwt_claims
from tests.helpers.keycloak import (
    BRIDGE_AUDIENCE,
    OTHER_REALM,
    KeycloakServer,
)
from tests.helpers.oidc import OidcError
from tests.helpers.slurm import ensure_test_users
from tests.helpers.slurm_rest import BridgeCluster, get_jobs, run_whoami_job

pytestmark = [pytest.mark.slurm, pytest.mark.keycloak]

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
PORTAL_ACCOUNT = "svcportal"
BATCH_ACCOUNT = "svcbatch"


def _settings(kc: KeycloakServer, keys_dir: str, rules: list[dict], **issuer: Any) -> Any:
    return parse_settings(
        {
            "keys": {"dir": keys_dir},
            "audit": {"destination": "none"},
            "browser": {"enabled": False},
            "issuers": [
                {
                    "name": "kc",
                    "kind": "keycloak",
                    "issuer": kc.issuer(),
                    "audiences": [BRIDGE_AUDIENCE],
                    "token_use": ["access", "id"],
                    **issuer,
                }
            ],
            "mapping": {"rules": rules},
            "service_accounts": [
                {"issuer": "kc", "client_id": "svc-portal", "account": PORTAL_ACCOUNT},
                {"issuer": "kc", "client_id": "svc-batch", "account": BATCH_ACCOUNT},
            ],
            "delegation": {
                "actors": [
                    {
                        "issuer": "kc",
                        "client_id": "svc-portal",
                        "allow_requested_subject": True,
                        "subject_regex": "[a-z]+",
                    }
                ]
            },
        }
    )


USER_RULES = [
    {"issuer": "kc", "claim": "preferred_username", "require_roles": ["hpc-user"]},
]


@pytest.fixture(scope="module")
def client(keycloak: KeycloakServer, slurm_2605: BridgeCluster) -> Any:
    ensure_test_users(
        ["alice", "bob", "eve", PORTAL_ACCOUNT, BATCH_ACCOUNT], chroot=slurm_2605.cluster.chroot
    )
    settings = _settings(keycloak, str(slurm_2605.keys_dir), USER_RULES)
    return create_app(settings).test_client()


@pytest.fixture(scope="module")
def alice_tokens(keycloak: KeycloakServer) -> dict:
    return keycloak.login_tokens("alice")


def exchange(client: Any, token: str, **extra: str) -> Any:
    return client.post(
        "/oauth/token",
        data={"grant_type": TE, "subject_token": token, "subject_token_type": AT, **extra},
    )


def refused(r: Any, status: int, error: str) -> dict:
    assert r.status_code == status, r.json
    assert r.json["error"] == error, r.json
    assert "access_token" not in r.json
    return r.json


def test_discovery_and_keys_are_keycloaks(keycloak: KeycloakServer) -> None:
    assert keycloak.endpoint("issuer") == keycloak.issuer()
    assert keycloak.endpoint("jwks_uri").endswith("/realms/hpc/protocol/openid-connect/certs")
    assert "urn:ietf:params:oauth:grant-type:device_code" in keycloak.endpoint(
        "grant_types_supported"
    )


def test_alice_access_token_minted_and_job_runs_as_alice(
    client: Any, alice_tokens: dict, slurm_2605: BridgeCluster
) -> None:
    claims = jwt_claims(alice_tokens["access_token"])
    assert (claims["typ"], claims["azp"]) == ("Bearer", BRIDGE_AUDIENCE)
    assert BRIDGE_AUDIENCE in claims["aud"]  # the realm's audience mapper
    r = exchange(client, alice_tokens["access_token"])
    assert r.status_code == 200, r.json
    assert r.json["slurm_user"] == "alice"
    state, who = run_whoami_job(slurm_2605.cluster, r.json["access_token"], "alice")
    assert (state, who) == ("COMPLETED", "alice")


def test_alice_id_token_minted(
    keycloak: KeycloakServer, alice_tokens: dict, slurm_2605: BridgeCluster
) -> None:
    claims = jwt_claims(alice_tokens["id_token"])
    assert (claims["typ"], claims["aud"]) == ("ID", BRIDGE_AUDIENCE)
    # Keycloak's ID tokens carry groups (the realm's mapper) but no roles by default.
    assert claims["groups"] == ["hpc-users"] and "realm_access" not in claims
    rules = [{"issuer": "kc", "claim": "preferred_username", "require_groups": ["hpc-users"]}]
    app = create_app(_settings(keycloak, str(slurm_2605.keys_dir), rules)).test_client()
    r = exchange(
        app,
        alice_tokens["id_token"],
        subject_token_type="urn:ietf:params:oauth:token-type:id_token",
    )
    assert r.status_code == 200, r.json
    assert r.json["slurm_user"] == "alice"
    assert get_jobs(slurm_2605.cluster, r.json["access_token"], "alice").status_code == 200


@pytest.mark.parametrize(
    "rule",
    [
        {"require_groups": ["hpc-admins"]},  # a group (the realm's group-membership mapper)
        {"require_roles": ["hpc-admin"]},  # a realm role
        {"require_roles": [f"{BRIDGE_AUDIENCE}:slurm-operator"]},  # a client role
    ],
    ids=["group", "realm-role", "client-role"],
)
def test_groups_realm_and_client_roles_reach_the_rules(
    keycloak: KeycloakServer, slurm_2605: BridgeCluster, alice_tokens: dict, rule: dict
) -> None:
    rules = [{"issuer": "kc", "claim": "preferred_username", **rule}]
    app = create_app(_settings(keycloak, str(slurm_2605.keys_dir), rules)).test_client()
    bob = keycloak.login_tokens("bob")["access_token"]
    r = exchange(app, bob)
    assert r.status_code == 200, r.json
    assert r.json["slurm_user"] == "bob"
    refused(exchange(app, alice_tokens["access_token"]), 403, "access_denied")


def test_mixed_case_user_maps_by_email(keycloak: KeycloakServer, slurm_2605: BridgeCluster) -> None:
    tokens = keycloak.login_tokens("Eve")
    claims = jwt_claims(tokens["access_token"])
    # Keycloak stores both in lower case: the realm file says "Eve" and "Eve@LAB.Example.org".
    assert claims["preferred_username"] == "eve"
    assert claims["email"] == "eve@lab.example.org"
    rules = [
        {
            "issuer": "kc",
            "claim": "email",
            "regex": r"^(?P<user>[^@]+)@lab\.example\.org$",
            "lowercase": True,
            "require_roles": ["hpc-user"],
        }
    ]
    app = create_app(_settings(keycloak, str(slurm_2605.keys_dir), rules)).test_client()
    r = exchange(app, tokens["access_token"])
    assert r.status_code == 200, r.json
    assert r.json["slurm_user"] == "eve"
    assert get_jobs(slurm_2605.cluster, r.json["access_token"], "eve").status_code == 200


def test_user_without_the_role_is_refused(client: Any, keycloak: KeycloakServer) -> None:
    body = refused(
        exchange(client, keycloak.login_tokens("carol")["access_token"]), 403, "access_denied"
    )
    assert "needs a role in ['hpc-user']" in body["error_description"]


def test_disabled_user_gets_no_token(keycloak: KeycloakServer) -> None:
    with pytest.raises(OidcError, match="Account is disabled"):
        keycloak.login_tokens("dave")


def test_refresh_token_as_subject_is_refused(client: Any, alice_tokens: dict) -> None:
    assert jwt_claims(alice_tokens["refresh_token"])["typ"] == "Refresh"
    refused(exchange(client, alice_tokens["refresh_token"]), 400, "invalid_grant")


def test_unlisted_client_is_refused(client: Any, keycloak: KeycloakServer) -> None:
    service = keycloak.client_credentials("other-app")["access_token"]
    body = refused(exchange(client, service), 400, "invalid_grant")
    assert "other-app" in body["error_description"]
    user = keycloak.login_tokens("alice", client_id="other-app")["access_token"]
    refused(exchange(client, user), 400, "invalid_grant")


def test_token_of_another_realm_is_refused(client: Any, keycloak: KeycloakServer) -> None:
    token = keycloak.client_credentials("svc-portal", realm=OTHER_REALM)["access_token"]
    claims = jwt_claims(token)
    assert claims["iss"] == keycloak.issuer(OTHER_REALM) and BRIDGE_AUDIENCE in claims["aud"]
    refused(exchange(client, token), 400, "invalid_grant")


@pytest.mark.parametrize(
    ("client_id", "account"), [("svc-portal", PORTAL_ACCOUNT), ("svc-batch", BATCH_ACCOUNT)]
)
def test_service_account_tokens(
    client: Any,
    keycloak: KeycloakServer,
    slurm_2605: BridgeCluster,
    client_id: str,
    account: str,
) -> None:
    token = keycloak.client_credentials(client_id)["access_token"]
    assert jwt_claims(token)["preferred_username"] == f"service-account-{client_id}"
    r = exchange(client, token)
    assert r.status_code == 200, r.json
    assert r.json["slurm_user"] == account
    assert get_jobs(slurm_2605.cluster, r.json["access_token"], account).status_code == 200


def test_delegation_with_the_portals_service_account(
    client: Any, keycloak: KeycloakServer, alice_tokens: dict, slurm_2605: BridgeCluster
) -> None:
    actor = keycloak.client_credentials("svc-portal")["access_token"]
    r = exchange(client, alice_tokens["access_token"], actor_token=actor, actor_token_type=AT)
    assert r.status_code == 200, r.json
    assert r.json["slurm_user"] == "alice"
    state, who = run_whoami_job(slurm_2605.cluster, r.json["access_token"], "alice")
    assert (state, who) == ("COMPLETED", "alice")

    unlisted = keycloak.client_credentials("svc-batch")["access_token"]
    r = exchange(client, alice_tokens["access_token"], actor_token=unlisted, actor_token_type=AT)
    refused(r, 400, "unauthorized_client")

    r = client.post(
        "/oauth/token",
        data={
            "grant_type": TE,
            "requested_subject": "root",
            "actor_token": actor,
            "actor_token_type": AT,
        },
    )
    refused(r, 403, "access_denied")


def test_keycloak_standard_token_exchange_then_bridge(
    client: Any, keycloak: KeycloakServer, slurm_2605: BridgeCluster
) -> None:
    portal = keycloak.login_tokens("alice", client_id="web-portal")["access_token"]
    assert BRIDGE_AUDIENCE not in jwt_claims(portal)["aud"]
    body = refused(exchange(client, portal), 400, "invalid_grant")
    assert "web-portal" in body["error_description"]

    # The bridge's audience reaches the portal only through its optional client scope.
    r = keycloak.exchange("web-portal", portal, audience=BRIDGE_AUDIENCE)
    assert r.status_code == 400 and "audience not available" in r.text, r.text[:500]
    r = keycloak.exchange(
        "web-portal", portal, audience=BRIDGE_AUDIENCE, scope=f"{BRIDGE_AUDIENCE}-audience"
    )
    assert r.status_code == 200, r.text[:500]
    exchanged = r.json()["access_token"]
    claims = jwt_claims(exchanged)
    assert claims["aud"] == BRIDGE_AUDIENCE and claims["azp"] == "web-portal"

    r = exchange(client, exchanged)
    assert r.status_code == 200, r.json
    assert r.json["slurm_user"] == "alice"
    assert get_jobs(slurm_2605.cluster, r.json["access_token"], "alice").status_code == 200


def test_keycloak_refuses_exchange_by_a_client_outside_the_audience(
    keycloak: KeycloakServer, alice_tokens: dict
) -> None:
    # other-app is not in the audience of alice's bridge token: Keycloak says no.
    r = keycloak.exchange("other-app", alice_tokens["access_token"], audience=BRIDGE_AUDIENCE)
    assert r.status_code in (400, 403), r.text[:500]
    assert "access_token" not in r.json()


@pytest.fixture(scope="module")
def introspecting(keycloak: KeycloakServer, slurm_2605: BridgeCluster) -> Any:
    def app(secret: str) -> Any:
        settings = _settings(
            keycloak,
            str(slurm_2605.keys_dir),
            USER_RULES,
            introspection={"client_id": BRIDGE_AUDIENCE, "client_secret": secret},
        )
        return create_app(settings).test_client()

    return app


def test_introspection_through_python_keycloak(introspecting: Any) -> None:
    # Keycloak issues only JWTs; a string that is not one goes to its introspection endpoint.
    good = introspecting(f"{BRIDGE_AUDIENCE}-secret")
    body = refused(exchange(good, "not-a-keycloak-token"), 400, "invalid_grant")
    assert "not active" in body["error_description"]
    bad = introspecting("wrong-secret")
    r = exchange(bad, "not-a-keycloak-token")
    assert r.status_code == 503, r.json
    assert "access_token" not in r.json
    assert "wrong-secret" not in r.get_data(as_text=True)
