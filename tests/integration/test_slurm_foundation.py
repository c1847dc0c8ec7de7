"""The bridge's tokens against real slurmctld/slurmrestd, Slurm 22.05, 24.11 and 26.05.

What is proven here, each time by the real daemons:
- tokens from ``slurm-jwt-bridge mint`` (RS256 and HS256) are accepted by slurmrestd, and a job
  submitted with one runs as that user;
- Slurm refuses an unknown kid, a forged signature and an expired token with each version's
  documented answer (22.05: 500; 24.11 and 26.05: 511 "Protocol authentication error", 1007);
- a token for a name the controller cannot resolve is NOT refused: Slurm authenticates it as
  "nobody" (uid 99); the bridge's default policy mints it (see the test for what that allows);
- an HS256 token is byte-compatible with ``scontrol token`` from the same key;
- key rotation: the pre-published ``next`` key works without any reload; a key slurmctld has not
  loaded is refused until ``scontrol reconfigure`` (23.11+: 24.11, 26.05) or a slurmctld restart
  (22.05).
"""

from __future__ import annotations

import json
import pwd
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from slurm_jwt_bridge.keys import KeyRing, rsa_kid
from slurm_jwt_bridge.minting import mint_slurm_token, slurm_claims

try:
    from tests.helpers.bridge import BridgeServer
    from tests.helpers.slurm_rest import (
        VERSIONS,
        BridgeCluster,
        auth_headers,
        auth_refusal_problem,
        bridge,
        get_jobs,
        jwks_sync,
        jwt_parts,
        ordered_claims,
        rest_url,
        run_whoami_job,
        submit_body,
        wait_rest_accepts,
    )
except ModuleNotFoundError:  # tests/ itself is on sys.path (its conftest.py), the repo root not
    from helpers.bridge import BridgeServer  # type: ignore[no-redef]
    from helpers.slurm_rest import (  # type: ignore[no-redef]
        VERSIONS,
        BridgeCluster,
        auth_headers,
        auth_refusal_problem,
        bridge,
        get_jobs,
        jwks_sync,
        jwt_parts,
        ordered_claims,
        rest_url,
        run_whoami_job,
        submit_body,
        wait_rest_accepts,
    )

pytestmark = pytest.mark.slurm

USER = "alice"
NO_SUCH_USER = "nosuchuser42"
SLURM_AUTH_NOBODY = 99  # what Slurm's auth plugins return for a name that does not resolve
HS256_HEADER = b'{"alg":"HS256","typ":"JWT"}'

MakeSlurm = Callable[[str], BridgeCluster]
ServeBridge = Callable[[Path], BridgeServer]


