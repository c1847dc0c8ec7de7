"""Emergency revocation against real slurmctld/slurmrestd: ``keys revoke KID``, then
``jwks sync --reconfigure`` on the controller.

24.11 and 26.05 re-read the JWKS at reconfigure: every token of the revoked key is refused at
once, new tokens (signed by the promoted key) are accepted. 22.05 reads the JWKS only at start:
the revoked key keeps working until slurmctld restarts, as docs/keys.md and SECURITY.md say.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jwt
import pytest

from slurm_jwt_bridge.keys import KeyRing

try:
    from tests.helpers.bridge import BridgeServer
    from tests.helpers.slurm_rest import (
        VERSIONS,
        BridgeCluster,
        auth_refusal_problem,
        bridge,
        get_jobs,
        jwks_sync,
        wait_rest_accepts,
    )
except ModuleNotFoundError:  # tests/ itself is on sys.path (its conftest.py), the repo root not
    from helpers.bridge import BridgeServer  # type: ignore[no-redef]
    from helpers.slurm_rest import (  # type: ignore[no-redef]
        VERSIONS,
        BridgeCluster,
        auth_refusal_problem,
        bridge,
        get_jobs,
        jwks_sync,
        wait_rest_accepts,
    )

pytestmark = pytest.mark.slurm

USER = "alice"


def accepted(bc: BridgeCluster, token: str) -> None:
    r = get_jobs(bc.cluster, token, USER)
    assert r.status_code == 200, f"Slurm {bc.version} refused a good token: {r.status_code}"


def refused(bc: BridgeCluster, token: str) -> None:
    problem = auth_refusal_problem(bc.cluster, get_jobs(bc.cluster, token, USER))
    assert problem is None, f"Slurm {bc.version}: {problem}"


@pytest.mark.parametrize("version", VERSIONS)
def test_revoking_the_active_key_kills_its_tokens(
    make_slurm: Callable[[str], BridgeCluster],
    serve_bridge: Callable[[Path], BridgeServer],
    version: str,
) -> None:
    bc = make_slurm(version)
    server = serve_bridge(bc.keys_dir)
    hs256 = bc.mint(USER, "--alg", "HS256")
    ring = KeyRing.load(bc.keys_dir)
    assert ring.active is not None and ring.next is not None
    stolen, promoted = ring.active.kid, ring.next.kid
    victim = bc.mint(USER)
    assert jwt.get_unverified_header(victim)["kid"] == stolen
    accepted(bc, victim)

    proc = bridge("keys", "revoke", "--keys-dir", bc.keys_dir, "--", stolen, check=True)
    assert f"revoked {stolen}" in proc.stdout
    after = KeyRing.load(bc.keys_dir)
    assert after.active is not None and after.active.kid == promoted
    assert after.next is not None and after.next.kid not in (stolen, promoted)
    assert stolen not in [k["kid"] for k in after.jwks()["keys"]]
    assert not (Path(bc.keys_dir) / f"rs256-{stolen}.pem").exists()

    assert jwks_sync(bc, server.url).returncode == 3
    wait_rest_accepts(bc.cluster, hs256, USER)
    assert stolen not in bc.jwks_file_kids()
    fresh = bc.mint(USER)
    assert jwt.get_unverified_header(fresh)["kid"] == promoted
    if version == "22.05":
        accepted(bc, victim)  # 22.05 reads the JWKS only at start: reconfigure is not enough
        bc.cluster.restart_slurmctld()
    refused(bc, victim)
    accepted(bc, fresh)
    accepted(bc, hs256)
