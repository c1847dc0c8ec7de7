"""The reverse proxy against real slurmrestd: Slurm 26.05 (v0.0.44) and 22.05 (v0.0.38).

A real OpenID provider (npm oidc-provider) issues alice's access token; the bridge runs as its
own process with ``[proxy] upstream`` pointing at the cluster's slurmrestd. What is proven:
- listing jobs through the proxy answers 200 on both versions (22.05 only accepts the default
  ``x-slurm`` style: X-SLURM-USER-NAME + X-SLURM-USER-TOKEN); 26.05 also takes ``bearer``;
- a client's own ``X-SLURM-USER-NAME: root`` and a real root token in ``X-SLURM-USER-TOKEN``
  are dropped: the job submitted with them runs as alice (its ``id -un``), and a root token
  without an identity-provider token gets a JSON 401;
- a raw Slurm token presented as Bearer is refused (401) unless passthrough is configured;
- slurmrestd stopped -> 502 JSON, slurmrestd frozen (SIGSTOP) -> 504 JSON after read_timeout;
- a key the controller does not know (two rotations without a JWKS sync) -> 401 JSON
  ``slurm_token_refused`` naming the kid and the JWKS sync; after the sync the same bridge works;
- ``proxy.upstream = "unix:/path"`` reaches a slurmrestd listening on a unix socket.

Fault tests use private clusters (``make_slurm``) so the session clusters are never disturbed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers.bridge import BridgeServer, start_bridge
from tests.helpers.oidc import OidcProvider
from tests.helpers.ports import free_port
from tests.helpers.slurm import RESTD_PLUGINS, SlurmCluster
from tests.helpers.slurm_rest import (
    BridgeCluster,
    bridge,
    proxy_bridge_config,
    whoami_via,
)

pytestmark = [pytest.mark.slurm, pytest.mark.oidc]

JOB_TIMEOUT = 90.0


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def serve(idp: OidcProvider, tmp_path: Path) -> Iterator[Callable[..., BridgeServer]]:
    """Factory: a bridge for ``keys_dir`` proxying to ``upstream``; stopped after the test."""
    started: list[BridgeServer] = []

    def start(keys_dir: Path, upstream: str, proxy_extra: str = "") -> BridgeServer:
        server = start_bridge(
            tmp_path / f"bridge{len(started)}",
            proxy_bridge_config(idp, keys_dir, upstream, proxy_extra),
        )
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(params=["26.05", "22.05"])
def site(
    request: pytest.FixtureRequest, proxies: dict[str, BridgeServer]
) -> tuple[BridgeCluster, BridgeServer]:
    """(session cluster, its bridge) for each version in turn."""
    bc = request.getfixturevalue(f"slurm_{request.param.replace('.', '')}")
    return bc, proxies[request.param]


# --------------------------------------------------------------------------------------------
# helpers


def slurm_url(server: BridgeServer, cluster: SlurmCluster, path: str) -> str:
    return f"{server.url}/slurm/{cluster.api_version}/{path}"


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def json_error(resp: requests.Response, status: int, error: str) -> dict[str, Any]:
    assert resp.status_code == status, f"{resp.status_code} {resp.text[:800]}"
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert body["error"] == error, body
    return body


def whoami_through_proxy(
    cluster: SlurmCluster, server: BridgeServer, headers: dict[str, str]
) -> tuple[str, str]:
    """Submit ``id -un`` through the proxy with ``headers``; return (final state, output)."""
    return whoami_via(cluster, server.url, headers, JOB_TIMEOUT)


def active_kid(keys_dir: Path) -> str:
    ring = json.loads((keys_dir / "ring.json").read_text())
    return next(k["kid"] for k in ring["keys"] if k["state"] == "active")


# --------------------------------------------------------------------------------------------
# the happy path and the header attacks, on both versions


def test_list_jobs(site: tuple[BridgeCluster, BridgeServer], alice: str) -> None:
    """GET jobs through the proxy: 200 with slurmrestd's own JSON (22.05 needs the default
    X-SLURM-USER-NAME + X-SLURM-USER-TOKEN style, which the proxy uses)."""
    bc, server = site
    r = requests.get(slurm_url(server, bc.cluster, "jobs"), headers=bearer(alice), timeout=60)
    assert r.status_code == 200, f"{r.status_code} {r.text[:800]}"
    body = r.json()
    assert isinstance(body["jobs"], list)
    assert not body.get("errors"), body["errors"]


def test_client_user_name_header_is_dropped(
    site: tuple[BridgeCluster, BridgeServer], alice: str
) -> None:
    """alice's token plus ``X-SLURM-USER-NAME: root``: the job still runs as alice."""
    bc, server = site
    state, who = whoami_through_proxy(
        bc.cluster, server, bearer(alice, **{"X-SLURM-USER-NAME": "root"})
    )
    assert (state, who) == ("COMPLETED", "alice")


