"""nginx in front of real slurmrestd (26.05 and 22.05), the bridge answering nginx's
``auth_request`` (``[proxy] auth_request = true``), with examples/nginx/slurmrestd-auth-request.conf
as shipped (only its listen line, upstream addresses and cache directory filled in).

What is proven, on both versions unless said otherwise:
- alice's identity-provider token lists jobs (200, slurmrestd's JSON);
- a client's ``X-SLURM-USER-NAME: root`` plus a real root token in ``X-SLURM-USER-TOKEN`` next to
  alice's token never reach slurmrestd: the job runs as alice;
- without an identity-provider token, the root token alone gets 401 and the bridge's reason in
  ``WWW-Authenticate``; a raw Slurm token as Bearer gets 401 too;
- (26.05) with the bridge unreachable nginx answers 500 and nothing reaches slurmrestd;
- (26.05) nginx caches the bridge's answer per Authorization header: repeated requests with one
  token reach the bridge once, another user's token is a separate entry (bob's job runs as bob);
  with the example's cache lines deleted every request reaches the bridge.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import skip_or_fail
from tests.helpers.bridge import BridgeServer, start_bridge
from tests.helpers.nginx import (
    AUTH_REQUEST_EXAMPLE,
    Nginx,
    auth_request_site,
    nginx_executable,
    start_nginx,
)
from tests.helpers.oidc import OidcProvider
from tests.helpers.ports import free_port
from tests.helpers.slurm_rest import BridgeCluster, proxy_bridge_config, submit_body, whoami_via

pytestmark = [pytest.mark.slurm, pytest.mark.oidc]


Site = tuple[BridgeCluster, BridgeServer, Nginx]


def _front(bc: BridgeCluster, bridge_url: str, workdir: Path, cache: bool = True) -> Nginx:
    port = free_port()
    conf = auth_request_site(
        AUTH_REQUEST_EXAMPLE.read_text(),
        port,
        bc.cluster.restd_url.split("://", 1)[1],
        bridge_url.split("://", 1)[1],
        workdir / "cache",
        cache=cache,
    )
    return start_nginx(workdir, conf, port)


@pytest.fixture(scope="module")
def fronts(
    idp: OidcProvider,
    slurm_2605: BridgeCluster,
    slurm_2205: BridgeCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Site]]:
    """Per session cluster: a bridge with auth_request on (no upstream of its own) and nginx."""
    if nginx_executable() is None:
        skip_or_fail("nginx is not installed (scripts/install-system-deps.sh installs it)")
    work = tmp_path_factory.mktemp("nginx-fronts")
    sites: dict[str, Site] = {}
    try:
        for bc in (slurm_2605, slurm_2205):
            server = start_bridge(
                work / f"bridge-{bc.version}",
                proxy_bridge_config(idp, bc.keys_dir, "", "auth_request = true"),
            )
            sites[bc.version] = (bc, server, _front(bc, server.url, work / f"nginx-{bc.version}"))
        yield sites
    finally:
        for _bc, server, nginx in sites.values():
            nginx.stop()
            server.stop()


@pytest.fixture(params=["26.05", "22.05"])
def site(request: pytest.FixtureRequest, fronts: dict[str, Site]) -> Site:
    return fronts[request.param]


def jobs_url(nginx: Nginx, bc: BridgeCluster) -> str:
    return f"{nginx.url}/slurm/{bc.cluster.api_version}/jobs"


def bridge_hits(server: BridgeServer) -> int:
    """Requests to /proxy/auth in the bridge's own request log."""
    return len(re.findall(r'"GET /proxy/auth HTTP', server.log_path.read_text(errors="replace")))


def test_list_jobs(site: Site, alice: str) -> None:
    bc, _server, nginx = site
    r = requests.get(jobs_url(nginx, bc), headers={"Authorization": f"Bearer {alice}"}, timeout=60)
    assert r.status_code == 200, f"{r.status_code} {r.text[:800]}"
    assert isinstance(r.json()["jobs"], list)


def test_client_slurm_headers_never_reach_slurmrestd(site: Site, alice: str) -> None:
    bc, _server, nginx = site
    root_token = bc.cluster.scontrol_token("root", 600)
    headers = {
        "Authorization": f"Bearer {alice}",
        "X-SLURM-USER-NAME": "root",
        "X-SLURM-USER-TOKEN": root_token,
        "x-slurm-user-name": "root",
    }
    assert whoami_via(bc.cluster, nginx.url, headers) == ("COMPLETED", "alice")


def test_root_token_alone_is_401_with_the_reason(site: Site) -> None:
    bc, _server, nginx = site
    root_token = bc.cluster.scontrol_token("root", 600)
    r = requests.get(
        jobs_url(nginx, bc),
        headers={"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": root_token},
        timeout=60,
    )
    assert r.status_code == 401, r.text[:400]
    challenge = r.headers["WWW-Authenticate"]
    assert 'error="invalid_request"' in challenge and "identity provider token" in challenge
    assert root_token not in challenge


