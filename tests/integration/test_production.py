"""Production serving, under gunicorn and under granian (``serve --prod --server``) for real:
key rotation under a steady stream, reload on SIGHUP, graceful stop on SIGTERM, metrics, the
access log, readiness, rate limits shared through a real redis-server by two instances, and the
served configuration against slow clients and against a client counting on each worker keeping
its own in-memory rate-limit counters."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import init_keys
from slurm_jwt_bridge.settings import parse_settings
from tests.conftest import skip_or_fail
from tests.helpers.bridge import BridgeServer, start_bridge
from tests.helpers.redis import RedisServer
from tests.helpers.test_issuer import TestIssuer

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
CLI = str(Path(sys.executable).parent / "slurm-jwt-bridge")


@pytest.fixture(scope="module")
def idp() -> Iterator[Any]:
    server = TestIssuer().start()
    yield server.add_issuer("/oidc")
    server.stop()


def config(keys_dir: Path, idp: Any, extra: str = "") -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {{port}}
[keys]
dir = "{keys_dir}"
reload_interval = 0.5
[audit]
destination = "stdout"
[browser]
enabled = false
[[issuers]]
name = "test"
kind = "oidc"
issuer = "{idp.issuer}"
audiences = ["bridge"]
[mapping]
require_local_account = false
[[mapping.rules]]
claim = "preferred_username"
{extra}
"""


def user_token(idp: Any, name: str = "alice") -> str:
    claims = idp.oidc_claims(sub=name, aud="bridge", preferred_username=name)
    return idp.mint({**claims, "exp": idp.now() + 3600})


def exchange(url: str, token: str) -> requests.Response:
    form = {"grant_type": TE, "subject_token": token, "subject_token_type": AT}
    return requests.post(f"{url}/oauth/token", data=form, timeout=10)


# Each production test runs under both servers `serve --prod --server` offers.
SERVERS = ("gunicorn", "granian")
# what each server writes when it starts a worker
WORKER_STARTED = {"gunicorn": "Booting worker with pid", "granian": "Spawning worker-"}


@pytest.fixture(params=SERVERS)
def server_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def prod_bridge(tmp_path: Path, idp: Any, server_name: str) -> Iterator[BridgeServer]:
    keys = tmp_path / "keys"
    init_keys(keys)
    server = start_bridge(
        tmp_path,
        config(keys, idp, "[rate_limit]\nenabled = false\n"),
        workers=3,
        server=server_name,
    )
    yield server
    server.stop()


def test_several_workers_answer(prod_bridge: BridgeServer, server_name: str) -> None:
    def ask(_: int) -> int:
        return requests.get(f"{prod_bridge.url}/healthz", timeout=5).json()["worker"]

    workers: set[int] = set()
    with ThreadPoolExecutor(16) as pool:
        for _ in range(20):
            workers.update(pool.map(ask, range(64)))
            if len(workers) >= 2:
                break
    assert len(workers) >= 2, workers
    assert prod_bridge.log_path.read_text().count(WORKER_STARTED[server_name]) == 3
    assert prod_bridge.proc.pid not in workers  # the master only supervises


def test_access_log_is_json_without_tokens(prod_bridge: BridgeServer, idp: Any) -> None:
    token = user_token(idp)
    minted = exchange(prod_bridge.url, token).json()["access_token"]
    requests.get(f"{prod_bridge.url}/jwks.json?access_token={token}", timeout=5)
    time.sleep(0.5)
    log = prod_bridge.log_path.read_text()
    assert token not in log and minted not in log
    access = [json.loads(x) for x in log.splitlines() if x.startswith('{"time"') and '"path"' in x]
    assert any(a["path"] == "/oauth/token" and a["status"] == 200 for a in access)
    assert any(a["path"] == "/jwks.json" for a in access)  # without its query string
    for a in access:
        assert {"time", "remote", "method", "path", "status", "duration_us", "agent"} <= set(a)