def test_client_slurm_token_is_dropped(
    site: tuple[BridgeCluster, BridgeServer], alice: str
) -> None:
    """A real root token (``scontrol token username=root``) in X-SLURM-USER-TOKEN, with
    X-SLURM-USER-NAME root, next to alice's IdP token: dropped, the job runs as alice."""
    bc, server = site
    root_token = bc.cluster.scontrol_token("root", 600)
    headers = bearer(alice, **{"X-SLURM-USER-TOKEN": root_token, "X-SLURM-USER-NAME": "root"})
    state, who = whoami_through_proxy(bc.cluster, server, headers)
    assert (state, who) == ("COMPLETED", "alice")


def test_slurm_token_headers_alone_get_401(slurm_2605: BridgeCluster, proxies: dict) -> None:
    """The root token in X-SLURM-* headers without an identity-provider token: JSON 401."""
    cluster = slurm_2605.cluster
    root_token = cluster.scontrol_token("root", 600)
    r = requests.get(
        slurm_url(proxies["26.05"], cluster, "jobs"),
        headers={"X-SLURM-USER-TOKEN": root_token, "X-SLURM-USER-NAME": "root"},
        timeout=60,
    )
    json_error(r, 401, "invalid_request")


def test_raw_slurm_token_as_bearer_is_refused(slurm_2605: BridgeCluster, proxies: dict) -> None:
    """A Slurm token minted by ``slurm-jwt-bridge mint`` (valid for this very cluster) sent as
    Bearer: 401 by default (passthrough_slurm_tokens is off)."""
    cluster = slurm_2605.cluster
    raw = slurm_2605.mint("alice")
    r = requests.get(slurm_url(proxies["26.05"], cluster, "jobs"), headers=bearer(raw), timeout=60)
    body = json_error(r, 401, "invalid_token")
    assert "raw Slurm token" in body["error_description"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_bearer_auth_style_on_2605(
    slurm_2605: BridgeCluster, serve: Callable[..., BridgeServer], alice: str
) -> None:
    """``auth_style = "bearer"`` (Authorization: Bearer to slurmrestd, 23.02+) works on 26.05."""
    cluster = slurm_2605.cluster
    server = serve(slurm_2605.keys_dir, cluster.restd_url, 'auth_style = "bearer"')
    r = requests.get(slurm_url(server, cluster, "jobs"), headers=bearer(alice), timeout=60)
    assert r.status_code == 200, f"{r.status_code} {r.text[:800]}"


# --------------------------------------------------------------------------------------------
# faults, on private clusters


def test_slurmrestd_stopped_gives_502(
    make_slurm: Callable[[str], BridgeCluster],
    serve: Callable[..., BridgeServer],
    alice: str,
) -> None:
    bc = make_slurm("26.05")
    cluster = bc.cluster
    server = serve(bc.keys_dir, cluster.restd_url)
    url = slurm_url(server, cluster, "jobs")
    assert requests.get(url, headers=bearer(alice), timeout=60).status_code == 200
    # Stop this cluster's slurmrestd (by its pid, through the helper that started it).
    cluster._stop_daemon("slurmrestd")
    r = requests.get(url, headers=bearer(alice), timeout=60)
    body = json_error(r, 502, "upstream_unavailable")
    assert "unreachable" in body["error_description"]


def test_closed_upstream_port_gives_502(
    slurm_2605: BridgeCluster, serve: Callable[..., BridgeServer], alice: str
) -> None:
    """Nothing listening at the upstream address at all: 502 JSON, from the first request."""
    server = serve(slurm_2605.keys_dir, f"http://127.0.0.1:{free_port()}")
    r = requests.get(
        slurm_url(server, slurm_2605.cluster, "jobs"), headers=bearer(alice), timeout=60
    )
    json_error(r, 502, "upstream_unavailable")


def test_slurmrestd_frozen_gives_504(
    make_slurm: Callable[[str], BridgeCluster],
    serve: Callable[..., BridgeServer],
    alice: str,
) -> None:
    """slurmrestd stopped with SIGSTOP accepts the connection but never answers: 504 JSON
    after ``read_timeout`` (2 s), not a hung client."""
    bc = make_slurm("26.05")
    cluster = bc.cluster
    server = serve(bc.keys_dir, cluster.restd_url, "read_timeout = 2")
    url = slurm_url(server, cluster, "jobs")
    assert requests.get(url, headers=bearer(alice), timeout=60).status_code == 200
    pid = cluster._pids["slurmrestd"]
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        r = requests.get(url, headers=bearer(alice), timeout=60)
        elapsed = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    body = json_error(r, 504, "upstream_timeout")
    assert "in time" in body["error_description"]
    assert 1.5 <= elapsed < 15, elapsed
    # Thawed, it answers again.
    assert requests.get(url, headers=bearer(alice), timeout=60).status_code == 200


@pytest.mark.parametrize("version", ["26.05", "22.05"])
def test_slurmrestd_error_answer_is_relayed_intact(
    version: str, proxies: dict[str, BridgeServer], alice: str, request: pytest.FixtureRequest
) -> None:
    """slurmrestd's own error for an unknown job (26.05: 404, 22.05: 500) reaches the client
    whole, as JSON with its errors[]."""
    cluster = request.getfixturevalue(f"slurm_{version.replace('.', '')}").cluster
    r = requests.get(
        slurm_url(proxies[version], cluster, "job/999999"), headers=bearer(alice), timeout=60
    )
    assert r.status_code in (404, 500), f"{r.status_code} {r.text[:800]}"
    assert r.json()["errors"], r.text[:800]


@pytest.mark.parametrize("version", ["26.05", "22.05"])
def test_unknown_kid_gives_slurm_token_refused(
    version: str,
    make_slurm: Callable[[str], BridgeCluster],
    serve: Callable[..., BridgeServer],
    alice: str,
) -> None:
    """Two ``keys rotate`` without ``jwks sync``: the bridge signs with a key slurmctld never
    saw. The proxy answers 401 slurm_token_refused naming the kid and the JWKS sync; once the
    JWKS is synced (and slurmctld reloaded it) the same bridge works again."""
    bc = make_slurm(version)
    cluster = bc.cluster
    for _ in range(2):
        bridge("keys", "rotate", "--keys-dir", bc.keys_dir, "--force", check=True)
    kid = active_kid(bc.keys_dir)
    on_controller = json.loads(cluster.jwks_path.read_text())["keys"]
    assert kid not in [k["kid"] for k in on_controller]
    server = serve(bc.keys_dir, cluster.restd_url)
    url = slurm_url(server, cluster, "jobs")

    r = requests.get(url, headers=bearer(alice), timeout=60)
    body = json_error(r, 401, "slurm_token_refused")
    assert body["kid"] == kid, body
    assert body["slurm_user"] == "alice"
    assert kid in body["error_description"]
    assert "jwks sync" in body["error_description"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    refused = [a for a in server.audit_lines() if a.get("event") == "slurmrestd"]
    assert [(a["outcome"], a["user"], a["kid"]) for a in refused] == [("refused", "alice", kid)]
    assert "jwks sync" in refused[0]["reason"]

    # The remedy the answer names: sync the JWKS, make slurmctld read it.
    jwks_file = bc.workdir / "jwks-synced.json"
    bridge("jwks", "export", "--keys-dir", bc.keys_dir, "--out", jwks_file, check=True)
    cluster.install_jwks(jwks_file.read_text())
    if version == "22.05":
        cluster.restart_slurmctld()
    else:
        cluster.reconfigure()
    deadline = time.monotonic() + 30
    while True:
        r = requests.get(url, headers=bearer(alice), timeout=60)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 200, f"{r.status_code} {r.text[:800]}"


def test_unix_socket_upstream(
    make_slurm: Callable[[str], BridgeCluster],
    serve: Callable[..., BridgeServer],
    alice: str,
) -> None:
    """``proxy.upstream = "unix:/path"``: a second slurmrestd of the cluster listens on a unix
    socket (``slurmrestd unix:/path``); listing jobs and a job's ``id -un`` go through it."""
    bc = make_slurm("26.05")
    cluster = bc.cluster
    sock_dir = f"{cluster.run_dir_in_cluster}/restd-unix"
    sock = f"{sock_dir}/slurmrestd.socket"
    cluster.host_path(sock_dir).mkdir(mode=0o755)
    cluster.run(["chown", "slurmrest:slurmrest", sock_dir], check=True)
    prefix = ["chroot", str(cluster.chroot)] if cluster.chroot is not None else []
    argv = [
        *prefix,
        "setpriv",
        "--reuid=slurmrest",
        "--regid=slurmrest",
        "--clear-groups",
        "--",
        "/usr/sbin/slurmrestd",
        "-a",
        "rest_auth/jwt",
        "-s",
        RESTD_PLUGINS[cluster.version],
        f"unix:{sock}",
    ]
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "SLURM_CONF": cluster.conf_in_cluster,
        "SLURM_JWT": "daemon",
    }
    log = open(cluster.workdir / "slurmrestd-unix.log", "wb")
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        host_sock = cluster.host_path(sock)
        deadline = time.monotonic() + 20
        while not host_sock.exists():
            assert proc.poll() is None, (cluster.workdir / "slurmrestd-unix.log").read_text()
            assert time.monotonic() < deadline, "slurmrestd made no unix socket"
            time.sleep(0.1)
        server = serve(bc.keys_dir, f"unix:{host_sock}")
        r = requests.get(slurm_url(server, cluster, "jobs"), headers=bearer(alice), timeout=60)
        assert r.status_code == 200, f"{r.status_code} {r.text[:800]}"
        assert isinstance(r.json()["jobs"], list)
        assert whoami_through_proxy(cluster, server, bearer(alice)) == ("COMPLETED", "alice")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
