"""The keycloak profile against a real OpenID provider served at Keycloak's paths
(``/realms/hpc/protocol/openid-connect/...``, npm oidc-provider) and real Slurm 26.05:
access tokens accepted by ``azp``, realm roles in mapping conditions, service accounts, and
opaque tokens introspected with python-keycloak."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.oidc import OidcProvider, start_oidc_provider
from tests.helpers.slurm import ensure_test_users
from tests.helpers.slurm_rest import BridgeCluster, get_jobs, run_whoami_job

pytestmark = [pytest.mark.slurm, pytest.mark.oidc]

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
SERVICE_ACCOUNT = "svcportal"


@pytest.fixture(scope="module")
def keycloak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    provider = start_oidc_provider(tmp_path_factory.mktemp("kc"), style="keycloak")
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def client(keycloak: OidcProvider, slurm_2605: BridgeCluster) -> Any:
    ensure_test_users([SERVICE_ACCOUNT], chroot=slurm_2605.cluster.chroot)
    settings = parse_settings(
        {
            "keys": {"dir": str(slurm_2605.keys_dir)},
            "audit": {"destination": "none"},
            "browser": {"enabled": False},
            "issuers": [
                {
                    "name": "kc",
                    "kind": "keycloak",
                    "issuer": keycloak.issuer,
                    "allowed_clients": ["bridge-test", "svc-portal"],
                    "introspection": {
                        "client_id": "bridge-test",
                        "client_secret": "bridge-test-secret",
                    },
                }
            ],
            "mapping": {
                "rules": [
                    {"issuer": "kc", "claim": "preferred_username", "require_roles": ["hpc-user"]},
                    # Introspection answers carry sub only; this realm's subs are listed.
                    {
                        "issuer": "kc",
                        "claim": "sub",
                        "table": {"alice": "alice"},
                        "table_only": True,
                    },
                ]
            },
            "service_accounts": [
                {"issuer": "kc", "client_id": "svc-portal", "account": SERVICE_ACCOUNT}
            ],
        }
    )
    return create_app(settings).test_client()


def exchange(client: Any, token: str) -> Any:
    return client.post(
        "/oauth/token", data={"grant_type": TE, "subject_token": token, "subject_token_type": AT}
    )


def test_discovery_is_at_keycloak_paths(keycloak: OidcProvider) -> None:
    doc = keycloak.discovery()
    assert doc["issuer"].endswith("/realms/hpc")
    assert doc["jwks_uri"].endswith("/realms/hpc/protocol/openid-connect/certs")


def test_user_access_token_accepted_by_azp_and_job_runs_as_alice(
    client: Any, keycloak: OidcProvider, slurm_2605: BridgeCluster
) -> None:
    tokens = keycloak.login_tokens("alice")
    r = exchange(client, tokens["access_token"])
    assert r.status_code == 200, r.json
    assert r.json["slurm_user"] == "alice"
    state, who = run_whoami_job(slurm_2605.cluster, r.json["access_token"], "alice")
    assert (state, who) == ("COMPLETED", "alice")


def test_user_without_the_realm_role_is_unmapped(client: Any, keycloak: OidcProvider) -> None:
    r = exchange(client, keycloak.login_tokens("carol")["access_token"])
    assert r.status_code == 403 and r.json["error"] == "access_denied"
    assert "needs a role in ['hpc-user']" in r.json["error_description"]
    assert "access_token" not in r.json


def test_service_account_token(
    client: Any, keycloak: OidcProvider, slurm_2605: BridgeCluster
) -> None:
    cc = keycloak.client_credentials("svc-portal", "svc-portal-secret")["access_token"]
    r = exchange(client, cc)
    assert r.status_code == 200, r.json
    assert r.json["slurm_user"] == SERVICE_ACCOUNT
    assert get_jobs(slurm_2605.cluster, r.json["access_token"], SERVICE_ACCOUNT).status_code == 200


def test_client_not_allowed_is_refused(client: Any, keycloak: OidcProvider) -> None:
    cc = keycloak.client_credentials("svc-batch", "svc-batch-secret")["access_token"]
    r = exchange(client, cc)
    assert r.status_code == 400 and r.json["error"] == "invalid_grant"
    assert "access_token" not in r.json


def test_opaque_token_is_introspected_with_python_keycloak(
    client: Any, keycloak: OidcProvider
) -> None:
    opaque = keycloak.login_tokens("alice")["refresh_token"]
    assert opaque.count(".") not in (2, 4)  # not a JWT: only introspection can judge it
    r = exchange(client, opaque)
    assert r.status_code == 200, r.json
    assert r.json["slurm_user"] == "alice"
    r = exchange(client, opaque[:-4] + "AAAA")
    assert r.status_code == 400 and r.json["error"] == "invalid_grant"
