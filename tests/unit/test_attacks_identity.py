"""Attacks that try to get a Slurm token for someone else's account, each through a door (the
token API, the browser login, the configuration check at start), against real HTTP issuers
(tests/helpers/test_issuer.py) playing Keycloak, Cognito, Entra ID and a generic OIDC provider.

Each test states the attack; the door must refuse it with a reason a person can act on, and a
refusal at a token door leaves an audit line saying who tried.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import SettingsError, parse_settings
from tests.conftest import skip_or_fail
from tests.helpers.issuers import TENANT, FourIssuers, four_issuers

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
EVIL_TENANT = "eeeeeeee-0000-0000-0000-00000000beef"


Idps = FourIssuers


@pytest.fixture
def idps() -> Iterator[Idps]:
    with four_issuers() as found:
        yield found


def issuers(idps: Idps, **entra: Any) -> list[dict[str, Any]]:
    return idps.issuers(
        kc={"allowed_clients": ["portal", "svc-batch"]},
        cognito={"allowed_clients": ["portal"]},
        entra={"allowed_clients": ["portal"], **entra},
    )


class Bridge:
    """The Flask app for one configuration, and its audit file."""

    def __init__(self, data: dict[str, Any], tmp_path: Path, keys_dir: Path) -> None:
        self.audit = tmp_path / "audit.log"
        data = {
            "keys": {"dir": str(keys_dir)},
            "audit": {"destination": f"file:{self.audit}"},
            "browser": {"enabled": False},
            **data,
        }
        self.client = create_app(parse_settings(data)).test_client()

    def exchange(self, subject: str | None = None, **form: str) -> Any:
        data = {"grant_type": TE, **form}
        if subject is not None:
            data.update(subject_token=subject, subject_token_type=AT)
        return self.client.post("/oauth/token", data=data)

    def last_audit(self) -> dict[str, Any]:
        return json.loads(self.audit.read_text().splitlines()[-1])


def refused(r: Any, status: int, error: str, *words: str) -> str:
    got = {k: v for k, v in (r.json or {}).items() if k != "access_token"}
    assert r.status_code == status, f"the attack got through: {r.status_code} {got}"
    assert r.json["error"] == error, r.json
    assert "access_token" not in r.json
    reason: str = r.json["error_description"]
    for word in words:
        assert word in reason, reason
    return reason


NO_LOCAL = {"require_local_account": False}


# ---------------------------------------------------------------- 1. user token as actor token


def _delegation_bridge(idps: Idps, tmp_path: Path, keys_dir: Path) -> Bridge:
    actors = [
        {
            "issuer": name,
            "client_id": "portal",
            "allow_requested_subject": True,
            "subject_regex": "[a-z]+",
        }
        for name in ("kc", "cognito", "entra", "oidc")
    ]
    return Bridge(
        {
            "issuers": issuers(idps),
            "mapping": {**NO_LOCAL, "rules": [{"claim": "preferred_username"}]},
            "delegation": {"actors": actors},
        },
        tmp_path,
        keys_dir,
    )


def _user_token_of_portal(idps: Idps, kind: str) -> str:
    """Mallory logs in through the portal: her own token, issued to the portal's client."""
    if kind == "kc":
        return idps.kc.mint(idps.kc.keycloak_claims(azp="portal", username="mallory"))
    if kind == "cognito":
        return idps.cognito.mint(
            idps.cognito.cognito_claims("access", client_id="portal", username="mallory")
        )
    if kind == "entra":
        return idps.entra.mint(
            idps.entra.entra_claims(tid=TENANT, aud="api://bridge", client="portal")
        )
    return idps.oidc.mint(
        idps.oidc.oidc_claims(sub="mallory-sub", aud="bridge", azp="portal", scope="openid")
    )


def _service_token_of_portal(idps: Idps, kind: str) -> str:
    """The portal's own client-credentials token."""
    if kind == "kc":
        return idps.kc.mint(idps.kc.keycloak_claims(azp="portal", username="", service=True))
    if kind == "cognito":
        return idps.cognito.mint(idps.cognito.cognito_claims("access", client_id="portal"))
    if kind == "entra":
        return idps.entra.mint(
            idps.entra.entra_claims(tid=TENANT, aud="api://bridge", client="portal", app_only=True)
        )
    return idps.oidc.mint(
        idps.oidc.oidc_claims(sub="portal", aud="bridge", client_id="portal", scope="svc")
    )


