"""A browser session planted through Flask's test client, sealed as the login callback seals
it (web/browser.py session_seal), so a test can start from "logged in as alice"."""

from __future__ import annotations

import time
from typing import Any

from slurm_jwt_bridge.web.browser import session_seal


def plant_session(client: Any, **values: Any) -> None:
    """Write ``values`` into the client's server-side session and seal them."""
    key = client.application.secret_key
    with client.session_transaction() as sess:
        sess.update(values)
        sess["seal"] = session_seal(key, sess.sid, sess.get("grant"), sess.get("ends"))


def session_grant(user: str = "alice") -> dict[str, Any]:
    """The grant a browser login leaves in the session for ``user`` (issuer "oidc")."""
    return {
        "user": user,
        "issuer": "oidc",
        "subject": user,
        "client": "web",
        "kind": "user",
        "max_lifetime": None,
        "algs": ["RS256", "HS256"],
        "not_after": int(time.time()) + 600,
    }


def logged_in(app: Any, user: str = "alice") -> Any:
    """A test client holding a browser session for ``user`` (as the login callback leaves it)."""
    client = app.test_client()
    plant_session(client, grant=session_grant(user), ends=int(time.time()) + 3600, csrf="x")
    return client
