"""Key rotation under a steady stream of exchanges and proxied requests, against real Slurm 26.05.

The operator's cadence, as docs/keys.md prescribes it, while traffic flows:

1. ``jwks sync --reconfigure`` on the controller (the next key is already published, so the
   controller knows it before it signs anything);
2. ``keys rotate`` (next -> active; the running bridge picks the new ring up by itself);
3. again ``jwks sync --reconfigure`` (publishes the new next key; 26.05's slurmctld re-execs and
   loads it), then ``keys rotate`` (the key synced in step 3 becomes active).

Throughout, client threads exchange an identity-provider token at the bridge (gunicorn, two
workers), use each minted token directly against slurmrestd, and send proxied requests through
the bridge. Every one of those must succeed: no failure at any point of the rotation. Every token
issued verifies against the JWKS the bridge publishes at the end, and tokens of all three keys
were issued and accepted by the controller.

Uses ``make_slurm`` (a cluster of its own), not the shared session cluster ``slurm_2605``: the
fixtures reserve the session clusters for tests that do not change keys (tests/integration/
conftest.py).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from slurm_jwt_bridge.keys import KeyRing

try:
    from tests.helpers.bridge import BridgeServer, start_bridge
    from tests.helpers.slurm_rest import BridgeCluster, bridge, jwks_sync, jwks_url, rest_url
    from tests.helpers.test_issuer import TestIssuer
except ModuleNotFoundError:  # tests/ itself is on sys.path (its conftest.py), the repo root not
    from helpers.bridge import BridgeServer, start_bridge  # type: ignore[no-redef]
    from helpers.slurm_rest import (  # type: ignore[no-redef]
        BridgeCluster,
        bridge,
        jwks_sync,
        jwks_url,
        rest_url,
    )
    from helpers.test_issuer import TestIssuer  # type: ignore[no-redef]

pytestmark = pytest.mark.slurm

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
USERS = ("alice", "bob")
CLIENTS = 4
PER_PHASE = 30  # successful rounds with the current key before the operator's next step


@pytest.fixture
def idp() -> Iterator[Any]:
    server = TestIssuer().start()
    yield server.add_issuer("/idp")
    server.stop()


def bridge_config(bc: BridgeCluster, idp: Any) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {{port}}
[keys]
dir = "{bc.keys_dir}"
reload_interval = 0.5
[audit]
destination = "stdout"
[browser]
enabled = false
[rate_limit]
enabled = false
[[issuers]]
name = "idp"
kind = "oidc"
issuer = "{idp.issuer}"
audiences = ["bridge"]
[[mapping.rules]]
claim = "preferred_username"
[proxy]
upstream = "{bc.cluster.restd_url}"
read_timeout = 60
"""


class Stream:
    """Client threads: exchange, use the token at slurmrestd, proxied request; record all."""

    def __init__(self, bc: BridgeCluster, server: BridgeServer, tokens: dict[str, str]) -> None:
        self.bc = bc
        self.server = server
        self.tokens = tokens
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.failures: list[str] = []
        self.minted: list[str] = []
        self.ok_by_kid: Counter[str] = Counter()
        self.proxied = 0
        self.threads = [
            threading.Thread(target=self.run, args=(USERS[i % len(USERS)],), daemon=True)
            for i in range(CLIENTS)
        ]

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(f"{time.strftime('%H:%M:%S')} {what}")

    def round(self, session: requests.Session, user: str) -> None:
        form = {"grant_type": TE, "subject_token": self.tokens[user], "subject_token_type": AT}
        r = session.post(f"{self.server.url}/oauth/token", data=form, timeout=60)
        if r.status_code != 200:
            return self.fail(f"exchange {r.status_code} {r.text[:200]}")
        token = r.json()["access_token"]
        kid = jwt.get_unverified_header(token)["kid"]
        with self.lock:
            self.minted.append(token)
        direct = session.get(
            rest_url(self.bc.cluster, "jobs"),
            headers={"X-SLURM-USER-TOKEN": token, "X-SLURM-USER-NAME": user},
            timeout=60,
        )
        if direct.status_code != 200:
            return self.fail(
                f"slurmrestd, token of {kid}: {direct.status_code} {direct.text[:200]}"
            )
        proxied = session.get(
            f"{self.server.url}/slurm/{self.bc.cluster.api_version}/jobs",
            headers={"Authorization": f"Bearer {self.tokens[user]}"},
            timeout=60,
        )
        if proxied.status_code != 200:
            return self.fail(f"proxy {proxied.status_code} {proxied.text[:200]}")
        with self.lock:
            self.ok_by_kid[kid] += 1
            self.proxied += 1
        return None

    def run(self, user: str) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    self.round(session, user)
                except requests.RequestException as exc:
                    self.fail(f"{type(exc).__name__}: {exc}")

    def wait_for(self, kid: str, count: int, timeout: float = 180) -> None:
        """Until ``count`` more full rounds succeeded with tokens of ``kid`` (or failures)."""
        with self.lock:
            target = self.ok_by_kid[kid] + count
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if self.ok_by_kid[kid] >= target or self.failures:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} successful rounds with key {kid} in {timeout} s")
            time.sleep(0.05)