@pytest.mark.parametrize("kind", ["kc", "cognito", "entra", "oidc"])
def test_users_token_of_the_portal_client_is_no_actor_token(
    idps: Idps, tmp_path: Path, keys_dir: Path, kind: str
) -> None:
    """Mallory sends her own portal-login token as actor_token and names bob; the portal's own
    client-credentials token still may."""
    bridge = _delegation_bridge(idps, tmp_path, keys_dir)
    mallory = _user_token_of_portal(idps, kind)
    r = bridge.exchange(actor_token=mallory, actor_token_type=AT, requested_subject="bob")
    refused(r, 400, "unauthorized_client", "user's token", "service token")
    line = bridge.last_audit()
    assert (line["outcome"], line["actor_issuer"], line["actor_client"]) == (
        "refused",
        kind,
        "portal",
    )
    assert line["actor_sub"] and "user" not in line

    actor = _service_token_of_portal(idps, kind)
    r = bridge.exchange(actor_token=actor, actor_token_type=AT, requested_subject="bob")
    assert r.status_code == 200, r.json
    assert r.json["slurm_user"] == "bob"
    line = bridge.last_audit()
    assert (line["outcome"], line["kind"], line["user"]) == ("minted", "delegated", "bob")
    assert (line["actor_issuer"], line["actor_client"]) == (kind, "portal")
    assert line["actor_sub"]


@pytest.mark.parametrize("door", ["browser", "cli"])
def test_login_client_as_actor_is_refused_at_start(idps: Idps, door: str) -> None:
    """A client that hands user tokens to everyone who logs in cannot be an actor."""
    entries = issuers(idps)
    kc = entries[0]
    data: dict[str, Any] = {"issuers": entries}
    if door == "browser":
        kc.update(client_id="portal", audiences=["portal"], token_use=["access", "id"])
    else:
        data["cli_login"] = {"issuer": "kc", "client_id": "portal"}
    data["delegation"] = {"actors": [{"issuer": "kc", "client_id": "portal"}]}
    with pytest.raises(SettingsError) as exc:
        parse_settings(data)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("delegation.actors[0].client_id: 'portal' is the bridge's")


def test_oidc_service_token_rule_is_configurable(
    idps: Idps, tmp_path: Path, keys_dir: Path
) -> None:
    """An IdP that lets users pick their subject: a user named like the client must not pass
    as the client (service_tokens = claim:gty=client-credentials)."""
    entries = issuers(idps)
    entries[3]["service_tokens"] = "claim:gty=client-credentials"
    bridge = Bridge(
        {
            "issuers": entries,
            "mapping": {**NO_LOCAL, "rules": [{"claim": "preferred_username"}]},
            "service_accounts": [{"issuer": "oidc", "client_id": "portal", "account": "svcp"}],
        },
        tmp_path,
        keys_dir,
    )
    same_sub = idps.oidc.mint(
        idps.oidc.oidc_claims(sub="portal", aud="bridge", azp="portal", scope="openid")
    )
    r = bridge.exchange(same_sub)
    refused(r, 403, "access_denied", "no mapping rule matched")
    service = idps.oidc.mint(
        idps.oidc.oidc_claims(
            sub="portal", aud="bridge", client_id="portal", gty="client-credentials"
        )
    )
    r = bridge.exchange(service)
    assert r.status_code == 200 and r.json["slurm_user"] == "svcp", r.json
    for bad in ("claim:gty", "claim:=x", "sometimes"):
        entries[3]["service_tokens"] = bad
        with pytest.raises(SettingsError, match=r"issuers\[3\]\.service_tokens: must be"):
            parse_settings({"issuers": entries})
    entries[3]["service_tokens"] = "none"
    entries[0]["service_tokens"] = "none"
    with pytest.raises(SettingsError, match=r"issuers\[0\]\.service_tokens: only for kind oidc"):
        parse_settings({"issuers": entries})


# ---------------------------------------------------------------- 2. Entra tenants


def _evil_alice(idps: Idps) -> str:
    return idps.entra.mint(
        idps.entra.entra_claims(
            tid=EVIL_TENANT, aud="api://bridge", client="portal", username="alice@evil.example"
        )
    )


