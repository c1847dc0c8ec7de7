"""Without the bridge: slurmctld pointed at the identity provider, side by side with the bridge.

The setup sites build instead of this service: slurmctld's ``jwks=`` file holds the identity
provider's own public keys, ``userclaimfield=preferred_username`` (Slurm 23.02+) names the user,
and clients send their IdP access token straight to slurmrestd as ``Authorization: Bearer``.
One real Slurm 26.05 cluster trusts both: its JWKS file holds the real oidc-provider's keys
(tests/oidc-provider), two local test issuers' keys (tests/helpers/test_issuer.py: one
Keycloak-like, one publishing its keys the way Entra ID does, without ``alg``) and the bridge's
own key; ``max_token_lifespan=3600`` is set as a site would. Every case sends the same IdP token
twice: straight to slurmrestd, and through the bridge's proxy (which maps ``preferred_username``
lower-cased, domain stripped, through ``[policy]``). What each path did is checked in Slurm: the
``id -un`` of a submitted job, or the refusal.

In this cluster SlurmUser is root, so the root case is also the SlurmUser case.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from tests.conftest import skip_or_fail
from tests.helpers.bridge import BridgeServer, start_bridge
from tests.helpers.oidc import OidcProvider
from tests.helpers.slurm import SlurmCluster, start_cluster
from tests.helpers.slurm_rest import (
    auth_refusal_problem,
    proxy_bridge_config,
    rest_url,
    start_bridge_cluster,
    wait_rest_accepts,
    whoami_via,
)
from tests.helpers.test_issuer import IssuerHandle, TestIssuer

pytestmark = [pytest.mark.slurm, pytest.mark.oidc]

AUDIENCE = "https://bridge.test"
USERCLAIM = ("userclaimfield=preferred_username", "max_token_lifespan=3600")


@dataclass
class Setup:
    cluster: SlurmCluster
    bridge: BridgeServer
    idp: OidcProvider
    kc: IssuerHandle  # Keycloak-like test issuer (alg in its JWKS)
    entra: IssuerHandle  # Entra-like test issuer (no alg in its JWKS)
    bridge_keys: list[dict[str, Any]]

    # ---- the JWKS file a site would keep by hand ----

    def idp_keys(self) -> list[dict[str, Any]]:
        return [*self.idp.jwks()["keys"], *self.kc.jwks()["keys"], *self.entra.jwks()["keys"]]

    def write_jwks_file(self) -> None:
        """What the site's refresh job does: copy the IdPs' current keys into slurmctld's file."""
        self.cluster.install_jwks(json.dumps({"keys": [*self.idp_keys(), *self.bridge_keys]}))

    # ---- the two paths ----

    def direct(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def get_jobs_direct(self, token: str) -> requests.Response:
        return requests.get(rest_url(self.cluster, "jobs"), headers=self.direct(token), timeout=30)

    def get_jobs_bridge(self, token: str) -> requests.Response:
        url = f"{self.bridge.url}/slurm/{self.cluster.api_version}/jobs"
        return requests.get(url, headers=self.direct(token), timeout=30)

    def whoami_direct(self, headers: dict[str, str]) -> str:
        state, who = whoami_via(self.cluster, self.cluster.restd_url, headers)
        assert state == "COMPLETED", state
        return who

    def whoami_bridge(self, token: str) -> str:
        state, who = whoami_via(self.cluster, self.bridge.url, self.direct(token))
        assert state == "COMPLETED", state
        return who

    def kc_token(self, username: str, **claims: Any) -> str:
        return self.kc.mint(
            {"sub": f"sub-{username}", "aud": AUDIENCE, **claims, "preferred_username": username}
        )


def issuer_tables(*issuers: IssuerHandle) -> str:
    """``[[issuers]]`` tables for test issuers (kind oidc, refetching keys on any unknown kid)."""
    return "".join(
        f"\n[[issuers]]\nname = {json.dumps(h.path.strip('/').replace('/', '-'))}\n"
        f'kind = "oidc"\nissuer = {json.dumps(h.issuer)}\naudiences = [{json.dumps(AUDIENCE)}]\n'
        "jwks_refetch_interval = 0\n"
        for h in issuers
    )


@pytest.fixture(scope="module")
def setup(idp: OidcProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    if os.geteuid() != 0:
        skip_or_fail("real Slurm clusters need root (daemons, chroot, useradd)")
    work = tmp_path_factory.mktemp("idp-direct")
    issuers = TestIssuer().start()
    kc = issuers.add_issuer("/realms/hpc")
    entra = issuers.add_issuer("/tenant-0001/v2.0", jwk_alg_in_jwks=False)
    idp_keys = [*idp.jwks()["keys"], *kc.jwks()["keys"], *entra.jwks()["keys"]]
    bc = None
    server = None
    try:
        bc = start_bridge_cluster(
            "26.05", work, extra_jwks_keys=idp_keys, auth_alt_parameters=USERCLAIM
        )
        cluster, keys_dir = bc.cluster, bc.keys_dir
        bridge_keys = json.loads((work / "jwks.json").read_text())["keys"]
        config = proxy_bridge_config(
            idp,
            keys_dir,
            cluster.restd_url,
            issuers_extra=issuer_tables(kc, entra),
            rule_extra="lowercase = true\nstrip_domain = true",
        )
        server = start_bridge(work / "bridge", config)
        yield Setup(cluster, server, idp, kc, entra, bridge_keys)
    finally:
        if server is not None:
            server.stop()
        if bc is not None:
            bc.stop()
        issuers.stop()


def assert_bridge_refuses(resp: requests.Response, reason: str) -> None:
    assert resp.status_code == 403, resp.text[:500]
    body = resp.json()
    assert body["error"] == "access_denied"
    assert reason in body["error_description"], body


# --------------------------------------------------------------------------------------------


def test_the_baseline_works_for_an_ordinary_user(setup: Setup) -> None:
    """alice's real access token (RS256, kid, typ at+jwt) is accepted by slurmctld 26.05 from
    the IdP's own JWKS: both paths run her job as alice. The cases below are what else it does."""
    token = setup.idp.login_tokens("alice", resource=setup.idp.resource)["access_token"]
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    assert setup.whoami_direct(setup.direct(token)) == "alice"
    assert setup.whoami_bridge(token) == "alice"


def test_preferred_username_root_is_a_master_key(setup: Setup) -> None:
    """The IdP account mallory has preferred_username "root" (any IdP whose users or admins can
    set that claim). Direct: her token runs jobs as root, and with X-SLURM-USER-NAME as anyone
    (alice). The same goes for the all-digit name "0" (uid 0). The bridge refuses both."""
    token = setup.idp.login_tokens("mallory", resource=setup.idp.resource)["access_token"]
    assert setup.whoami_direct(setup.direct(token)) == "root"
    impersonate = {"X-SLURM-USER-TOKEN": token, "X-SLURM-USER-NAME": "alice"}
    assert setup.whoami_direct(impersonate) == "alice"
    assert setup.whoami_direct(setup.direct(setup.kc_token("0"))) == "root"

    assert_bridge_refuses(setup.get_jobs_bridge(token), "master key")
    assert_bridge_refuses(setup.get_jobs_bridge(setup.kc_token("0")), "all digits")


def test_mixed_case_and_email_names_map_to_nobody(setup: Setup) -> None:
    """eve's preferred_username is "Eve@LAB.example.org" (real oidc-provider); another user's
    is "Alice@Example.org", Entra's usual UPN shape. Direct: slurmctld resolves neither, accepts
    the token as user nobody, which reads the whole queue (alice's held job included) and is
    refused only at submission. The bridge lower-cases and strips the domain by rule: the second
    becomes alice (her job runs as alice); a name with no local account is refused (a fresh one:
    other suites on this host may create eve)."""
    submitted = submit_held(setup.cluster, setup.kc_token("alice"))
    assert submitted.status_code == 200, submitted.text[:500]
    held = int(submitted.json()["job_id"])
    try:
        eve = setup.idp.login_tokens("eve", resource=setup.idp.resource)["access_token"]
        upn = setup.kc_token("Alice@Example.org")
        for token in (eve, upn):
            listed = setup.get_jobs_direct(token)
            assert listed.status_code == 200, listed.text[:300]
            jobs = listed.json()["jobs"]
            assert held in [j["job_id"] for j in jobs]
            r = submit_held(setup.cluster, token)
            assert r.status_code == 500, r.text[:300]
            assert "Rejecting authentication of user nobody" in r.text

        assert setup.whoami_bridge(upn) == "alice"
        stranger = f"Stranger{secrets.token_hex(4)}"
        with pytest.raises(KeyError):
            pwd.getpwnam(stranger.lower())
        refused = setup.get_jobs_bridge(setup.kc_token(f"{stranger}@Example.org"))
        assert_bridge_refuses(refused, "no local account")
    finally:
        setup.cluster.run(["scancel", str(held)], timeout=30)


def test_numeric_and_system_names_map_to_the_wrong_account(setup: Setup) -> None:
    """Slurm reads an all-digit name as a uid and resolves system accounts like any other:
    an IdP user named "<bob's uid>" runs jobs as bob, one named "daemon" as daemon. The bridge
    refuses both (all digits; uid below policy.min_uid)."""
    uid = setup.cluster.run(["id", "-u", "bob"], check=True, timeout=30).stdout.strip()
    assert uid.isdigit()
    assert setup.whoami_direct(setup.direct(setup.kc_token(uid))) == "bob"
    assert setup.whoami_direct(setup.direct(setup.kc_token("daemon"))) == "daemon"

    assert_bridge_refuses(setup.get_jobs_bridge(setup.kc_token(uid)), "all digits")
    assert_bridge_refuses(setup.get_jobs_bridge(setup.kc_token("daemon")), "system account")


def test_entra_style_jwks_without_alg(setup: Setup, tmp_path: Path) -> None:
    """Keys without ``alg`` (Entra ID's JWKS): Slurm 26.05.5 loads and matches them (the token
    runs as alice); 22.05 skips them: the same kind of token, carrying ``sun`` because 22.05 has
    no userclaimfield, is refused there. The bridge verifies them whatever Slurm's version."""
    token = setup.entra.mint({"aud": AUDIENCE, "sub": "oid-alice", "preferred_username": "alice"})
    assert "alg" not in setup.entra.jwks()["keys"][0]
    if setup.cluster.slurm_full_version != "26.05.5":
        pytest.fail(f"recorded for Slurm 26.05.5, this is {setup.cluster.slurm_full_version}")
    assert setup.whoami_direct(setup.direct(token)) == "alice"
    assert setup.whoami_bridge(token) == "alice"

    old = start_cluster(
        "22.05", tmp_path / "c2205", os.urandom(32), json.dumps(setup.entra.jwks()), ("alice",)
    )
    try:
        sun = setup.entra.mint({"aud": AUDIENCE, "sun": "alice"})
        r = requests.get(
            rest_url(old, "jobs"),
            headers={"X-SLURM-USER-TOKEN": sun, "X-SLURM-USER-NAME": "alice"},
            timeout=30,
        )
        assert auth_refusal_problem(old, r) is None, auth_refusal_problem(old, r)
    finally:
        old.stop()


def test_idp_token_lifetime_becomes_slurms(setup: Setup) -> None:
    """An IdP token valid for 30 days (an offline or long-lived access token) is accepted by
    slurmctld for those 30 days: only ``exp`` is checked, and ``max_token_lifespan=3600`` bounds
    ``scontrol token`` alone. The bridge turns the same token into a Slurm token of its own
    lifetime (tokens.default_lifetime, 1800 s)."""
    now = int(time.time())
    token = setup.kc_token("alice", iat=now, exp=now + 30 * 86400)
    r = setup.get_jobs_direct(token)
    assert r.status_code == 200, r.text[:300]

    minted = requests.post(
        f"{setup.bridge.url}/api/v1/token", headers=setup.direct(token), timeout=30
    )
    assert minted.status_code == 200, minted.text[:300]
    claims = jwt.decode(minted.json()["access_token"], options={"verify_signature": False})
    assert claims["sun"] == "alice"
    assert claims["exp"] - claims["iat"] == 1800


def test_idp_key_rotation_breaks_direct_clients_until_the_file_is_refreshed(
    setup: Setup,
) -> None:
    """The IdP signs with a new key. Direct: every new token is refused (511) until the site
    copies the new JWKS into slurmctld's file and runs ``scontrol reconfigure``. The bridge
    fetches the new key on the unknown kid and goes on at once."""
    before = setup.kc_token("alice")
    assert setup.get_jobs_direct(before).status_code == 200
    setup.kc.rotate()
    after = setup.kc_token("alice")
    assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]

    refused = setup.get_jobs_direct(after)
    assert auth_refusal_problem(setup.cluster, refused) is None, auth_refusal_problem(
        setup.cluster, refused
    )
    assert setup.get_jobs_bridge(after).status_code == 200
    assert setup.whoami_bridge(after) == "alice"

    setup.write_jwks_file()
    refused_again = setup.get_jobs_direct(after)  # the file alone is not read
    assert auth_refusal_problem(setup.cluster, refused_again) is None
    setup.cluster.reconfigure()
    wait_rest_accepts(setup.cluster, after, "alice")
    assert setup.whoami_direct(setup.direct(after)) == "alice"


# --------------------------------------------------------------------------------------------


def submit_held(cluster: SlurmCluster, token: str) -> requests.Response:
    """POST a held job straight to slurmrestd with ``token`` as Bearer."""
    body = {
        "job": {
            "name": "idp-direct",
            "current_working_directory": "/tmp",
            "standard_output": "/dev/null",
            "environment": ["PATH=/usr/bin:/bin"],
            "script": "#!/bin/bash\ntrue\n",
            "hold": True,
        }
    }
    return requests.post(
        rest_url(cluster, "job/submit"),
        headers={"Authorization": f"Bearer {token}"},
        json=body,
        timeout=30,
    )