def dropped_in_reload(server_name: str, exc: requests.RequestException) -> bool:
    """granian may drop a connection during a SIGHUP reload (docs/deploy.md "granian instead
    of gunicorn": each worker has its own listening socket): a connection closed without an
    answer is that known difference under granian, and a failure under gunicorn."""
    return server_name == "granian" and isinstance(exc, requests.ConnectionError)


def test_sighup_starts_workers_that_read_the_changed_configuration(
    prod_bridge: BridgeServer, server_name: str
) -> None:
    url = prod_bridge.url

    def cache_control(_: int) -> str:
        try:
            return requests.get(f"{url}/jwks.json", timeout=10).headers["Cache-Control"]
        except requests.RequestException as exc:
            if dropped_in_reload(server_name, exc):
                return "dropped"
            raise

    assert "max-age=300" in requests.get(f"{url}/jwks.json", timeout=5).headers["Cache-Control"]
    text = prod_bridge.config_path.read_text()
    prod_bridge.config_path.write_text(text + "\n[jwks]\nmax_age = 77\n")
    os.kill(prod_bridge.proc.pid, signal.SIGHUP)
    # A bound on how long this test waits for the new workers, not a speed check.
    deadline = time.monotonic() + 60
    while True:
        with ThreadPoolExecutor(6) as pool:
            ages = set(pool.map(cache_control, range(30)))
        if ages == {"public, max-age=77"}:
            break
        assert time.monotonic() < deadline, ages
        time.sleep(0.5)
    assert prod_bridge.proc.poll() is None  # the same server, new workers


def test_sigterm_lets_a_request_in_flight_finish(prod_bridge: BridgeServer, idp: Any) -> None:
    form = f"grant_type={TE}&subject_token_type={AT}&subject_token={user_token(idp)}".encode()
    s = socket.create_connection(("127.0.0.1", prod_bridge.port), timeout=30)
    try:
        s.sendall(
            b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(form)}\r\n\r\n".encode()
            + form[:20]
        )
        time.sleep(0.5)
        prod_bridge.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        s.sendall(form[20:])
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    finally:
        s.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"access_token" in answer
    assert prod_bridge.proc.wait(60) == 0


