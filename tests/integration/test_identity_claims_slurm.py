"""Identity claims (uid, gid, id) against real Slurm: 26.05 with ``use_jwt_client_ids_only``
runs jobs for users its controller cannot look up; 22.05 and 24.11 ignore the claims.

Real parts: Slurm 26.05 (sid chroot), 24.11 (trixie chroot), 22.05 (host), the npm oidc-provider
in Keycloak style with LDAP-like POSIX claims (scope ``posix``), the bridge's token API (Flask app
in-process, the real pipeline and key ring), the host's NSS and the real ``id`` program.

- NSS source: a user that exists on the bridge's host only (not in the chroot) exchanges an
  identity-provider token; the job on 26.05 runs with their uid, gid and supplementary gids; the
  same user's token without identity claims is refused by Slurm.
- claims source: Keycloak-shaped tokens carrying uidNumber/gidNumber for a user who exists
  nowhere: accepted by 26.05 and the job runs with those ids; a token claiming uid 0, the
  SlurmUser's uid, a uid below min_uid, a string or a negative number is refused by the bridge
  with a reason and an audit line.
- 26.05 with ``use_jwt_client_ids`` (not ``_only``) takes the claims and still looks up users
  whose token has none.
- The same kinds of tokens (for a user those controllers know) are accepted by 22.05, 24.11 and
  26.05 without the parameter, and the job runs as that user.
"""

from __future__ import annotations

import json
import pwd
import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import init_keys
from slurm_jwt_bridge.settings import parse_settings

try:
    from tests.helpers.oidc import OidcProvider, start_oidc_provider
    from tests.helpers.slurm import REST_USER, ensure_host_only_user
    from tests.helpers.slurm_rest import (
        BridgeCluster,
        auth_refusal_problem,
        get_jobs,
        submit_job,
    )
except ModuleNotFoundError:  # tests/ itself is on sys.path (its conftest.py), the repo root not
    from helpers.oidc import OidcProvider, start_oidc_provider  # type: ignore[no-redef]
    from helpers.slurm import REST_USER, ensure_host_only_user  # type: ignore[no-redef]
    from helpers.slurm_rest import (  # type: ignore[no-redef]
        BridgeCluster,
        auth_refusal_problem,
        get_jobs,
        submit_job,
    )

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
SCOPE = "openid profile posix"
HOST_ONLY = "sjbidhost"  # exists on the bridge's host only
HOST_ONLY_GROUPS = ("sjbidgrp1", "sjbidgrp2")
NOWHERE = "sjbidldap"  # exists in the identity provider only
NOWHERE_UID = 23456
NOWHERE_GIDS = [23456, 23500, 23501]
KNOWN = "alice"  # exists on every controller (mirrored into the chroots)
MIN_UID = 500

MakeSlurm = Callable[..., BridgeCluster]


def posix(uid: Any, gid: Any, gids: list[Any], home: str) -> dict[str, Any]:
    return {
        "uidNumber": uid,
        "gidNumber": gid,
        "gids": gids,
        "homeDirectory": home,
        "loginShell": "/bin/bash",
    }


def account(name: str, **claims: Any) -> dict[str, Any]:
    return {"preferred_username": name, **claims}


def host_ids(name: str) -> tuple[int, int, list[int]]:
    """(uid, gid, all gids) from the real ``id`` program on the bridge's host."""

    def run(flag: str) -> str:
        return subprocess.run(["id", flag, name], capture_output=True, text=True, check=True).stdout

    return int(run("-u")), int(run("-g")), sorted({int(g) for g in run("-G").split()})


# Refused by the bridge: (account id, claims, audit/answer reason fragment)
def bad_accounts() -> dict[str, tuple[dict[str, Any], str]]:
    slurm_uid = pwd.getpwnam(REST_USER).pw_uid  # the bridge's policy.slurm_user below
    home = "/home/x"
    return {
        "badroot": (posix(0, 0, [0], home), "has uid 0 (identity claim)"),
        "badslurm": (
            posix(slurm_uid, 4000, [4000], home),
            f"has uid {slurm_uid} (identity claim), the uid of the SlurmUser",
        ),
        "badsystem": (posix(MIN_UID - 1, 4000, [4000], home), "< policy.min_uid"),
        "badstring": (posix(str(NOWHERE_UID), 4000, [4000], home), "got a string"),
        "badnegative": (posix(-7, 4000, [4000], home), "must not be negative, got -7"),
    }


@pytest.fixture(scope="module")
def keycloak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """oidc-provider in Keycloak style; accounts carry POSIX claims like an LDAP-federated
    realm whose attribute mappers emit uidNumber/gidNumber as JSON integers."""
    ensure_host_only_user(HOST_ONLY, HOST_ONLY_GROUPS)
    known = pwd.getpwnam(KNOWN)
    accounts = {
        HOST_ONLY: account(HOST_ONLY),
        NOWHERE: account(
            NOWHERE, **posix(NOWHERE_UID, NOWHERE_GIDS[0], NOWHERE_GIDS, f"/home/{NOWHERE}")
        ),
        KNOWN: account(KNOWN, **posix(known.pw_uid, known.pw_gid, [known.pw_gid], known.pw_dir)),
        **{name: account(name, **claims) for name, (claims, _) in bad_accounts().items()},
    }
    prov = start_oidc_provider(
        tmp_path_factory.mktemp("identity-op"), style="keycloak", accounts=accounts
    )
    try:
        yield prov
    finally:
        prov.stop()


