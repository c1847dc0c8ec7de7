"""The client to slurmrestd on its own (no Flask): headers, credentials, raw targets and
transport failures, against a local HTTP server and a closed port."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from slurm_jwt_bridge.errors import BridgeError
from slurm_jwt_bridge.slurmrest import SlurmRestClient
from tests.helpers.stub_http import StubServer


@pytest.fixture
def upstream() -> Iterator[StubServer]:
    server = StubServer(b'{"jobs": []}')
    yield server
    server.close()


def test_sends_the_raw_target_with_the_slurm_token_and_none_of_the_clients_credentials(
    upstream: StubServer,
) -> None:
    client = SlurmRestClient(upstream.url, read_timeout=5.0)
    incoming = [
        ("Accept", "application/json"),
        ("Authorization", "Bearer idp-token"),
        ("Cookie", "sjb_session=x"),
        ("X-SLURM-USER-NAME", "root"),
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "secret"),
        ("X-Forwarded-For", "10.0.0.1"),
    ]
    headers = client.headers_for(incoming, user="alice", token="slurm.jwt", remote_addr="10.0.0.2")
    resp = client.send("GET", "/slurm/v0.0.44/jobs?x=%41", headers)
    assert resp.status == 200 and resp.read() == b'{"jobs": []}'
    seen = upstream.seen[-1]
    assert (seen.method, seen.path) == ("GET", "/slurm/v0.0.44/jobs?x=%41")
    names = {k.lower(): v for k, v in seen.headers}
    assert names["x-slurm-user-name"] == "alice" and names["x-slurm-user-token"] == "slurm.jwt"
    assert names["x-forwarded-for"] == "10.0.0.1, 10.0.0.2"
    assert names["accept"] == "application/json"
    assert "authorization" not in names and "cookie" not in names and "x-private" not in names


def test_bearer_style_and_a_body(upstream: StubServer) -> None:
    client = SlurmRestClient(upstream.url, auth_style="bearer")
    headers = client.headers_for([], user="alice", token="slurm.jwt", remote_addr=None)
    headers["Content-Length"] = "2"
    assert client.send("POST", "/slurm/v0.0.44/job/submit", headers, b"{}").status == 200
    seen = upstream.seen[-1]
    names = {k.lower(): v for k, v in seen.headers}
    assert names["authorization"] == "Bearer slurm.jwt" and "x-slurm-user-name" not in names
    assert seen.body == b"{}"


def test_closed_port_is_upstream_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = SlurmRestClient(f"http://127.0.0.1:{port}", connect_timeout=1.0)
    with pytest.raises(BridgeError) as caught:
        client.send("GET", "/slurm/v0.0.44/ping", {})
    assert (caught.value.status, caught.value.error) == (502, "upstream_unavailable")
    assert "unreachable" in caught.value.reason


def test_slow_answer_is_upstream_timeout(upstream: StubServer) -> None:
    upstream.delay = 2.0
    client = SlurmRestClient(upstream.url, read_timeout=0.2)
    with pytest.raises(BridgeError) as caught:
        client.send("GET", "/slurm/v0.0.44/ping", {})
    assert (caught.value.status, caught.value.error) == (504, "upstream_timeout")


def test_unix_socket_that_is_missing_is_upstream_unavailable(tmp_path) -> None:
    client = SlurmRestClient(f"unix:{tmp_path / 'no.sock'}")
    with pytest.raises(BridgeError) as caught:
        client.send("GET", "/slurm/v0.0.44/ping", {})
    assert caught.value.status == 502
