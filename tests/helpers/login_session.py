"""In-process browser login for tests: the ``[[issuers]]`` entry of a login issuer (``oidc``,
ID and access tokens for the audience and client ``bridge``) and the grant a login leaves in
the session (plant it with tests/helpers/sessions.py)."""

from __future__ import annotations

import time
from typing import Any


def login_issuer(issuer: str) -> dict[str, Any]:
    return {
        "name": "oidc",
        "kind": "oidc",
        "issuer": issuer,
        "audiences": ["bridge"],
        "token_use": ["access", "id"],
        "client_id": "bridge",
    }


def login_grant(user: str = "alice", not_after: int | None = None) -> dict[str, Any]:
    """``not_after``: the ID token's exp (default in 10 minutes)."""
    return {
        "user": user,
        "issuer": "oidc",
        "subject": user,
        "client": "bridge",
        "kind": "user",
        "max_lifetime": None,
        "algs": ["RS256"],
        "not_after": int(time.time()) + 600 if not_after is None else not_after,
    }
