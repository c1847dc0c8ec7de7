"""A cached Slurm token that slurmctld refuses, signed by a key that is no longer the active one
(a rotation since it was minted), is dropped and the request is sent once more with a token of
the current key; a refusal of the current key's token is answered as it is."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import KeyRing, rotate_keys
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.proxy_settings import proxy_settings_data


class Slurmrestd(http.server.BaseHTTPRequestHandler):
    """Accepts tokens of the kids in ``known``; 511 with Slurm's error for any other."""

    known: set[str] = set()
    seen: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        kid = jwt.get_unverified_header(self.headers["X-SLURM-USER-TOKEN"])["kid"]
        type(self).seen.append(kid)
        ok = kid in type(self).known
        body = json.dumps(
            {"jobs": []}
            if ok
            else {"errors": [{"error": "Protocol authentication error", "error_number": 1007}]}
        ).encode()
        self.send_response(200 if ok else 511)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def slurmrestd() -> Iterator[tuple[str, type[Slurmrestd]]]:
    handler = type("H", (Slurmrestd,), {"known": set(), "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def _served_once(
    keys_dir: Path, tmp_path: Path, idp: Any, url: str, handler: Any
) -> tuple[Any, dict[str, str], str]:
    """A client of a bridge proxying to ``url`` whose first GET for alice went through with
    the active key (the controller knows it): (client, her Bearer header, that key's kid)."""
    data = proxy_settings_data(keys_dir, tmp_path, idp, {"upstream": url})
    data["keys"]["reload_interval"] = 0
    client = create_app(parse_settings(data, tmp_path)).test_client()
    bearer = {
        "Authorization": "Bearer "
        + idp.mint(idp.oidc_claims(sub="s-alice", aud="bridge", preferred_username="alice"))
    }
    first = KeyRing.load(keys_dir).active.kid
    handler.known = {first}
    assert client.get("/slurm/v0.0.44/jobs", headers=bearer).status_code == 200
    return client, bearer, first


def test_token_of_an_old_key_is_reminted_once(
    keys_dir: Path, tmp_path: Path, idp: Any, slurmrestd: tuple[str, Any]
) -> None:
    url, handler = slurmrestd
    client, bearer, first = _served_once(keys_dir, tmp_path, idp, url, handler)
    # Rotated; the controller now knows only the new key (the old one was revoked there).
    rotate_keys(keys_dir, 3600, 300)
    second = KeyRing.load(keys_dir).active.kid
    handler.known = {second}
    r = client.get("/slurm/v0.0.44/jobs", headers=bearer)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert handler.seen[-2:] == [first, second]
    # The current key refused: no second try, the refusal says which key.
    handler.known = set()
    r = client.get("/slurm/v0.0.44/jobs", headers=bearer)
    assert r.status_code == 401 and r.json["kid"] == second
    assert handler.seen[-1] == second and handler.seen.count(second) == 2


def test_a_refusal_of_the_new_token_too_is_the_proxys_401_and_audited(
    keys_dir: Path, tmp_path: Path, idp: Any, slurmrestd: tuple[str, Any]
) -> None:
    """Rotated, and the controller knows neither key (its JWKS was not synced): the cached
    token is refused, the new key's token is refused too, and the answer is the proxy's own
    401 naming the new kid (not slurmrestd's raw 511), with one audit line for it."""
    url, handler = slurmrestd
    client, bearer, first = _served_once(keys_dir, tmp_path, idp, url, handler)
    rotate_keys(keys_dir, 3600, 300)
    second = KeyRing.load(keys_dir).active.kid
    handler.known = set()
    r = client.get("/slurm/v0.0.44/jobs", headers=bearer)
    assert r.status_code == 401 and r.json["error"] == "slurm_token_refused"
    assert r.json["kid"] == second and handler.seen[-2:] == [first, second]
    lines = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    refused = [a for a in lines if a["event"] == "slurmrestd"]
    assert [(a["outcome"], a["kid"], a["status"]) for a in refused] == [("refused", second, 511)]
