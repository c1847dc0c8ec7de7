"""The browser door maps the claims a site expects: Keycloak puts realm roles in the access token
the login returns, not in the ID token (examples/config/keycloak.toml requires a role)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from slurm_jwt_bridge import build_bridge
from slurm_jwt_bridge.errors import BridgeError
from slurm_jwt_bridge.pipeline import Request
from slurm_jwt_bridge.settings import parse_settings

BRIDGE_AUD = "https://hpc.example.org"


@pytest.fixture
def pipeline(idp: Any, keys_dir: Path, tmp_path: Path) -> Any:
    settings = parse_settings(
        {
            "keys": {"dir": str(keys_dir)},
            "audit": {"destination": "none"},
            "issuers": [
                {
                    "name": "kc",
                    "kind": "oidc",
                    "issuer": idp.issuer,
                    "audiences": [BRIDGE_AUD, "web"],
                    "allowed_clients": ["web"],
                    "token_use": ["access", "id"],
                    "client_id": "web",
                    "client_secret": "s",
                }
            ],
            "mapping": {
                "require_local_account": False,
                "rules": [
                    {"issuer": "kc", "claim": "preferred_username", "require_roles": ["hpc-user"]}
                ],
            },
        },
        tmp_path,
    )
    return build_bridge(settings).pipeline


def tokens(idp: Any, *, sub: str = "s-alice", access_roles: tuple[str, ...] = ("hpc-user",)):
    now = idp.now()
    id_token = idp.mint(
        {"sub": "s-alice", "aud": "web", "azp": "web", "nonce": "n", "preferred_username": "alice"}
    )
    access = idp.mint(
        {
            "sub": sub,
            "aud": BRIDGE_AUD,
            "azp": "web",
            "scope": "openid",
            "preferred_username": "alice",
            "roles": list(access_roles),
            "exp": now + 120,
        },
        header={"typ": "at+jwt"},
    )
    return id_token, access


def test_roles_from_the_access_token_of_the_login(pipeline: Any, idp: Any) -> None:
    id_token, access = tokens(idp)
    ends = idp.now() + 3600
    with pytest.raises(BridgeError, match=r"claims of the login's ID token"):
        pipeline.login(id_token, ends, Request(door="browser"))
    result = pipeline.login(id_token, ends, Request(door="browser"), access_token=access)
    assert result.grant.user == "alice"
    # never past either upstream token
    assert result.token.exp <= idp.now() + 120


def test_an_access_token_for_another_subject_is_not_used(pipeline: Any, idp: Any) -> None:
    id_token, access = tokens(idp, sub="s-mallory")
    with pytest.raises(BridgeError, match=r"claims of the login's ID token"):
        pipeline.login(id_token, idp.now() + 3600, Request(door="browser"), access_token=access)


def test_a_refusal_names_the_access_token_it_checked(pipeline: Any, idp: Any) -> None:
    id_token, access = tokens(idp, access_roles=("other",))
    with pytest.raises(BridgeError, match=r"needs a role .*claims of the login's access token"):
        pipeline.login(id_token, idp.now() + 3600, Request(door="browser"), access_token=access)
