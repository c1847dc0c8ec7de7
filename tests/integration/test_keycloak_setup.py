"""``slurm-jwt-bridge keycloak setup`` against a real Keycloak (tests/helpers/keycloak.py).

Each test module run gets a fresh realm. What is proven:
- ``--dry-run`` says what it would create and creates nothing;
- a run registers the browser client (exact callback and post-logout URIs, PKCE S256), the
  device-grant client, the audience mapper and the service-account clients; the printed blocks
  load with the bridge's settings parser, and a bridge built from them mints a token for the
  service account from a Keycloak client-credentials token;
- a second run changes nothing and says so; a conflicting existing client is reported and left
  as it was; an admin client (client credentials) works in place of an admin user;
- the admin password never appears in the output, also when it is wrong.
"""

from __future__ import annotations

import secrets
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.browser import jwt_claims
from tests.helpers.keycloak import ADMIN_PASSWORD, ADMIN_USER, KeycloakServer
from tests.helpers.slurm import ensure_test_users
from tests.helpers.slurm_rest import bridge_env, bridge_executable

pytestmark = [pytest.mark.keycloak]

PUBLIC_URL = "https://hpc.example.org"
SERVICE = "svc-setup"
ACCOUNT = "svcportal"
TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"


def run_setup(kc: KeycloakServer, realm: str, *args: str, password_file: Path) -> Any:
    cmd = [
        bridge_executable(),
        "keycloak",
        "setup",
        "--server",
        kc.base_url,
        "--realm",
        realm,
        *args,
    ]
    if "--admin-client-id" not in args:
        cmd += ["--admin-user", ADMIN_USER, "--admin-password-file", str(password_file)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=bridge_env(), timeout=300, check=False
    )
    assert ADMIN_PASSWORD not in proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def site(keycloak: KeycloakServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    realm = f"site-{secrets.token_hex(3)}"
    admin = keycloak.admin()
    admin.create_realm({"realm": realm, "enabled": True, "sslRequired": "none"})
    admin.change_current_realm(realm)
    work = tmp_path_factory.mktemp("kc-setup")
    password_file = work / "admin-password"
    password_file.write_text(ADMIN_PASSWORD + "\n")
    return {"realm": realm, "admin": admin, "password_file": password_file, "work": work}


def setup_args(public_url: str = PUBLIC_URL) -> list[str]:
    return ["--public-url", public_url, "--service-account", f"{SERVICE}={ACCOUNT}"]


def client_named(admin: Any, client_id: str) -> dict[str, Any] | None:
    internal = admin.get_client_id(client_id)
    return admin.get_client(internal) if internal else None


def test_dry_run_changes_nothing(keycloak: KeycloakServer, site: dict) -> None:
    proc = run_setup(
        keycloak, site["realm"], *setup_args(), "--dry-run", password_file=site["password_file"]
    )
    assert proc.returncode == 0, proc.stderr
    assert "would create browser client slurm-jwt-bridge" in proc.stderr
    assert f"would create client {SERVICE}" in proc.stderr
    for client_id in ("slurm-jwt-bridge", "slurm-jwt-bridge-cli", SERVICE):
        assert client_named(site["admin"], client_id) is None
    tomllib.loads(proc.stdout)  # placeholders, but well-formed


@pytest.fixture(scope="module")
def first_run(keycloak: KeycloakServer, site: dict) -> Any:
    proc = run_setup(keycloak, site["realm"], *setup_args(), password_file=site["password_file"])
    assert proc.returncode == 0, proc.stderr
    return proc


def test_setup_registers_the_clients(first_run: Any, site: dict) -> None:
    admin = site["admin"]
    web = client_named(admin, "slurm-jwt-bridge")
    assert web is not None
    assert web["redirectUris"] == [f"{PUBLIC_URL}/auth/callback"]
    assert web["attributes"]["post.logout.redirect.uris"] == f"{PUBLIC_URL}/"
    assert web["attributes"]["pkce.code.challenge.method"] == "S256"
    assert (web["publicClient"], web["standardFlowEnabled"]) == (False, True)
    assert web["implicitFlowEnabled"] is False and web["directAccessGrantsEnabled"] is False

    cli = client_named(admin, "slurm-jwt-bridge-cli")
    assert cli is not None and cli["publicClient"] is True
    assert cli["attributes"]["oauth2.device.authorization.grant.enabled"] == "true"
    assert cli["standardFlowEnabled"] is False

    svc = client_named(admin, SERVICE)
    assert svc is not None and svc["serviceAccountsEnabled"] is True
    for c in (web, cli, svc):
        scopes = {s["name"] for s in admin.get_client_default_client_scopes(c["id"])}
        assert "slurm-jwt-bridge-audience" in scopes, (c["clientId"], scopes)
        assert {"profile", "email", "basic"} <= scopes  # the realm's defaults stay


def test_printed_blocks_load_and_service_token_is_minted(
    first_run: Any, keycloak: KeycloakServer, site: dict, keys_dir: Path
) -> None:
    text = first_run.stdout
    doc = tomllib.loads(text)
    issuer = keycloak.issuer(site["realm"])
    doc.update(
        keys={"dir": str(keys_dir)},
        audit={"destination": "none"},
        browser={"enabled": False},
        mapping={"rules": [{"claim": "preferred_username"}]},
    )
    settings = parse_settings(doc)
    (iss,) = settings.issuers
    assert (iss.kind, iss.issuer, iss.client_id) == ("keycloak", issuer, "slurm-jwt-bridge")
    admin = site["admin"]
    secret = admin.get_client_secrets(admin.get_client_id("slurm-jwt-bridge"))["value"]
    assert iss.client_secret == secret
    assert settings.cli_login.client_id == "slurm-jwt-bridge-cli"
    assert [(s.client_id, s.account) for s in settings.service_accounts] == [(SERVICE, ACCOUNT)]

    svc_secret = admin.get_client_secrets(admin.get_client_id(SERVICE))["value"]
    token = keycloak.token_response(
        SERVICE, {"grant_type": "client_credentials"}, site["realm"], svc_secret
    ).json()["access_token"]
    assert "slurm-jwt-bridge" in jwt_claims(token)["aud"]  # the audience mapper
    ensure_test_users([ACCOUNT])
    r = (
        create_app(settings)
        .test_client()
        .post(
            "/oauth/token",
            data={"grant_type": TE, "subject_token": token, "subject_token_type": AT},
        )
    )
    assert r.status_code == 200, r.json
    assert r.json["slurm_user"] == ACCOUNT

    # The device-grant client is usable as registered.
    d = keycloak.device_authorization("slurm-jwt-bridge-cli", realm=site["realm"])
    assert d["verification_uri"].startswith(issuer)


def test_second_run_changes_nothing(first_run: Any, keycloak: KeycloakServer, site: dict) -> None:
    proc = run_setup(keycloak, site["realm"], *setup_args(), password_file=site["password_file"])
    assert proc.returncode == 0, proc.stderr
    assert "nothing to change" in proc.stderr
    assert "done" not in proc.stderr
    assert proc.stdout == first_run.stdout


def test_conflicting_client_is_reported_not_overwritten(
    first_run: Any, keycloak: KeycloakServer, site: dict
) -> None:
    proc = run_setup(
        keycloak,
        site["realm"],
        *setup_args("https://elsewhere.example.org"),
        password_file=site["password_file"],
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "conflict: client slurm-jwt-bridge exists with redirectUris" in proc.stderr
    assert "nothing was changed" in proc.stderr
    web = client_named(site["admin"], "slurm-jwt-bridge")
    assert web is not None and web["redirectUris"] == [f"{PUBLIC_URL}/auth/callback"]


def test_admin_client_credentials_instead_of_a_user(
    first_run: Any, keycloak: KeycloakServer, site: dict
) -> None:
    admin = site["admin"]
    internal = admin.create_client(
        {
            "clientId": "setup-admin",
            "publicClient": False,
            "serviceAccountsEnabled": True,
            "standardFlowEnabled": False,
        }
    )
    user = admin.get_client_service_account_user(internal)
    management = admin.get_client_id("realm-management")
    role = admin.get_client_role(management, "realm-admin")
    admin.assign_client_role(user["id"], management, [role])
    secret_file = site["work"] / "admin-client-secret"
    secret_file.write_text(admin.get_client_secrets(internal)["value"])
    proc = run_setup(
        keycloak,
        site["realm"],
        *setup_args(),
        "--admin-client-id",
        "setup-admin",
        "--admin-client-secret-file",
        str(secret_file),
        "--admin-realm",
        site["realm"],
        password_file=site["password_file"],
    )
    assert proc.returncode == 0, proc.stderr
    assert "nothing to change" in proc.stderr


def test_wrong_admin_password_is_not_echoed(keycloak: KeycloakServer, site: dict) -> None:
    wrong = site["work"] / "wrong-password"
    wrong.write_text("not-the-password-" + secrets.token_hex(4))
    proc = run_setup(keycloak, site["realm"], *setup_args(), password_file=wrong)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "sign-in as user 'admin' at realm 'master' refused" in proc.stderr
    assert wrong.read_text() not in proc.stderr
