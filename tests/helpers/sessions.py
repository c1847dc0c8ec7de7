"""A browser session planted through Flask's test client, sealed as the login callback seals
it (web/browser.py session_seal), so a test can start from "logged in as alice"."""

from __future__ import annotations

from typing import Any

from slurm_jwt_bridge.web.browser import session_seal


def plant_session(client: Any, **values: Any) -> None:
    """Write ``values`` into the client's server-side session and seal them."""
    key = client.application.secret_key
    with client.session_transaction() as sess:
        sess.update(values)
        sess["seal"] = session_seal(key, sess.sid, sess.get("grant"), sess.get("ends"))
