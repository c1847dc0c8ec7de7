"""``[server] proxy_fix``: an X-Forwarded-For that names no client is refused
(app/slurm_jwt_bridge/web/forwarded.py). Under granian a header value with a byte outside ASCII
reaches the app as an empty string; ProxyFix then kept the peer's address, and behind a proxy on
127.0.0.1 the client passed as the proxy (``internal_allow``, the proxy's rate-limit bucket)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import parse_settings
from slurm_jwt_bridge.web.forwarded import forwarded_client
from tests.helpers.proxy_settings import proxy_settings_data


def _client(keys_dir: Path, tmp_path: Path, idp: Any, proxy_fix: int) -> Client:
    data = proxy_settings_data(keys_dir, tmp_path, idp, None)
    data["server"] = {"proxy_fix": proxy_fix}
    return Client(create_app(parse_settings(data)))


@pytest.mark.parametrize(
    ("proxy_fix", "forwarded"),
    [
        (1, ""),  # what granian hands on for "\xe9, 198.51.100.7"
        (1, "198.51.100.7, "),
        (2, "198.51.100.7"),  # fewer entries than trusted hops
        (2, " , 127.0.0.1"),
    ],
)
def test_attack_a_lost_forwarded_address_does_not_pass_as_the_proxy(
    keys_dir: Path, tmp_path: Path, idp: Any, proxy_fix: int, forwarded: str
) -> None:
    client = _client(keys_dir, tmp_path, idp, proxy_fix)
    headers = {"X-Forwarded-For": forwarded}
    r = client.get("/metrics", headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert r.status_code == 400, (r.status_code, r.text[:200])
    assert json.loads(r.data)["error"] == "invalid_request"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    r = client.get("/readyz", headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert r.status_code == 400


def test_a_named_client_or_a_direct_request_is_answered_as_before(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    client = _client(keys_dir, tmp_path, idp, 1)
    base = {"REMOTE_ADDR": "127.0.0.1"}
    outside = {"X-Forwarded-For": "198.51.100.7"}
    assert client.get("/metrics", headers=outside, environ_base=base).status_code == 403
    inside = {"X-Forwarded-For": "203.0.113.9, 127.0.0.1"}  # one hop: the proxy appended it
    assert client.get("/metrics", headers=inside, environ_base=base).status_code == 200
    assert client.get("/metrics", environ_base=base).status_code == 200  # direct, on loopback
    without = _client(keys_dir, tmp_path, idp, 0)  # no proxy_fix: the header means nothing
    assert (
        without.get("/metrics", headers={"X-Forwarded-For": ""}, environ_base=base).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("value", "hops", "client"),
    [("a", 1, "a"), ("a, b", 1, "b"), ("a, b", 2, "a"), ("a", 2, ""), ("", 1, ""), ("a,", 1, "")],
)
def test_the_client_is_the_entry_proxy_fix_takes(value: str, hops: int, client: str) -> None:
    assert forwarded_client(value, hops) == client