def test_entra_issuer_for_every_tenant_is_refused_at_start(
    idps: Idps, tmp_path: Path, keys_dir: Path
) -> None:
    """An attacker's own tenant signs alice@evil; strip_domain would make it alice."""
    entries = issuers(idps, tenants=[])
    rules = [{"issuer": "entra", "claim": "upn", "strip_domain": True}]
    with pytest.raises(SettingsError) as exc:
        Bridge({"issuers": entries, "mapping": {**NO_LOCAL, "rules": rules}}, tmp_path, keys_dir)
    assert str(exc.value).startswith("issuers[2].tenants: list the trusted tenant ids")
    # Said on purpose: then no rule may drop or ignore the tenant.
    entries = issuers(idps, tenants=[], allow_any_tenant=True)
    for rule in (
        {"issuer": "entra", "claim": "upn", "strip_domain": True},
        {"issuer": "*", "claim": "preferred_username"},
        {"issuer": "entra", "claim": "email", "table": {"a@b.example": "alice"}},
    ):
        with pytest.raises(SettingsError, match=r"^mapping\.rules\[0\]: issuer 'entra' has allow"):
            parse_settings({"issuers": entries, "mapping": {"rules": [rule]}})
    with pytest.raises(SettingsError, match=r"allow_any_tenant: set tenants or allow_any_tenant"):
        parse_settings({"issuers": issuers(idps, allow_any_tenant=True)})


def test_entra_any_tenant_maps_only_exact_values(
    idps: Idps, tmp_path: Path, keys_dir: Path
) -> None:
    entries = issuers(idps, tenants=[], allow_any_tenant=True)
    table = {"alice@contoso.example": "alice"}
    rules = [{"issuer": "entra", "claim": "upn", "table": table, "table_only": True}]
    bridge = Bridge(
        {"issuers": entries, "mapping": {**NO_LOCAL, "rules": rules}}, tmp_path, keys_dir
    )
    refused(bridge.exchange(_evil_alice(idps)), 403, "access_denied", "no mapping rule matched")
    assert bridge.last_audit()["outcome"] == "refused"
    good = idps.entra.mint(
        idps.entra.entra_claims(
            tid=EVIL_TENANT, aud="api://bridge", client="portal", username="alice@contoso.example"
        )
    )
    r = bridge.exchange(good)
    assert r.status_code == 200 and r.json["slurm_user"] == "alice", r.json


def test_entra_tenant_list_refuses_a_stranger(idps: Idps, tmp_path: Path, keys_dir: Path) -> None:
    rules = [{"issuer": "entra", "claim": "upn", "strip_domain": True}]
    bridge = Bridge(
        {"issuers": issuers(idps), "mapping": {**NO_LOCAL, "rules": rules}}, tmp_path, keys_dir
    )
    refused(bridge.exchange(_evil_alice(idps)), 400, "invalid_grant", "tenant", "not allowed")
    assert bridge.last_audit()["outcome"] == "refused"


def test_browser_login_finds_entra_discovery_as_the_verifier_does(
    idps: Idps, keys_dir: Path
) -> None:
    """A {tenantid} login issuer: the login door must fetch .../organizations/v2.0 discovery."""
    entra = {
        "name": "entra",
        "kind": "entra",
        "issuer": idps.entra.issuer,
        "audiences": ["api://bridge", "bridge-web"],
        "tenants": [TENANT],
        "token_use": ["access", "id"],
        "client_id": "bridge-web",
        "client_secret": "s3cret",
    }
    settings = parse_settings(
        {
            "keys": {"dir": str(keys_dir)},
            "audit": {"destination": "none"},
            "browser": {"secure_cookies": False},
            "issuers": [entra],
        }
    )
    client = create_app(settings).test_client()
    r = client.get("/login")
    assert r.status_code == 302, r.get_data(as_text=True)[:500]
    assert "/authorize?" in r.headers["Location"]
    assert idps.entra.discovery_requests == 1


# ---------------------------------------------------------------- 3. Keycloak client roles


def test_keycloak_client_role_does_not_satisfy_a_realm_role(
    idps: Idps, tmp_path: Path, keys_dir: Path
) -> None:
    """Mallory holds a role "hpc-user" on some unrelated client she administers."""
    rules = [{"issuer": "kc", "claim": "preferred_username", "require_roles": ["hpc-user"]}]
    bridge = Bridge(
        {"issuers": issuers(idps), "mapping": {**NO_LOCAL, "rules": rules}}, tmp_path, keys_dir
    )
    token = idps.kc.mint(
        idps.kc.keycloak_claims(
            azp="portal", username="mallory", client_roles={"mallorys-app": ["hpc-user"]}
        )
    )
    refused(bridge.exchange(token), 403, "access_denied", "needs a role in ['hpc-user']")
    assert bridge.last_audit()["outcome"] == "refused"
    # the client role counts under its own name
    rules[0]["require_roles"] = ["mallorys-app:hpc-user"]
    bridge = Bridge(
        {"issuers": issuers(idps), "mapping": {**NO_LOCAL, "rules": rules}}, tmp_path, keys_dir
    )
    assert bridge.exchange(token).json["slurm_user"] == "mallory"