@dataclass
class Bridge:
    client: Any
    audit: Path

    def exchange(self, token: str, alg: str = "RS256") -> Any:
        form = {"grant_type": TE, "subject_token": token, "subject_token_type": AT, "alg": alg}
        return self.client.post("/oauth/token", data=form)

    def last_audit(self) -> dict[str, Any]:
        line: dict[str, Any] = json.loads(self.audit.read_text().splitlines()[-1])
        return line


def bridge_for(
    idp: OidcProvider, keys_dir: Path, workdir: Path, tokens: dict[str, Any], local: bool
) -> Bridge:
    """The bridge's token API over ``keys_dir`` (the keys the cluster trusts)."""
    workdir.mkdir(parents=True, exist_ok=True)
    audit = workdir / f"audit-{secrets.token_hex(4)}.log"
    data = {
        "keys": {"dir": str(keys_dir)},
        "audit": {"destination": f"file:{audit}"},
        "browser": {"enabled": False},
        "rate_limit": {"enabled": False},
        "tokens": tokens,
        "policy": {"slurm_user": REST_USER, "min_uid": MIN_UID},
        "issuers": [
            {"name": "kc", "kind": "keycloak", "issuer": idp.issuer, "audiences": [idp.resource]}
        ],
        "mapping": {"require_local_account": local, "rules": [{"claim": "preferred_username"}]},
    }
    return Bridge(create_app(parse_settings(data)).test_client(), audit)


NSS = {"identity_claims": True}
CLAIMS = {
    "identity_claims": True,
    "identity_source": "claims",
    "identity_claim_names": {"gids": "gids"},
}


def slurm_token(bridge: Bridge, idp: OidcProvider, user: str, alg: str = "RS256") -> str:
    r = bridge.exchange(idp.login_tokens(user, scope=SCOPE)["access_token"], alg)
    assert r.status_code == 200, r.json
    token: str = r.json["access_token"]
    return token


def job_ids(bc: BridgeCluster, token: str, user: str) -> tuple[int, int, list[int]]:
    """Run ``id`` as a job submitted with ``token``; (uid, gid, all gids) it printed.

    Each job has its own output files: one left in /tmp by another uid makes a job fail."""
    cluster = bc.cluster
    tag = f"{cluster.cluster_name}-{secrets.token_hex(4)}"
    result, out = f"/tmp/sjb-id-{tag}.txt", f"/tmp/sjb-id-{tag}.out"
    job = submit_job(cluster, token, user, f"#!/bin/bash\nid > {result}\n", out_path=out)
    try:
        state = cluster.wait_job(job, timeout=90)
        path = cluster.host_path(result)
        text = path.read_text() if path.exists() else ""
        assert state == "COMPLETED" and text, f"job {job}: {state} {text!r}"
    finally:
        for p in (result, out):
            cluster.host_path(p).unlink(missing_ok=True)
    m = re.match(r"uid=(\d+)\S* gid=(\d+)\S*(?: groups=(\S+))?", text)
    assert m, text
    groups = sorted({int(g.split("(")[0]) for g in (m.group(3) or "").split(",") if g})
    return int(m.group(1)), int(m.group(2)), groups


def chroot_has(bc: BridgeCluster, name: str) -> bool:
    return bc.cluster.run(["getent", "passwd", name]).returncode == 0


# ---------------------------------------------------------------- 26.05, use_jwt_client_ids_only


@pytest.fixture(scope="module")
def only_ids(make_slurm_module: MakeSlurm) -> BridgeCluster:
    return make_slurm_module("26.05", ("use_jwt_client_ids_only",))


@pytest.fixture(scope="module")
def keys_dir_for_refusals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keys = tmp_path_factory.mktemp("refusal-keys") / "keys"
    init_keys(keys)
    return keys


def test_host_only_user_runs_a_job_with_nss_identity(
    only_ids: BridgeCluster, keycloak: OidcProvider, tmp_path: Path
) -> None:
    assert not chroot_has(only_ids, HOST_ONLY), "the controller must not know the user"
    bridge = bridge_for(keycloak, only_ids.keys_dir, tmp_path, NSS, local=True)
    token = slurm_token(bridge, keycloak, HOST_ONLY)
    claims = jwt.decode(token, options={"verify_signature": False})
    uid, gid, groups = host_ids(HOST_ONLY)
    assert (claims["uid"], claims["gid"]) == (uid, gid)
    ident = claims["id"]
    assert ("groups" in ident) != ("gids" in ident)
    listed = ident["gids"] if "gids" in ident else list(ident["groups"].values())
    assert sorted(set(listed)) == groups and len(groups) == 1 + len(HOST_ONLY_GROUPS)
    assert ident["name"] == claims["sun"] == HOST_ONLY

    r = get_jobs(only_ids.cluster, token, HOST_ONLY)
    assert r.status_code == 200, r.text[:500]
    assert job_ids(only_ids, token, HOST_ONLY) == (uid, gid, groups)

    # The same user's token without identity claims: Slurm cannot resolve the user.
    plain = bridge_for(keycloak, only_ids.keys_dir, tmp_path, {}, local=True)
    bare = slurm_token(plain, keycloak, HOST_ONLY)
    assert "uid" not in jwt.decode(bare, options={"verify_signature": False})
    problem = auth_refusal_problem(only_ids.cluster, get_jobs(only_ids.cluster, bare, HOST_ONLY))
    assert problem is None, problem


