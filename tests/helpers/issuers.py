"""In-process bridge settings for unit tests, and the multi-issuer environment they share.

``four_issuers()`` starts one local HTTP server (tests/helpers/test_issuer.py) playing a Keycloak
realm, a Cognito user pool, Entra ID's multi-tenant endpoint and a generic OIDC issuer;
``FourIssuers.issuers(...)`` gives their ``[[issuers]]`` entries, each updated with what a test
adds. ``bridge_data(...)`` is the settings data around them: the keys dir, the audit
destination, browser login off, and the given sections.

    with four_issuers() as idps:
        data = bridge_data(keys_dir, idps.issuers(kc={"allowed_clients": ["portal"]}))
        client = create_app(parse_settings(data)).test_client()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.test_issuer import IssuerHandle, TestIssuer

TENANT = "aaaaaaaa-0000-0000-0000-000000000001"
KEYCLOAK_JWKS = "/realms/hpc/protocol/openid-connect/certs"


def bridge_data(
    keys_dir: Path,
    issuers: list[dict[str, Any]],
    *,
    audit: str = "none",
    rules: list[dict[str, Any]] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """Settings data: ``keys_dir``, ``audit`` destination, browser login off, ``issuers``, a
    mapping on ``rules`` (default: preferred_username) without the local-account check, and
    any further top-level ``sections`` (``proxy={...}``, ``rate_limit={...}``)."""
    return {
        "keys": {"dir": str(keys_dir)},
        "audit": {"destination": audit},
        "browser": {"enabled": False},
        "issuers": issuers,
        "mapping": {
            "require_local_account": False,
            "rules": rules if rules is not None else [{"claim": "preferred_username"}],
        },
        **sections,
    }


def oidc_issuer(handle: IssuerHandle, **extra: Any) -> dict[str, Any]:
    """The ``[[issuers]]`` entry of a generic OIDC issuer named "oidc" with audience "bridge"."""
    return {
        "name": "oidc",
        "kind": "oidc",
        "issuer": handle.issuer,
        "audiences": ["bridge"],
        **extra,
    }


@dataclass
class FourIssuers:
    """One of each issuer kind, served by one local server."""

    server: TestIssuer
    kc: IssuerHandle
    cognito: IssuerHandle
    entra: IssuerHandle
    oidc: IssuerHandle

    def issuers(
        self,
        *,
        kc: dict[str, Any] | None = None,
        cognito: dict[str, Any] | None = None,
        entra: dict[str, Any] | None = None,
        oidc: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The four entries (names kc, cognito, entra, oidc), each updated with its argument."""
        return [
            {"name": "kc", "kind": "keycloak", "issuer": self.kc.issuer, **(kc or {})},
            {
                "name": "cognito",
                "kind": "cognito",
                "issuer": self.cognito.issuer,
                **(cognito or {}),
            },
            {
                "name": "entra",
                "kind": "entra",
                "issuer": self.entra.issuer,
                "audiences": ["api://bridge"],
                "tenants": [TENANT],
                "discovery_url": self.entra.discovery_url,
                **(entra or {}),
            },
            oidc_issuer(self.oidc, **(oidc or {})),
        ]


@contextlib.contextmanager
def four_issuers() -> Iterator[FourIssuers]:
    """A Keycloak realm, a Cognito pool, Entra's ``{tenantid}`` issuer (JWKS keys without alg)
    and a generic OIDC issuer on one local server, stopped afterwards."""
    server = TestIssuer().start()
    try:
        yield FourIssuers(
            server,
            kc=server.add_issuer("/realms/hpc", jwks_path=KEYCLOAK_JWKS),
            cognito=server.add_issuer("/eu-west-1_Pool1"),
            entra=server.add_issuer(
                "/organizations/v2.0", issuer_path="/{tenantid}/v2.0", jwk_alg_in_jwks=False
            ),
            oidc=server.add_issuer("/oidc"),
        )
    finally:
        server.stop()
