"""A keycloak issuer must not list a realm-wide audience Keycloak puts on tokens of every client.

Keycloak's "Audience Resolve" mapper (default client scope ``roles``) adds to an access token
every client on which the user holds a client role: ``account`` for every user by default,
``realm-management`` for realm administrators, ``broker`` for holders of its ``read-token`` role.
The keycloak profile accepts a token whose ``aud`` is one of ``audiences``, whichever client it was
issued to, so such an entry would let a token of any other client of the realm be exchanged.
"""

from __future__ import annotations

from typing import Any

import pytest

from slurm_jwt_bridge.errors import BridgeError
from slurm_jwt_bridge.settings import SettingsError, parse_settings
from tests.helpers.test_issuer import TestIssuer


def _keycloak(**extra: Any) -> dict[str, Any]:
    return {"name": "kc", "kind": "keycloak", "issuer": "https://kc.example/realms/hpc", **extra}


@pytest.mark.parametrize("aud", ["account", "broker", "realm-management"])
@pytest.mark.parametrize(
    "extra", [{}, {"allowed_clients": ["portal"]}], ids=["alone", "with-allowed_clients"]
)
def test_a_realm_wide_audience_is_refused_at_start(aud: str, extra: dict[str, Any]) -> None:
    issuer = _keycloak(audiences=["slurm-bridge", aud], **extra)
    with pytest.raises(SettingsError) as err:
        parse_settings({"issuers": [issuer]})
    line = str(err.value)
    assert "\n" not in line, line
    assert line.startswith("issuers[0].audiences:"), line
    assert "'kc'" in line and repr(aud) in line, line  # names the issuer and the value
    assert "every client" in line and "audience mapper" in line, line  # why, what to do
    assert "allowed_clients" in line, line


def test_the_bridges_own_audience_still_loads() -> None:
    s = parse_settings({"issuers": [_keycloak(audiences=["slurm-bridge"])]})
    assert s.issuers[0].audiences == ("slurm-bridge",)


def test_other_kinds_may_name_such_an_audience() -> None:
    """Only Keycloak adds these by itself; another provider's ``account`` is its own choice."""
    parse_settings(
        {
            "issuers": [
                {
                    "name": "op",
                    "kind": "oidc",
                    "issuer": "https://op.example",
                    "audiences": ["account"],
                }
            ]
        }
    )


def test_the_refused_entry_would_have_accepted_another_clients_token() -> None:
    """What the refusal prevents: under audiences = ["account"] the keycloak profile accepts
    a token Keycloak issued to an unrelated client of the realm (shown with the verifier the
    service builds, on settings built past the start-up rule)."""
    import dataclasses

    from slurm_jwt_bridge.upstream import UpstreamVerifier

    server = TestIssuer().start()
    kc = server.add_issuer("/realms/hpc", jwks_path="/realms/hpc/protocol/openid-connect/certs")
    ok = parse_settings(
        {
            "issuers": [
                {
                    **_keycloak(audiences=["slurm-bridge"]),
                    "issuer": kc.issuer,
                    "allow_insecure_http": True,
                }
            ]
        }
    ).issuers[0]
    unsafe = dataclasses.replace(ok, audiences=("account",))  # what the rule refuses
    foreign = kc.mint(kc.keycloak_claims(azp="some-unrelated-webapp", username="alice"))
    try:
        assert UpstreamVerifier([unsafe]).verify(foreign).subject
        with pytest.raises(BridgeError, match=r"azp|aud"):
            UpstreamVerifier([ok]).verify(foreign)
    finally:
        server.stop()