# ---------------------------------------------------------------- 4. policy by uid


@pytest.fixture(scope="module")
def twins() -> Iterator[tuple[str, str]]:
    """A real account and a second passwd entry with the same uid (useradd -o)."""
    if os.geteuid() != 0:
        skip_or_fail("creating passwd entries needs root")
    first, second = "sjbtwin1", "sjbtwin2"
    created = []
    try:
        subprocess.run(
            ["useradd", "-M", "-N", "-K", "UID_MIN=1000", "-s", "/usr/sbin/nologin", first],
            check=True,
            capture_output=True,
        )
        created.append(first)
        uid = subprocess.run(["id", "-u", first], check=True, capture_output=True, text=True)
        subprocess.run(
            ["useradd", "-M", "-N", "-o", "-u", uid.stdout.strip(), "-s", "/bin/false", second],
            check=True,
            capture_output=True,
        )
        created.append(second)
        yield first, second
    finally:
        for name in reversed(created):
            subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.mark.parametrize("policy", ["slurm_user", "deny_users"])
def test_alias_with_the_same_uid_is_refused(
    idps: Idps, tmp_path: Path, keys_dir: Path, twins: tuple[str, str], policy: str
) -> None:
    protected, alias = twins
    value: Any = protected if policy == "slurm_user" else [protected]
    bridge = Bridge(
        {
            "issuers": issuers(idps),
            "policy": {policy: value},
            "mapping": {"rules": [{"issuer": "oidc", "claim": "preferred_username"}]},
        },
        tmp_path,
        keys_dir,
    )
    token = idps.oidc.mint(
        idps.oidc.oidc_claims(sub="x1", aud="bridge", preferred_username=alias, scope="openid")
    )
    refused(bridge.exchange(token), 403, "access_denied", alias, protected)
    line = bridge.last_audit()
    assert line["outcome"] == "refused" and line["user"] == alias


# ---------------------------------------------------------------- 5. settled with a test


def test_keycloak_human_named_like_a_service_account_is_no_service(
    idps: Idps, tmp_path: Path, keys_dir: Path
) -> None:
    """A person whose user name is "service-account-svc-batch" logs in through svc-batch."""
    bridge = Bridge(
        {
            "issuers": issuers(idps),
            "mapping": {**NO_LOCAL, "rules": [{"issuer": "kc", "claim": "nickname"}]},
            "service_accounts": [{"issuer": "kc", "client_id": "svc-batch", "account": "batch"}],
        },
        tmp_path,
        keys_dir,
    )
    human = idps.kc.keycloak_claims(azp="svc-batch", username="service-account-svc-batch")
    refused(bridge.exchange(idps.kc.mint(human)), 403, "access_denied", "no mapping rule")
    assert bridge.last_audit()["outcome"] == "refused"
    # Keycloak's service-account token: the name and clientId (before 24) or client_id (24+).
    for mark in ("clientId", "client_id"):
        r = bridge.exchange(idps.kc.mint({**human, mark: "svc-batch"}))
        assert r.status_code == 200 and r.json["slurm_user"] == "batch", r.json


def test_lookup_command_gets_the_claim_after_double_dash(
    idps: Idps, tmp_path: Path, keys_dir: Path
) -> None:
    """A site's getopts script: -u NAME overrides the lookup; the claim value is "-uvictim"."""
    script = tmp_path / "lookup.sh"
    script.write_text(
        "#!/bin/sh\n"
        'while getopts "u:" opt; do case $opt in u) echo "$OPTARG"; exit 0;; esac; done\n'
        'shift $((OPTIND - 1))\ncase "$1" in ada@lab.example) echo ada;; esac\n'
    )
    script.chmod(0o755)
    rules = [{"issuer": "oidc", "claim": "email", "command": [str(script)]}]
    bridge = Bridge(
        {"issuers": issuers(idps), "mapping": {**NO_LOCAL, "rules": rules}}, tmp_path, keys_dir
    )

    def token(email: str) -> str:
        return idps.oidc.mint(
            idps.oidc.oidc_claims(sub="m1", aud="bridge", email=email, scope="openid")
        )

    refused(bridge.exchange(token("-uvictim")), 403, "access_denied", "no mapping rule")
    r = bridge.exchange(token("ada@lab.example"))
    assert r.status_code == 200 and r.json["slurm_user"] == "ada", r.json


