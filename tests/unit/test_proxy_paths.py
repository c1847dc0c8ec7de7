"""What path the proxy forwards, and to whom ``/proxy/auth`` answers.

Requests go as raw bytes over a socket to a real HTTP server running the app, so the request
target reaches the bridge exactly as a client wrote it (percent-encodings included); a recording
upstream shows what would have reached slurmrestd.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import SettingsError, parse_settings
from tests.helpers.proxy_settings import proxy_settings_data
from tests.helpers.stub_http import StubServer


def _settings(keys_dir: Path, tmp_path: Path, idp: Any, **proxy: Any) -> Any:
    return parse_settings(proxy_settings_data(keys_dir, tmp_path, idp, proxy))


@pytest.fixture
def served(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> Iterator[tuple[int, str]]:
    """(port of a real HTTP server running the bridge, an IdP token for alice)."""
    app = create_app(
        _settings(
            keys_dir, tmp_path, idp, upstream=upstream.url, read_timeout=5.0, auth_request=True
        )
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = idp.mint(idp.oidc_claims(sub="s-alice", aud="bridge", preferred_username="alice"))
    yield server.server_port, token
    server.shutdown()


def raw_get(port: int, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode("latin-1"))
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    top, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    answer = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        answer[name.strip().lower()] = value.strip()
    return int(status_line.split(" ", 2)[1]), answer, body


ATTACKS = [
    "/slurm/%2e%2e/%2e%2e/admin",
    "/slurm/..%2f..%2fadmin",
    "/slurm/v0.0.44/jobs%3Fuser=root",
    "/slurm/v0.0.44/job/1%23/../../admin",
    "/slurm/../admin",
    "/slurm/v0.0.44/./jobs",
    "/slurm/.%2E/.%2e/admin",
    "/slurm/%252e%252e/%252e%252e/admin",
    "/slurm/v0.0.44%5c..%5cadmin",
    "/slurm/%c0%ae%c0%ae/admin",
    "/slurm/v0.0.44/jobs%00",
    "/%73lurm/v0.0.44/jobs",
    "/slurmdb/v0.0.44/%2e%2e",
]


@pytest.mark.parametrize("target", ATTACKS)
def test_encoded_dot_segments_and_separators_are_refused_before_any_token_leaves(
    served: tuple[int, str], upstream: StubServer, target: str
) -> None:
    port, token = served
    status, headers, body = raw_get(port, target, {"Authorization": f"Bearer {token}"})
    assert status == 400, (target, status, body[:200])
    assert headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert answer["error"] == "invalid_request" and "path" in answer["error_description"]
    assert upstream.seen == []


@pytest.mark.parametrize(
    "target",
    [
        "/slurm/v0.0.44/jobs?update_time=1&flags=DETAIL",
        "/slurm/v0.0.44/job/caf%C3%A9",
        "/slurm/v0.0.44/jobs/state%20x",
        "/slurmdb/v0.0.44/users",
        "/openapi/v3",
        "/slurm",
    ],
)
def test_the_clients_raw_path_is_forwarded_byte_for_byte(
    served: tuple[int, str], upstream: StubServer, target: str
) -> None:
    port, token = served
    status, _, body = raw_get(port, target, {"Authorization": f"Bearer {token}"})
    assert status == 200, body[:300]
    assert upstream.seen[-1].path == target


@pytest.mark.parametrize(
    "original",
    ["/slurm/..%2f..%2fadmin", "/slurm/v0.0.44/jobs%3Fuser=root", "/admin/x", "/slurm/../x"],
)
def test_auth_request_refuses_the_original_uri_by_the_same_rules(
    served: tuple[int, str], original: str
) -> None:
    """nginx passes the client's raw request target as X-Original-URI ($request_uri)."""
    port, token = served
    status, headers, body = raw_get(
        port, "/proxy/auth", {"Authorization": f"Bearer {token}", "X-Original-URI": original}
    )
    assert status == 403, (original, status, body[:200])
    assert "x-slurm-user-token" not in headers
    assert "path" in json.loads(body)["error_description"]


def test_auth_request_answers_for_a_clean_original_uri(served: tuple[int, str]) -> None:
    port, token = served
    status, headers, _ = raw_get(
        port,
        "/proxy/auth",
        {"Authorization": f"Bearer {token}", "X-Original-URI": "/slurm/v0.0.44/jobs?x=%2F"},
    )
    assert status == 200
    assert headers["x-slurm-user-name"] == "alice"


# ---------------------------------------------------------------- who may ask /proxy/auth


def _auth_client(keys_dir: Path, tmp_path: Path, idp: Any, **extra: Any) -> Any:
    data = proxy_settings_data(keys_dir, tmp_path, idp, {"auth_request": True, **extra})
    return create_app(parse_settings(data)).test_client()


def _ask(client: Any, idp: Any, remote: str, **headers: str) -> Any:
    token = idp.mint(idp.oidc_claims(sub="s-alice", aud="bridge", preferred_username="alice"))
    return client.get(
        "/proxy/auth",
        headers={"Authorization": f"Bearer {token}", **headers},
        environ_base={"REMOTE_ADDR": remote},
    )


def test_auth_request_answers_only_loopback_by_default(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    client = _auth_client(keys_dir, tmp_path, idp)
    r = _ask(client, idp, "203.0.113.7")
    assert r.status_code == 403, r.status_code
    assert "X-Slurm-User-Token" not in r.headers
    assert "auth_request_allow_from" in r.json["error_description"]
    assert _ask(client, idp, "127.0.0.1").status_code == 200
    assert _ask(client, idp, "::1").status_code == 200


def test_a_forwarded_for_header_does_not_make_a_stranger_loopback(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    data = proxy_settings_data(keys_dir, tmp_path, idp, {"auth_request": True})
    data["server"] = {"proxy_fix": 1}
    client = create_app(parse_settings(data)).test_client()
    r = _ask(client, idp, "203.0.113.7", **{"X-Forwarded-For": "127.0.0.1"})
    assert r.status_code == 403


def test_auth_request_allow_from_names_the_nginx_hosts(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    client = _auth_client(
        keys_dir, tmp_path, idp, auth_request_allow_from=["203.0.113.0/28", "2001:db8::5"]
    )
    assert _ask(client, idp, "203.0.113.7").status_code == 200
    assert _ask(client, idp, "2001:db8::5").status_code == 200
    assert _ask(client, idp, "203.0.113.70").status_code == 403
    assert _ask(client, idp, "127.0.0.1").status_code == 403


@pytest.mark.parametrize("bad", [["10.0.0.0/33"], ["nginx.example.org"], "10.0.0.256", [1]])
def test_auth_request_allow_from_is_checked_at_start(
    keys_dir: Path, tmp_path: Path, idp: Any, bad: Any
) -> None:
    data = proxy_settings_data(
        keys_dir, tmp_path, idp, {"auth_request": True, "auth_request_allow_from": bad}
    )
    with pytest.raises(SettingsError, match=r"proxy\.auth_request_allow_from"):
        parse_settings(data)