def test_raw_slurm_token_is_401(fronts: dict[str, Site]) -> None:
    bc, _server, nginx = fronts["26.05"]
    raw = bc.mint("alice")
    r = requests.get(jobs_url(nginx, bc), headers={"Authorization": f"Bearer {raw}"}, timeout=60)
    assert r.status_code == 401
    assert "raw Slurm token" in r.headers["WWW-Authenticate"]


def test_nginx_caches_per_token_and_users_stay_apart(
    fronts: dict[str, Site], idp: OidcProvider
) -> None:
    bc, server, nginx = fronts["26.05"]
    fresh_alice = idp.login_tokens("alice")["access_token"]
    bob = idp.login_tokens("bob")["access_token"]
    before = bridge_hits(server)
    for _ in range(5):
        r = requests.get(
            jobs_url(nginx, bc), headers={"Authorization": f"Bearer {fresh_alice}"}, timeout=60
        )
        assert r.status_code == 200
    assert bridge_hits(server) == before + 1
    assert whoami_via(bc.cluster, nginx.url, {"Authorization": f"Bearer {bob}"}) == (
        "COMPLETED",
        "bob",
    )
    assert bridge_hits(server) == before + 2
    assert whoami_via(bc.cluster, nginx.url, {"Authorization": f"Bearer {fresh_alice}"}) == (
        "COMPLETED",
        "alice",
    )
    assert bridge_hits(server) == before + 2  # alice's answer came from nginx's cache


def test_without_the_cache_lines_every_request_asks_the_bridge(
    fronts: dict[str, Site], alice: str, tmp_path: Path
) -> None:
    bc, server, _nginx = fronts["26.05"]
    plain = _front(bc, server.url, tmp_path / "nginx-nocache", cache=False)
    try:
        before = bridge_hits(server)
        for _ in range(3):
            r = requests.get(
                jobs_url(plain, bc), headers={"Authorization": f"Bearer {alice}"}, timeout=60
            )
            assert r.status_code == 200
        assert bridge_hits(server) == before + 3
    finally:
        plain.stop()


def test_bridge_unreachable_fails_closed(
    fronts: dict[str, Site], alice: str, tmp_path: Path
) -> None:
    """nginx pointed at a port where no bridge listens: a job submission gets 500 and never
    reaches slurmrestd (no job of that name exists afterwards, while the same submission
    through the working nginx does create one: the check can see it)."""
    bc, _server, nginx = fronts["26.05"]
    cluster = bc.cluster
    dead = _front(bc, f"http://127.0.0.1:{free_port()}", tmp_path / "nginx-dead")
    name = f"sjb-dead-{secrets.token_hex(4)}"
    body = submit_body(cluster.api_version, "#!/bin/bash\ntrue\n", "/dev/null", name)
    try:
        r = requests.post(
            f"{dead.url}/slurm/{cluster.api_version}/job/submit",
            headers={"Authorization": f"Bearer {alice}"},
            json=body,
            timeout=60,
        )
        assert r.status_code == 500, r.text[:400]
        assert "auth request unexpected status: 502" in dead.error_log()
        assert jobs_named(cluster, name) == []
        r = requests.post(
            f"{nginx.url}/slurm/{cluster.api_version}/job/submit",
            headers={"Authorization": f"Bearer {alice}"},
            json=body,
            timeout=60,
        )
        assert r.status_code == 200, r.text[:400]
        assert jobs_named(cluster, name) == [str(r.json()["job_id"])]
    finally:
        dead.stop()


def jobs_named(cluster: Any, name: str) -> list[str]:
    """Ids of the jobs called ``name`` in any state (MinJobAge keeps finished ones listed)."""
    out = cluster.run(["squeue", "-h", "-t", "all", "--name", name, "-o", "%A"], timeout=10)
    assert out.returncode == 0, out
    return out.stdout.split()


def _raw_status(nginx: Nginx, target: str, token: str) -> tuple[int, bytes]:
    """GET ``target`` byte for byte (an HTTP library would normalise dot segments)."""
    import socket

    host, port = nginx.url.split("://", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2]


def test_encoded_separators_and_dot_segments_never_reach_slurmrestd(
    fronts: dict[str, Site], idp: OidcProvider
) -> None:
    """nginx forwards the raw request target: the example refuses encoded separators and dot
    segments itself (400), and the bridge refuses what it sees in X-Original-URI (403)."""
    bc, _server, nginx = fronts["26.05"]
    v = bc.cluster.api_version
    token = idp.login_tokens("alice")["access_token"]  # a fresh one: not in nginx's cache
    for target in (f"/slurm/{v}/jobs%3Fuser=root", f"/slurm/{v}/jobs%2f..%2f..%2fdiag"):
        status, _ = _raw_status(nginx, target, token)
        assert status == 400, target
    status, body = _raw_status(nginx, f"/slurm/{v}/job/%c0%ae%c0%ae", token)
    assert status == 403, body[:300]