def test_sighup_after_rotate_serves_new_jwks_without_failures(
    prod_bridge: BridgeServer, idp: Any, tmp_path: Path, server_name: str
) -> None:
    url = prod_bridge.url
    keys = tmp_path / "keys"
    before = {k["kid"] for k in requests.get(f"{url}/jwks.json", timeout=5).json()["keys"]}
    failures: list[str] = []
    minted: list[str] = []
    stop = threading.Event()
    token = user_token(idp)

    def stream() -> None:
        while not stop.is_set():
            try:
                r = exchange(url, token)
                if r.status_code != 200:
                    failures.append(f"exchange {r.status_code} {r.text[:100]}")
                else:
                    minted.append(r.json()["access_token"])
                j = requests.get(f"{url}/.well-known/jwks.json", timeout=10)
                if j.status_code != 200:
                    failures.append(f"jwks {j.status_code}")
            except requests.RequestException as exc:
                if not dropped_in_reload(server_name, exc):
                    failures.append(repr(exc))

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        out = subprocess.run(
            [CLI, "keys", "rotate", "--keys-dir", str(keys), "--force"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "activated" in out.stdout
        os.kill(prod_bridge.proc.pid, signal.SIGHUP)
        time.sleep(3.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    after = requests.get(f"{url}/jwks.json", timeout=5).json()
    assert {k["kid"] for k in after["keys"]} > before  # the new next key is published
    published = {k["kid"]: jwt.PyJWK(k) for k in after["keys"]}
    kids_used = set()
    for token_text in minted:
        kid = jwt.get_unverified_header(token_text)["kid"]
        kids_used.add(kid)
        jwt.decode(token_text, published[kid].key, algorithms=["RS256"])
    assert len(kids_used) == 2  # tokens from before and after the rotation
    assert len(minted) > 20


def test_metrics_move_after_traffic(prod_bridge: BridgeServer, idp: Any) -> None:
    url = prod_bridge.url

    def scrape() -> str:
        return requests.get(f"{url}/metrics", timeout=5).text

    def value(text: str, prefix: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
        )

    before = scrape()
    for _ in range(6):
        assert exchange(url, user_token(idp)).status_code == 200
    assert exchange(url, user_token(idp, "root")).status_code == 403
    assert exchange(url, "garbage.token.here").status_code == 400
    after = scrape()
    minted = 'slurm_jwt_bridge_tokens_minted_total{alg="RS256",door="token-exchange",issuer="test"}'
    assert value(after, minted) - value(before, minted) == 6
    assert (
        value(
            after,
            'slurm_jwt_bridge_tokens_refused_total{alg="RS256",door="token-exchange",'
            'issuer="test",reason="denied_root"}',
        )
        >= 1
    )
    assert value(after, "slurm_jwt_bridge_exchange_seconds_count") >= 8
    assert value(after, "slurm_jwt_bridge_active_key_age_seconds") >= 0
    assert "slurm_jwt_bridge_seconds_to_next_rotation" in after
    assert (
        value(after, 'slurm_jwt_bridge_upstream_jwks_fetches_total{issuer="test",outcome="ok"}')
        >= 1
    )


def test_readyz_flips_past_the_stale_window(tmp_path: Path) -> None:
    server = TestIssuer().start()
    try:
        handle = server.add_issuer("/flaky")
        keys = tmp_path / "keys"
        init_keys(keys)
        settings = parse_settings(
            {
                "keys": {"dir": str(keys)},
                "audit": {"destination": "none"},
                "browser": {"enabled": False},
                "issuers": [
                    {
                        "name": "flaky",
                        "kind": "oidc",
                        "issuer": handle.issuer,
                        "audiences": ["bridge"],
                        "jwks_refetch_interval": 0.2,
                        "jwks_stale_window": 1.5,
                    }
                ],
                "mapping": {
                    "require_local_account": False,
                    "rules": [{"claim": "preferred_username"}],
                },
            }
        )
        client = create_app(settings).test_client()

        def probe_until(what: str, check: Any) -> Any:
            """Probes refresh in the background: ask again until the answer shows ``what``."""
            deadline = time.monotonic() + 20
            while True:
                r = client.get("/readyz")
                if check(r.status_code, r.json["checks"]["issuers"]["flaky"]):
                    return r
                assert time.monotonic() < deadline, f"readyz never showed {what}: {r.json}"
                time.sleep(0.05)

        probe_until("keys", lambda code, st: code == 200 and st["jwks_present"])
        handle.mode = "down"
        # refresh failed, cached keys still inside the window
        probe_until("stale keys", lambda code, st: code == 200 and st["stale"])
        probe_until("not usable", lambda code, st: code == 503 and st["usable"] is False)
        handle.mode = "ok"
        probe_until("recovery", lambda code, st: code == 200 and not st["stale"])
    finally:
        server.stop()


def test_rate_limits_shared_through_redis(tmp_path: Path, idp: Any, server_name: str) -> None:
    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        skip_or_fail("redis-server is not installed (make system-deps)")
    redis = RedisServer(tmp_path / "redis")
    servers: list[BridgeServer] = []
    try:
        keys = tmp_path / "keys"
        init_keys(keys)
        limits = f"""
[rate_limit]
per_address = "5/minute"
per_subject = "100/minute"
storage_uri = "{redis.url}"
"""
        for i in range(2):
            servers.append(
                start_bridge(
                    tmp_path / f"b{i}", config(keys, idp, limits), workers=2, server=server_name
                )
            )
        token = user_token(idp)
        statuses = [exchange(servers[i % 2].url, token).status_code for i in range(5)]
        assert statuses == [200] * 5
        r = exchange(servers[1].url, token)
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) > 0
        assert r.json()["error"] == "rate_limited"
        r = exchange(servers[0].url, token)
        assert r.status_code == 429  # the other instance sees the same counter
    finally:
        for s in servers:
            s.stop()
        redis.stop()


def test_subject_rate_limit(tmp_path: Path, idp: Any) -> None:
    keys = tmp_path / "keys"
    init_keys(keys)
    settings = parse_settings(
        {
            "keys": {"dir": str(keys)},
            "audit": {"destination": "none"},
            "browser": {"enabled": False},
            "rate_limit": {"per_address": "1000/minute", "per_subject": "3/minute"},
            "issuers": [
                {"name": "test", "kind": "oidc", "issuer": idp.issuer, "audiences": ["bridge"]}
            ],
            "mapping": {
                "require_local_account": False,
                "rules": [{"claim": "preferred_username"}],
            },
        }
    )
    client = create_app(settings).test_client()
    form = {"grant_type": TE, "subject_token_type": AT}
    for _ in range(3):
        assert (
            client.post("/oauth/token", data={**form, "subject_token": user_token(idp)}).status_code
            == 200
        )
    r = client.post("/oauth/token", data={**form, "subject_token": user_token(idp)})
    assert r.status_code == 429 and r.headers["Retry-After"]
    # another subject is not affected
    r = client.post("/oauth/token", data={**form, "subject_token": user_token(idp, "bob")})
    assert r.status_code == 200


def test_a_malformed_chunked_body_is_a_400_not_a_500(
    prod_bridge: BridgeServer, server_name: str
) -> None:
    """A bad chunk size reaches the app as the server's own parse error from the body stream
    (gunicorn), or is refused by the server itself (granian): never a 500."""
    with socket.create_connection(("127.0.0.1", prod_bridge.port), timeout=30) as s:
        s.sendall(
            b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\ngrant_type=x\r\n0\r\n\r\n"
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    status = answer.split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 400"), (server_name, answer[:300])


# ---------------------------------------------------------------- slow clients, per-host limits


def slow_client(port: int) -> socket.socket:
    """Announces a 1000-byte body, sends none of it, and keeps the connection open."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(
        b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
    )
    return s


def test_healthz_answers_while_slow_clients_hang(
    tmp_path: Path, idp: Any, server_name: str, request: pytest.FixtureRequest
) -> None:
    if server_name == "granian":
        # granian bounds the wait for a request's headers, not for its body: a client that stops
        # sending its body holds a thread for as long as it keeps the connection (docs/deploy.md).
        # Strict: the day this passes under granian, the test says so.
        request.applymarker(
            pytest.mark.xfail(reason="granian has no body read timeout", strict=True)
        )
    keys = tmp_path / "keys"
    init_keys(keys)
    server = start_bridge(
        tmp_path / "b",
        config(keys, idp, "[rate_limit]\nenabled = false\n"),
        {"GUNICORN_THREADS": "2", "GUNICORN_CLIENT_TIMEOUT": "2"},
        workers=1,
        server=server_name,
    )
    slow = []
    try:
        slow = [slow_client(server.port) for _ in range(2)]
        time.sleep(0.5)  # both are inside the worker's two threads, waiting for the body
        # A bound on how long this test waits for an answer at all, not a speed check: the
        # old configuration never answers while the two slow clients keep their connections.
        r = requests.get(f"{server.url}/healthz", timeout=20)
        assert r.status_code == 200
        for s in slow:
            answer = s.recv(4096)
            # the slow client is told why (408) or dropped; it never gets a token
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:100]
    finally:
        for s in slow:
            s.close()
        server.stop()


def test_per_address_limit_holds_across_workers(tmp_path: Path, idp: Any, server_name: str) -> None:
    keys = tmp_path / "keys"
    init_keys(keys)
    limits = '[rate_limit]\nper_address = "6/minute"\nper_subject = "1000/minute"\n'
    server = start_bridge(tmp_path / "b", config(keys, idp, limits), workers=3, server=server_name)
    try:
        token = user_token(idp)
        # new connections from several threads, so the kernel spreads them over the workers
        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda _: exchange(server.url, token).status_code, range(30)))
        assert set(statuses) <= {200, 429}, statuses
        assert 1 <= statuses.count(200) <= 6, statuses
    finally:
        server.stop()