def test_keycloak_uidnumber_claims_run_a_job_for_a_user_known_nowhere(
    only_ids: BridgeCluster, keycloak: OidcProvider, tmp_path: Path
) -> None:
    with pytest.raises(KeyError):
        pwd.getpwnam(NOWHERE)
    assert not chroot_has(only_ids, NOWHERE)
    bridge = bridge_for(keycloak, only_ids.keys_dir, tmp_path, CLAIMS, local=False)
    token = slurm_token(bridge, keycloak, NOWHERE, "HS256")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["uid"] == NOWHERE_UID and claims["id"]["gids"] == NOWHERE_GIDS
    assert "groups" not in claims["id"]
    assert bridge.last_audit()["uid"] == NOWHERE_UID
    assert job_ids(only_ids, token, NOWHERE) == (NOWHERE_UID, NOWHERE_GIDS[0], NOWHERE_GIDS)


@pytest.mark.parametrize("name", list(bad_accounts()))
def test_bridge_refuses_forbidden_or_malformed_uid_claims(
    keycloak: OidcProvider, tmp_path: Path, keys_dir_for_refusals: Path, name: str
) -> None:
    """Refused before anything is signed, so no cluster is needed to see it."""
    _claims, reason = bad_accounts()[name]
    bridge = bridge_for(keycloak, keys_dir_for_refusals, tmp_path, CLAIMS, local=False)
    r = bridge.exchange(keycloak.login_tokens(name, scope=SCOPE)["access_token"])
    assert r.status_code == 403, r.json
    assert r.json["error"] == "access_denied" and reason in r.json["error_description"]
    assert "access_token" not in r.json
    line = bridge.last_audit()
    assert line["outcome"] == "refused" and reason in line["reason"]
    assert line.get("user") == name or f"user {name!r}" in line["reason"]
    assert "jti" not in line and "kid" not in line


# ---------------------------------------------------------------- 26.05, use_jwt_client_ids


def test_use_jwt_client_ids_takes_the_claims_and_still_looks_up_others(
    make_slurm_module: MakeSlurm, keycloak: OidcProvider, tmp_path: Path
) -> None:
    """Without ``_only``: a token with the identity works for a user the controller cannot look
    up; a token without it still works for a user it can (``alice``, in the chroot)."""
    bc = make_slurm_module("26.05", ("use_jwt_client_ids",))
    assert not chroot_has(bc, HOST_ONLY) and chroot_has(bc, KNOWN)
    with_ids = bridge_for(keycloak, bc.keys_dir, tmp_path, NSS, local=True)
    token = slurm_token(with_ids, keycloak, HOST_ONLY)
    assert job_ids(bc, token, HOST_ONLY) == host_ids(HOST_ONLY)
    plain = bridge_for(keycloak, bc.keys_dir, tmp_path, {}, local=True)
    bare = slurm_token(plain, keycloak, KNOWN)
    assert "uid" not in jwt.decode(bare, options={"verify_signature": False})
    known = pwd.getpwnam(KNOWN)
    assert job_ids(bc, bare, KNOWN)[:2] == (known.pw_uid, known.pw_gid)


# ---------------------------------------------------------------- ignored elsewhere


@pytest.mark.parametrize("version", ["22.05", "24.11", "26.05"])
@pytest.mark.parametrize(("source", "alg"), [("nss", "RS256"), ("claims", "HS256")])
def test_identity_claims_are_ignored_without_use_jwt_client_ids(
    request: pytest.FixtureRequest,
    keycloak: OidcProvider,
    tmp_path: Path,
    version: str,
    source: str,
    alg: str,
) -> None:
    """22.05 and 24.11 know no identity claims; 26.05 without the parameter ignores them."""
    bc: BridgeCluster = request.getfixturevalue(f"slurm_{version.replace('.', '')}")
    bridge = bridge_for(
        keycloak, bc.keys_dir, tmp_path, NSS if source == "nss" else CLAIMS, local=True
    )
    token = slurm_token(bridge, keycloak, KNOWN, alg)
    claims = jwt.decode(token, options={"verify_signature": False})
    known = pwd.getpwnam(KNOWN)
    assert claims["uid"] == known.pw_uid and claims["id"]["name"] == KNOWN
    r = get_jobs(bc.cluster, token, KNOWN)
    assert r.status_code == 200, r.text[:500]
    assert job_ids(bc, token, KNOWN)[:2] == (known.pw_uid, known.pw_gid)
