"""Attacks found by the adversarial review of the identity pipeline, each refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_jwt_bridge.errors import BridgeError
from slurm_jwt_bridge.identity import IdentityMapper
from slurm_jwt_bridge.provider_profiles import oidc_service
from slurm_jwt_bridge.settings import IssuerSettings, SettingsError, parse_settings


def mapper(*rules: dict) -> IdentityMapper:
    settings = parse_settings({"mapping": {"require_local_account": False, "rules": list(rules)}})
    return IdentityMapper(settings.mapping)


def refused(m: IdentityMapper, claims: dict) -> BridgeError:
    with pytest.raises(BridgeError) as info:
        m.map("kc", claims)
    return info.value


def oidc_issuer(rule: str = "sub_is_client") -> IssuerSettings:
    return parse_settings(
        {
            "issuers": [
                {
                    "name": "op",
                    "kind": "oidc",
                    "issuer": "https://op.example.org",
                    "audiences": ["bridge"],
                    "service_tokens": rule,
                }
            ]
        }
    ).issuers[0]


def test_a_person_whose_sub_is_a_client_id_is_not_that_client() -> None:
    iss = oidc_issuer()
    service = {"sub": "portal", "client_id": "portal", "scope": "api"}
    assert oidc_service(iss, service, "portal")
    for marker in ("auth_time", "sid", "preferred_username", "email", "nonce", "acr"):
        person = {**service, marker: "x"}
        assert not oidc_service(iss, person, "portal"), marker
    # A login with no profile claims at all still asked for the openid scope.
    assert not oidc_service(iss, {**service, "scope": "openid profile"}, "portal")


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        (
            {
                "claim": "upn",
                "regex": "(?P<user>[^@]+)@.+",
                "table": {"alice": "alice"},
                "table_only": True,
            },
            "a regex can drop the tenant's domain",
        ),
        ({"claim": "verified_primary_email", "regex": "(?P<user>[^@]+)@.+"}, "a regex"),
        ({"claim": "onprem_sid"}, "without a table_only table"),
        (
            {"claim": "upn", "table": {"a@t": "alice"}, "table_only": True, "command": ["/bin/x"]},
            "a lookup command",
        ),
    ],
)
def test_any_tenant_rules_that_could_map_a_stranger_are_refused(rule: dict, why: str) -> None:
    entra = {
        "name": "entra",
        "kind": "entra",
        "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
        "audiences": ["api://bridge"],
        "allow_any_tenant": True,
    }
    with pytest.raises(SettingsError, match=why):
        parse_settings({"issuers": [entra], "mapping": {"rules": [{"issuer": "entra", **rule}]}})
    exact = {
        "issuer": "entra",
        "claim": "upn",
        "table": {"a@t.example": "alice"},
        "table_only": True,
    }
    parse_settings({"issuers": [entra], "mapping": {"rules": [exact]}})


@pytest.mark.parametrize("value", ["alice@uni.edu\nmallory@uni.edu", "al\x00ice", "alice\u2028"])
def test_control_characters_never_map(value: str, tmp_path: Path) -> None:
    script = tmp_path / "lookup"
    script.write_text('#!/bin/sh\nread -r line\necho "${line%%@*}"\n')
    script.chmod(0o755)
    for command_input in ("stdin", "argv"):
        m = mapper({"claim": "email", "command": [str(script)], "command_input": command_input})
        assert "email=" in refused(m, {"email": value}).reason
        assert refused(m, {"email": value}).metric == "unmapped"
    assert (
        mapper({"claim": "email", "command": [str(script)], "command_input": "stdin"})
        .map("kc", {"email": "alice@uni.edu"})
        .name
        == "alice"
    )


def test_unverified_email_names_nobody() -> None:
    m = mapper({"claim": "email", "regex": r"(?P<user>[a-z]+)@example\.org"})
    for flag in (False, "false"):
        e = refused(m, {"email": "alice@example.org", "email_verified": flag})
        assert "email not verified" in e.reason
    assert m.map("kc", {"email": "alice@example.org", "email_verified": True}).name == "alice"