def test_generic_id_token_without_nonce_is_not_an_access_token(
    idps: Idps, tmp_path: Path, keys_dir: Path
) -> None:
    """An ID token of the bridge's login client without nonce (refreshed or device-grant ID
    tokens carry none) presented where only access tokens count."""
    entries = issuers(idps)
    entries[3].update(audiences=["bridge", "bridge-web"], client_id="bridge-web")
    entries[3]["token_use"] = ["access", "id"]
    bridge = Bridge(
        {"issuers": entries, "mapping": {**NO_LOCAL, "rules": [{"claim": "preferred_username"}]}},
        tmp_path,
        keys_dir,
    )
    id_token = idps.oidc.oidc_claims(
        sub="a1", aud="bridge-web", preferred_username="alice", auth_time=idps.oidc.now()
    )
    refused(bridge.exchange(idps.oidc.mint(id_token)), 400, "invalid_grant", "got 'id'")
    assert bridge.last_audit()["outcome"] == "refused"
    for access in ({"scope": "openid"}, {"client_id": "bridge-web"}, {"aud": "bridge"}):
        r = bridge.exchange(idps.oidc.mint({**id_token, **access}))
        assert r.status_code == 200 and r.json["slurm_user"] == "alice", (access, r.json)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            '[[issuers]]\nname = "kc"\nkind = "keycloak"\nissuer = "https://sso.example/realms/x"\n'
            'allowed_clients = ["portal"]\n[cli_login]\nissuer = "kc"\nclient_id = "portal"\n'
            '[[delegation.actors]]\nissuer = "kc"\nclient_id = "portal"\n',
            "delegation.actors[0].client_id: 'portal' is the bridge's terminal-login",
        ),
        (
            '[[issuers]]\nname = "entra"\nkind = "entra"\n'
            'issuer = "https://login.microsoftonline.com/{tenantid}/v2.0"\n'
            'audiences = ["api://bridge"]\n',
            "issuers[0].tenants: list the trusted tenant ids",
        ),
    ],
)
def test_unsafe_trust_is_refused_at_start_with_one_line(
    tmp_path: Path, keys_dir: Path, config: str, message: str
) -> None:
    """The CLI door: any command refuses such a configuration, with one line on stderr."""
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(config)
    exe = Path(sys.executable).parent / "slurm-jwt-bridge"
    r = subprocess.run(
        [str(exe), "mint", "alice", "--config", str(cfg), "--keys-dir", str(keys_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"slurm-jwt-bridge: error: {message}"), r.stderr


def test_login_answer_must_name_the_issuer_it_was_sent_to(
    idps: Idps, keys_dir: Path, tmp_path: Path
) -> None:
    """RFC 9207 at the shared callback: a wrong iss, or none from an issuer that always sends
    it, is refused before any code exchange, with an audit line."""
    doc = idps.oidc.discovery()
    idps.oidc.discovery = lambda: {**doc, "authorization_response_iss_parameter_supported": True}
    login = {
        "name": "oidc",
        "kind": "oidc",
        "issuer": idps.oidc.issuer,
        "audiences": ["bridge-web"],
        "token_use": ["access", "id"],
        "client_id": "bridge-web",
    }
    audit = tmp_path / "audit.log"
    settings = parse_settings(
        {
            "keys": {"dir": str(keys_dir)},
            "audit": {"destination": f"file:{audit}"},
            "browser": {"secure_cookies": False},
            "issuers": [login],
        }
    )
    browser = create_app(settings).test_client()
    for iss, words in (
        (idps.kc.issuer, "the answer comes from issuer"),
        (None, "carries no iss"),
    ):
        assert browser.get("/login").status_code == 302
        query = "code=c0de&state=st4te" + (f"&iss={iss}" if iss else "")
        r = browser.get("/auth/callback?" + query)
        page = r.get_data(as_text=True)
        assert r.status_code == 400 and words in page, page[:500]
        line = json.loads(audit.read_text().splitlines()[-1])
        assert (line["event"], line["outcome"]) == ("login", "refused")
        assert words in line["reason"]
