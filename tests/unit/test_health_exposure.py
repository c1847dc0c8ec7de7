"""``/readyz`` and ``/metrics`` to a client outside ``[server] internal_allow``: a bare yes/no
and 403, nothing about internal URLs, error texts or key files; and a probe never waits for an
identity provider."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.test_issuer import TestIssuer

OUTSIDE = {"REMOTE_ADDR": "203.0.113.9"}


def app_for(keys_dir: Path, issuer: str, **server: Any) -> Any:
    return create_app(
        parse_settings(
            {
                "server": server,
                "keys": {"dir": str(keys_dir)},
                "audit": {"destination": "none"},
                "browser": {"enabled": False},
                "issuers": [
                    {
                        "name": "idp",
                        "kind": "oidc",
                        "issuer": issuer,
                        "audiences": ["bridge"],
                        "http_timeout": 30,
                    }
                ],
                "mapping": {"rules": [{"claim": "preferred_username"}]},
            },
            keys_dir.parent,
        )
    )


def test_readyz_and_metrics_say_nothing_internal_to_the_public(keys_dir: Path) -> None:
    server = TestIssuer().start()
    idp = server.add_issuer("/internal-realm")
    idp.mode = "down"
    try:
        client = app_for(keys_dir, idp.issuer).test_client()
        resp = client.get("/readyz", environ_base=OUTSIDE)
        body = resp.get_data(as_text=True)
        assert resp.status_code == 503
        assert resp.json == {"ready": False}
        assert "internal-realm" not in body and str(keys_dir) not in body
        metrics = client.get("/metrics", environ_base=OUTSIDE)
        assert metrics.status_code == 403
        assert "slurm_jwt_bridge" not in metrics.get_data(as_text=True)
        # from an allowed address (loopback by default) the details remain
        inside = client.get("/readyz")
        assert inside.json["checks"]["issuers"]["idp"]["jwks_present"] is False
        assert client.get("/metrics").status_code == 200
    finally:
        server.stop()


def test_internal_allow_names_who_sees_the_details(keys_dir: Path) -> None:
    with TestIssuer() as server:
        idp = server.add_issuer("/r")
        client = app_for(keys_dir, idp.issuer, internal_allow=["203.0.113.0/24"]).test_client()
        assert client.get("/metrics", environ_base=OUTSIDE).status_code == 200
        assert "checks" in client.get("/readyz", environ_base=OUTSIDE).json
        assert client.get("/metrics").status_code == 403  # loopback no longer listed


def test_a_probe_does_not_wait_for_a_slow_identity_provider(keys_dir: Path) -> None:
    """The IdP holds its answer for longer than the probe is given to answer (the bridge would
    wait up to http_timeout = 30 s for it); the probe must answer from what it has."""
    server = TestIssuer().start()
    idp = server.add_issuer("/slow")
    idp.mode = "slow"
    idp.slow_seconds = 60
    try:
        client = app_for(keys_dir, idp.issuer).test_client()
        answered = threading.Event()
        result: dict[str, Any] = {}

        def probe() -> None:
            result["status"] = client.get("/readyz").status_code
            answered.set()

        t = threading.Thread(target=probe, daemon=True)
        t.start()
        assert answered.wait(15), "the probe waited for the identity provider"
        assert result["status"] == 503  # no keys yet: not ready, and said so at once
    finally:
        server.stop()