def _sync(bc: BridgeCluster, server: BridgeServer) -> int:
    """``jwks sync --reconfigure`` as the controller's timer runs it; returns its exit code."""
    return jwks_sync(bc, server.url).returncode


def _rotate(bc: BridgeCluster) -> str:
    bridge("keys", "rotate", "--keys-dir", bc.keys_dir, "--force", check=True)
    active = KeyRing.load(bc.keys_dir).active
    assert active is not None
    return active.kid


def test_rotation_under_load_on_slurm_2605(
    make_slurm: Callable[[str], BridgeCluster], idp: Any, tmp_path: Path
) -> None:
    bc = make_slurm("26.05")
    server = start_bridge(tmp_path / "bridge", bridge_config(bc, idp), workers=2)
    tokens = {
        u: idp.mint(
            {
                **idp.oidc_claims(sub=f"s-{u}", aud="bridge", preferred_username=u),
                "exp": idp.now() + 3600,
            }
        )
        for u in USERS
    }
    first = KeyRing.load(bc.keys_dir)
    assert first.active is not None and first.next is not None
    stream = Stream(bc, server, tokens)
    kids = [first.active.kid]
    try:
        for t in stream.threads:
            t.start()
        stream.wait_for(kids[0], PER_PHASE)

        # Round 1: the next key was published at `keys init`, the sync finds nothing new.
        assert _sync(bc, server) == 0
        kids.append(_rotate(bc))
        assert kids[1] == first.next.kid
        stream.wait_for(kids[1], PER_PHASE)

        # Round 2: the sync publishes the new next key and reconfigures (slurmctld re-execs
        # under load), then the rotation makes that key active.
        synced_next = KeyRing.load(bc.keys_dir).next
        assert synced_next is not None
        assert _sync(bc, server) == 3
        assert synced_next.kid in bc.jwks_file_kids()
        stream.wait_for(kids[1], PER_PHASE)
        kids.append(_rotate(bc))
        assert kids[2] == synced_next.kid
        stream.wait_for(kids[2], PER_PHASE)
    finally:
        stream.stop.set()
        for t in stream.threads:
            t.join(90)
        published = requests.get(jwks_url(server.url), timeout=10)
        log_tail = server.log_tail(20)
        server.stop()

    assert stream.failures == [], "\n".join(stream.failures[:20]) + "\n" + log_tail
    assert all(stream.ok_by_kid[k] >= PER_PHASE for k in kids), stream.ok_by_kid
    assert stream.proxied >= 3 * PER_PHASE

    # Every issued token verifies against the JWKS the bridge publishes (retired keys included).
    assert published.status_code == 200
    jwks = {k["kid"]: jwt.PyJWK(k) for k in published.json()["keys"]}
    assert set(kids) <= set(jwks), (kids, list(jwks))
    seen: Counter[str] = Counter()
    for token in stream.minted:
        kid = jwt.get_unverified_header(token)["kid"]
        claims = jwt.decode(token, jwks[kid].key, algorithms=["RS256"])
        assert claims["sun"] in USERS
        seen[kid] += 1
    assert set(seen) == set(kids), seen
    print(  # shown with -s: the figures of this run
        f"rounds by key {dict(stream.ok_by_kid)}; tokens verified {len(stream.minted)}; "
        f"proxied {stream.proxied}; failures {len(stream.failures)}"
    )