@pytest.fixture(scope="module")
def stranger_key() -> rsa.RSAPrivateKey:
    """An RSA key the bridge never had (for unknown-kid and forged-signature tokens)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ok(resp: requests.Response) -> str:
    return f"{resp.status_code} {resp.text[:500]}"


def assert_accepted(bc: BridgeCluster, token: str, user: str = USER) -> None:
    r = get_jobs(bc.cluster, token, user)
    assert r.status_code == 200, f"Slurm {bc.version} refused a good token: {ok(r)}"


def assert_refused(bc: BridgeCluster, token: str, user: str = USER) -> None:
    problem = auth_refusal_problem(bc.cluster, get_jobs(bc.cluster, token, user))
    assert problem is None, f"Slurm {bc.version}: {problem}"


def kid_of(token: str) -> str | None:
    return jwt.get_unverified_header(token).get("kid")


# ------------------------------------------------------------------------------ accepted tokens


@pytest.mark.parametrize("alg", ["RS256", "HS256"])
def test_cli_minted_token_gets_200_from_slurmrestd(slurm: BridgeCluster, alg: str) -> None:
    args = ("--alg", "HS256") if alg == "HS256" else ()  # RS256 is the CLI's default
    token = slurm.mint(USER, *args)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == alg
    if alg == "RS256":
        active = KeyRing.load(slurm.keys_dir).active
        assert active is not None and header["kid"] == active.kid
        assert active.kid in slurm.jwks_file_kids()
    else:
        assert "kid" not in header
        assert slurm.cluster.hs256_key_path.read_bytes() == slurm.hs256_key
    r = get_jobs(slurm.cluster, token, USER)
    assert r.status_code == 200, ok(r)
    assert isinstance(r.json()["jobs"], list)


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_job_submitted_with_rs256_token_runs_as_that_user(slurm: BridgeCluster, user: str) -> None:
    token = slurm.mint(user)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    state, who = run_whoami_job(slurm.cluster, token, user)
    assert (state, who) == ("COMPLETED", user)


# ------------------------------------------------------------------------------ refused tokens


def _refusal_case(
    case: str, bc: BridgeCluster, stranger: rsa.RSAPrivateKey
) -> tuple[str, str, str]:
    """(bad token, control token differing only in the faulty part, what is wrong)."""
    ring = KeyRing.load(bc.keys_dir)
    active = ring.active
    assert active is not None
    now = int(time.time())
    claims = slurm_claims(USER, now, now + 300, None)
    control = jwt.encode(claims, active.private_key, algorithm="RS256", headers={"kid": active.kid})
    if case == "unknown_kid":
        kid = rsa_kid(stranger.public_key())
        assert kid not in bc.jwks_file_kids()
        bad = jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": kid})
        return bad, control, f"kid {kid} is not in the JWKS"
    if case == "forged_signature":
        bad = jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": active.kid})
        return bad, control, "signed by another key under the active kid"
    if case == "expired":
        # The bridge's own active key; issued an hour ago for 300 s, so exp < now.
        expired = mint_slurm_token(ring, USER, 300, now=now - 3600)
        assert expired.kid == active.kid and expired.exp < now
        fresh = mint_slurm_token(ring, USER, 300)
        return expired.token, fresh.token, f"exp {expired.exp} < now {now}"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["unknown_kid", "forged_signature", "expired"])
def test_slurm_refuses_bad_token(
    slurm: BridgeCluster, stranger_key: rsa.RSAPrivateKey, case: str
) -> None:
    bad, control, why = _refusal_case(case, slurm, stranger_key)
    assert_accepted(slurm, control)
    r = get_jobs(slurm.cluster, bad, USER)
    problem = auth_refusal_problem(slurm.cluster, r)
    assert problem is None, f"{why}: {problem}"


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_user_is_refused_by_policy_because_slurm_would_take_it_as_nobody(
    make_slurm: MakeSlurm, version: str
) -> None:
    """Real behaviour (22.05.8, 24.11.5 and 26.05.5): a valid token whose ``sun`` does not resolve
    on the controller is not refused; Slurm authenticates it as nobody (uid 99). Read-only queries
    succeed; 26.05 rejects a job submission; 22.05 and 24.11 accept it and the job can never
    launch.
    Acting for another (real) user with it is refused like any other bad token.
    That is why the bridge's default policy (mapping.require_local_account = true) refuses such
    a name; the token here is minted around the policy, with the library.
    A fresh cluster: the 22.05/24.11 part leaves a job behind."""
    bc = make_slurm(version)
    cluster = bc.cluster
    with pytest.raises(KeyError):
        pwd.getpwnam(NO_SUCH_USER)
    getent = cluster.run(["getent", "passwd", NO_SUCH_USER])
    assert getent.returncode == 2, f"{NO_SUCH_USER} exists on the controller: {getent.stdout}"

    # Policy: the bridge refuses a name without a local account by default.
    refused = bridge("mint", NO_SUCH_USER, "--keys-dir", bc.keys_dir)
    assert refused.returncode != 0 and refused.stdout == ""
    assert "has no local account" in refused.stderr
    cli_token = mint_slurm_token(KeyRing.load(bc.keys_dir), NO_SUCH_USER, 300).token
    assert jwt.decode(cli_token, options={"verify_signature": False})["sun"] == NO_SUCH_USER
    r = get_jobs(cluster, cli_token, NO_SUCH_USER)
    assert r.status_code == 200, f"read-only query as nobody: {ok(r)}"
    # Only root/SlurmUser may act for another user: refused, version's documented answer.
    assert_refused(bc, cli_token, USER)

    out = f"/tmp/sjb-nobody-{cluster.cluster_name}.out"
    r = requests.post(
        rest_url(cluster, "job/submit"),
        headers=auth_headers(cluster, cli_token, NO_SUCH_USER),
        json=submit_body(cluster.api_version, "#!/bin/bash\nid -un\n", out, "sjb-nobody"),
        timeout=30,
    )
    if version == "26.05":
        assert r.status_code == 500, ok(r)
        errors = r.json()["errors"]
        assert any(
            e.get("error_number") == 6010 and "nobody" in e.get("error", "") for e in errors
        ), errors
        return
    # 22.05 and 24.11 queue the job as nobody(99); launching fails (no passwd entry for uid 99),
    # so the job is requeued (briefly COMPLETING, then PENDING again) and its script never runs.
    assert r.status_code == 200, ok(r)
    job_id = str(r.json()["job_id"])
    try:
        show = cluster.run(["scontrol", "show", "job", "-o", job_id], check=True).stdout
        # 22.05 names uid 99 "nobody"; 24.11 (no passwd entry for 99 in its chroot) shows 99.
        assert re.search(rf"UserId=(nobody|{SLURM_AUTH_NOBODY})\({SLURM_AUTH_NOBODY}\)", show), show
        deadline = time.monotonic() + 30
        while not (re.search(r"\bRestarts=[1-9]", show) and "JobState=PENDING " in show):
            assert time.monotonic() < deadline, f"job was not requeued: {show}"
            time.sleep(0.1)
            show = cluster.run(["scontrol", "show", "job", "-o", job_id], check=True).stdout
        log = (cluster.log_dir / "slurmctld.log").read_text(errors="replace")
        if version == "22.05":
            assert f"getpwuid failed for uid={SLURM_AUTH_NOBODY}" in log
        else:  # 24.11 logs only the requeue
            assert f"requeue JobId={job_id} per user/system request" in log
        assert not cluster.host_path(out).exists()
    finally:
        cluster.run(["scancel", job_id])


# ------------------------------------------------------------------------------ scontrol token


@pytest.mark.parametrize("include_jti", [False, True], ids=["no-jti", "default-jti"])
def test_hs256_token_matches_scontrol_token(
    slurm: BridgeCluster, tmp_path: Path, include_jti: bool
) -> None:
    lifespan = 600
    args: list[str | Path] = ["--alg", "HS256", "--lifespan", str(lifespan)]
    if not include_jti:
        config = tmp_path / "bridge.toml"
        config.write_text('[tokens]\ninclude_jti = false\n\n[audit]\ndestination = "none"\n')
        args += ["--config", config]
    ours = slurm.mint(USER, *args)
    ref = slurm.cluster.scontrol_token(USER, lifespan)

    ref_header, ref_payload = jwt_parts(ref)
    our_header, our_payload = jwt_parts(ours)
    assert ref_header == HS256_HEADER
    assert our_header == ref_header
    assert ours.split(".")[0] == ref.split(".")[0]

    ref_claims, our_claims = ordered_claims(ref), ordered_claims(ours)
    ref_names = [k for k, _ in ref_claims]
    assert ref_names == ["exp", "iat", "sun"]
    assert [k for k, _ in our_claims] == ref_names + ([] if not include_jti else ["jti"])
    for claims in (ref_claims, our_claims):
        values = dict(claims)
        assert type(values["exp"]) is int and type(values["iat"]) is int
        assert values["sun"] == USER
        assert values["exp"] - values["iat"] == lifespan
    # Compact JSON in this key order: the same serialization as scontrol's libjwt.
    assert ref_payload == json.dumps(dict(ref_claims), separators=(",", ":")).encode()
    assert our_payload == json.dumps(dict(our_claims), separators=(",", ":")).encode()
    if include_jti:
        assert type(dict(our_claims)["jti"]) is str and dict(our_claims)["jti"]

    for token in (ref, ours):  # both signed with the same key bytes, both accepted
        jwt.decode(token, slurm.hs256_key, algorithms=["HS256"])
        assert_accepted(slurm, token)


# ------------------------------------------------------------------------------ rotation


def _rotate(bc: BridgeCluster) -> str:
    """``keys rotate`` with the CLI; return the new active kid."""
    bridge("keys", "rotate", "--keys-dir", bc.keys_dir, "--force", check=True)
    active = KeyRing.load(bc.keys_dir).active
    assert active is not None
    return active.kid


def _sync(bc: BridgeCluster, server: BridgeServer) -> subprocess.CompletedProcess[str]:
    """``jwks sync`` as an operator runs it on the controller host, reconfigure included."""
    return jwks_sync(bc, server.url)


def _sync_changed(bc: BridgeCluster, server: BridgeServer, hs256: str) -> None:
    proc = _sync(bc, server)
    assert proc.returncode == 3, f"expected 'changed': {proc.stdout}{proc.stderr}"
    # The controller may be re-exec'ing (26.05); wait until it answers a token it always takes.
    wait_rest_accepts(bc.cluster, hs256, USER)


def _sync_unchanged(bc: BridgeCluster, server: BridgeServer) -> None:
    proc = _sync(bc, server)
    assert proc.returncode == 0, f"expected 'unchanged': {proc.stdout}{proc.stderr}"
    assert "unchanged" in proc.stdout


@pytest.mark.parametrize("version", VERSIONS)
def test_rotation_prepublished_next_key_works_without_reload(
    make_slurm: MakeSlurm, serve_bridge: ServeBridge, version: str
) -> None:
    """Fact 1: ``keys init`` publishes ``next`` before it signs, so after one rotation the new
    active key is already loaded by slurmctld: accepted on both versions before any sync,
    reconfigure or restart. Tokens of the retired key keep working."""
    bc = make_slurm(version)
    server = serve_bridge(bc.keys_dir)
    hs256 = bc.mint(USER, "--alg", "HS256")
    ring = KeyRing.load(bc.keys_dir)
    assert ring.active is not None and ring.next is not None
    old_kid, next_kid = ring.active.kid, ring.next.kid
    assert bc.jwks_file_kids() == [next_kid, old_kid]
    _sync_unchanged(bc, server)  # `jwks export` and the served JWKS agree

    old_token = bc.mint(USER)
    assert kid_of(old_token) == old_kid
    assert_accepted(bc, old_token)

    assert _rotate(bc) == next_kid
    new_token = bc.mint(USER)
    assert kid_of(new_token) == next_kid
    assert_accepted(bc, new_token)  # no sync, no reconfigure, no restart: even on 22.05
    assert_accepted(bc, old_token)

    _sync_changed(bc, server, hs256)  # publishes the new next key
    new_next = KeyRing.load(bc.keys_dir).next
    assert new_next is not None
    assert bc.jwks_file_kids() == [new_next.kid, next_kid, old_kid]
    assert_accepted(bc, new_token)
    assert_accepted(bc, old_token)  # retired, still published until its tokens expired
    assert_accepted(bc, bc.mint(USER))
    _sync_unchanged(bc, server)


@pytest.mark.parametrize("version", VERSIONS)
def test_rotation_key_never_synced_is_refused_until_reconfigure_or_restart(
    make_slurm: MakeSlurm, serve_bridge: ServeBridge, version: str
) -> None:
    """Fact 2: two rotations without a sync in between make a never-published key active:
    refused everywhere; ``jwks sync --reconfigure`` fixes 24.11 and 26.05 (reconfigure reloads
    the JWKS) but not 22.05, which reads the JWKS only at start: only a slurmctld restart fixes
    it."""
    bc = make_slurm(version)
    server = serve_bridge(bc.keys_dir)
    hs256 = bc.mint(USER, "--alg", "HS256")
    old_token = bc.mint(USER)

    _rotate(bc)
    unsynced_kid = _rotate(bc)
    assert unsynced_kid not in bc.jwks_file_kids()
    token = bc.mint(USER)
    assert kid_of(token) == unsynced_kid
    assert_refused(bc, token)

    _sync_changed(bc, server, hs256)
    assert unsynced_kid in bc.jwks_file_kids()
    if version != "22.05":  # 23.11+ re-reads the JWKS on reconfigure
        assert_accepted(bc, token)
    else:
        assert_refused(bc, token)  # in the file, but reconfigure does not reload it on 22.05
        bc.cluster.restart_slurmctld()
        assert_accepted(bc, token)
    assert_accepted(bc, old_token)
    assert_accepted(bc, hs256)
    _sync_unchanged(bc, server)


@pytest.mark.parametrize("version", VERSIONS)
def test_rotation_key_synced_after_start_needs_restart_on_2205(
    make_slurm: MakeSlurm, serve_bridge: ServeBridge, version: str
) -> None:
    """A sync after each rotation is enough on 24.11 and 26.05; on 22.05 the next key published
    by a sync after slurmctld started is not loaded, so the rotation after it needs a restart
    first."""
    bc = make_slurm(version)
    server = serve_bridge(bc.keys_dir)
    hs256 = bc.mint(USER, "--alg", "HS256")
    old_token = bc.mint(USER)

    _rotate(bc)
    _sync_changed(bc, server, hs256)  # publishes the new next key (reconfigure included)
    synced_next = KeyRing.load(bc.keys_dir).next
    assert synced_next is not None and synced_next.kid in bc.jwks_file_kids()

    assert _rotate(bc) == synced_next.kid
    token = bc.mint(USER)
    assert kid_of(token) == synced_next.kid
    if version != "22.05":
        assert_accepted(bc, token)  # loaded by the previous sync's reconfigure
        _sync_changed(bc, server, hs256)
    else:
        assert_refused(bc, token)  # published, but slurmctld 22.05 never re-read the file
        _sync_changed(bc, server, hs256)
        assert_refused(bc, token)
        bc.cluster.restart_slurmctld()
    assert_accepted(bc, token)
    assert_accepted(bc, old_token)
    _sync_unchanged(bc, server)
