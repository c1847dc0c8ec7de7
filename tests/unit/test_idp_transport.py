"""Identity-provider traffic over plain http: whoever can spoof it injects a signing key (or an
introspection "active": true). Refused except to this machine or with a per-issuer, loud
``allow_insecure_http = true``.

The network attacker is an httpx transport answering for the hosts named: it sees and answers
exactly what an on-path attacker would, and the verifier under test is the real one.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import jwt
import pytest

from slurm_jwt_bridge.errors import BridgeError
from slurm_jwt_bridge.settings import IssuerSettings, SettingsError, parse_settings
from slurm_jwt_bridge.upstream import UpstreamVerifier
from tests.helpers.test_issuer import SigningKey

ISSUER = "https://idp.example.org"


def on_path(answers: dict[str, dict[str, Any]], seen: list[str]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        seen.append(url)
        if url in answers:
            return httpx.Response(200, json=answers[url])
        return httpx.Response(404)

    return httpx.Client(transport=httpx.MockTransport(handler))


def forged(key: SigningKey) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "x", "aud": "bridge", "iat": now, "exp": now + 300}
    claims["preferred_username"] = "alice"
    return jwt.encode(claims, key.private_key, "RS256", headers={"kid": key.kid})


def test_http_jwks_uri_from_a_discovery_document_is_not_fetched() -> None:
    """The discovery document (fetched over https) names an http jwks_uri; the attacker on the
    path answers that request with its own key and signs a token with it."""
    attacker = SigningKey("RS256")
    jwks_http = "http://idp.example.org/jwks"
    seen: list[str] = []
    client = on_path(
        {
            ISSUER + "/.well-known/openid-configuration": {"issuer": ISSUER, "jwks_uri": jwks_http},
            jwks_http: {"keys": [attacker.jwk(include_alg=True)]},
        },
        seen,
    )
    s = IssuerSettings(name="idp", kind="oidc", issuer=ISSUER, audiences=("bridge",))
    verifier = UpstreamVerifier([s], http=client)
    with pytest.raises(BridgeError) as err:
        verifier.verify(forged(attacker))
    assert err.value.status == 503
    assert jwks_http not in seen
    assert "http" in (verifier.health()["idp"]["last_error"] or "")


def test_http_jwks_uri_from_discovery_is_fetched_when_allowed_explicitly() -> None:
    key = SigningKey("RS256")
    jwks_http = "http://idp.example.org/jwks"
    client = on_path(
        {
            ISSUER + "/.well-known/openid-configuration": {"issuer": ISSUER, "jwks_uri": jwks_http},
            jwks_http: {"keys": [key.jwk(include_alg=True)]},
        },
        [],
    )
    s = IssuerSettings(
        name="idp", kind="oidc", issuer=ISSUER, audiences=("bridge",), allow_insecure_http=True
    )
    assert UpstreamVerifier([s], http=client).verify(forged(key)).subject == "x"


def config(tmp_path: Any, **issuer: Any) -> dict[str, Any]:
    base = {"name": "kc", "kind": "keycloak", "audiences": ["bridge"]}
    return {
        "keys": {"dir": str(tmp_path / "keys")},
        "issuers": [base | issuer],
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"issuer": "http://keycloak.example.org/realms/hpc"},
        {
            "issuer": "https://keycloak.example.org/realms/hpc",
            "discovery_url": "http://keycloak:8080/realms/hpc/.well-known/openid-configuration",
        },
        {
            "issuer": "https://keycloak.example.org/realms/hpc",
            "jwks_uri": "http://keycloak:8080/realms/hpc/protocol/openid-connect/certs",
        },
        {
            "issuer": "http://keycloak.example.org/realms/hpc",
            "introspection": {"client_id": "bridge", "client_secret": "s"},
        },
    ],
)
def test_http_to_another_machine_is_refused_at_start(tmp_path: Any, fields: dict) -> None:
    with pytest.raises(SettingsError) as err:
        parse_settings(config(tmp_path, **fields), tmp_path)
    assert "allow_insecure_http" in str(err.value)
    assert "\n" not in str(err.value)


def test_loopback_http_is_accepted(tmp_path: Any) -> None:
    s = parse_settings(config(tmp_path, issuer="http://127.0.0.1:8080/realms/hpc"), tmp_path)
    assert s.issuers[0].allow_insecure_http is False
    s = parse_settings(config(tmp_path, issuer="http://localhost:8080/realms/hpc"), tmp_path)
    assert s.issuers[0].issuer.startswith("http://localhost")


def test_explicit_allow_insecure_http_is_accepted_and_loud(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fields = {
        "issuer": "https://keycloak.example.org/realms/hpc",
        "jwks_uri": "http://keycloak:8080/realms/hpc/protocol/openid-connect/certs",
        "allow_insecure_http": True,
    }
    with caplog.at_level(logging.WARNING):
        s = parse_settings(config(tmp_path, **fields), tmp_path)
    assert s.issuers[0].allow_insecure_http is True
    assert any("allow_insecure_http" in r.getMessage() for r in caplog.records)
