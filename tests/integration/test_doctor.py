"""`slurm-jwt-bridge doctor` against real Slurm 22.05 and 26.05, put into each broken state.

Each test first shows that Slurm really refuses (or really accepts) the token, then that the
doctor names the cause in one line and exits 1 (or 0 when all is well).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.helpers.slurm_rest import (
    VERSIONS,
    BridgeCluster,
    auth_refusal_problem,
    bridge,
    get_jobs,
)


def doctor(bc: BridgeCluster, *args: str | os.PathLike[str]) -> tuple[int, list[str]]:
    """Run doctor as on the controller: slurm.conf as slurmctld sees it (inside the chroot for
    26.05, given with --root), the bridge's keys dir for the comparison."""
    c = bc.cluster
    root = ["--root", str(c.chroot)] if c.chroot is not None else []
    proc = bridge(
        "doctor",
        "--slurm-conf",
        c.conf_in_cluster,
        *root,
        "--keys-dir",
        bc.keys_dir,
        *args,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout.splitlines()


def fails(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith("FAIL")]


def refused_and_diagnosed(bc: BridgeCluster, token: str) -> list[str]:
    """Slurm really refuses ``token``; the doctor exits 1. Returns its FAIL lines."""
    problem = auth_refusal_problem(bc.cluster, get_jobs(bc.cluster, token, "alice"))
    assert problem is None, problem
    code, lines = doctor(bc, "--token", token)
    assert code == 1, lines
    return fails(lines)


def rotate_twice(bc: BridgeCluster) -> None:
    """Two forced rotations: the active key is one the JWKS file never had."""
    for _ in range(2):
        bridge("keys", "rotate", "--keys-dir", bc.keys_dir, "--force", check=True)


def hand_made(bc: BridgeCluster, claims: dict, header: dict | None = None) -> str:
    """A token signed with the bridge's active key, with claims the bridge would never mint."""
    ring = json.loads((bc.keys_dir / "ring.json").read_text())
    kid = next(k["kid"] for k in ring["keys"] if k["state"] == "active")
    pem = (bc.keys_dir / f"rs256-{kid}.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid, **(header or {})})


@pytest.fixture(params=VERSIONS)
def fresh(request: pytest.FixtureRequest, make_slurm: Callable[[str], BridgeCluster]):
    return make_slurm(request.param)


def test_healthy_cluster_exits_zero(fresh: BridgeCluster) -> None:
    token = fresh.mint("alice")
    assert get_jobs(fresh.cluster, token, "alice").status_code == 200
    code, lines = doctor(fresh, "--token", token)
    assert code == 0, lines
    assert not fails(lines)
    assert any("RS256 signature verifies" in ln for ln in lines), lines
    assert any("'alice' resolves to uid" in ln for ln in lines), lines


def test_young_next_key_is_not_activated(fresh: BridgeCluster) -> None:
    """A rotation seconds after the last one would activate a key slurmctld has not loaded
    (on 22.05 not even after a sync, until a restart): refused, and Slurm keeps working."""
    before = fresh.mint("alice")
    proc = bridge("keys", "rotate", "--keys-dir", fresh.keys_dir)
    assert proc.returncode == 1
    assert "min_next_age" in proc.stderr
    after = fresh.mint("alice")
    assert get_jobs(fresh.cluster, after, "alice").status_code == 200
    assert jwt.get_unverified_header(after)["kid"] == jwt.get_unverified_header(before)["kid"]
    code, lines = doctor(fresh, "--token", after)
    assert code == 0, lines


def test_active_key_never_published(fresh: BridgeCluster) -> None:
    rotate_twice(fresh)
    bad = refused_and_diagnosed(fresh, fresh.mint("alice"))
    assert any("active key" in ln and "missing from the JWKS file" in ln for ln in bad), bad
    assert any("is not in the JWKS file" in ln for ln in bad), bad


def test_file_synced_but_not_loaded(fresh: BridgeCluster) -> None:
    rotate_twice(fresh)
    time.sleep(3)  # doctor knows slurmctld's start time to about a second: be clearly later
    bridge("jwks", "export", "--keys-dir", fresh.keys_dir, "--out", fresh.cluster.jwks_path)
    os.chmod(fresh.cluster.jwks_path, 0o644)
    token = fresh.mint("alice")
    bad = refused_and_diagnosed(fresh, token)
    if fresh.version == "22.05":
        assert any("restart slurmctld" in ln for ln in bad), bad
    else:
        assert any("scontrol reconfigure" in ln for ln in bad), bad
    # What the doctor says to do repairs it.
    if fresh.version == "22.05":
        fresh.cluster.restart_slurmctld()
    else:
        fresh.cluster.reconfigure()
    assert get_jobs(fresh.cluster, token, "alice").status_code == 200
    code, lines = doctor(fresh, "--token", token)
    assert code == 0, lines


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("expired", "expired"),
        ("float_exp", "is not an integer"),
        ("unknown_user", "does not resolve with getpwnam"),
        ("foreign_key", "does not verify"),
    ],
)
def test_token_refusals_explained(request: pytest.FixtureRequest, case: str, expect: str) -> None:
    bc: BridgeCluster = request.getfixturevalue("slurm_2605")
    now = int(time.time())
    claims = {"exp": now + 300, "iat": now, "sun": "alice"}
    if case == "expired":
        claims["exp"] = now - 5
    elif case == "float_exp":
        claims["exp"] = now + 300.5
    elif case == "unknown_user":
        claims["sun"] = "nosuchuser-sjb"
    token = hand_made(bc, claims)
    if case == "foreign_key":
        header, payload, _ = token.split(".")
        other = hand_made(bc, {**claims, "sun": "bob"})
        token = f"{header}.{payload}.{other.split('.')[2]}"
    bad = refused_and_diagnosed(bc, token)
    assert any(expect in ln for ln in bad), bad


def test_typ_at_jwt_on_2205(slurm_2205: BridgeCluster) -> None:
    now = int(time.time())
    token = hand_made(slurm_2205, {"exp": now + 300, "iat": now, "sun": "alice"}, {"typ": "at+jwt"})
    bad = refused_and_diagnosed(slurm_2205, token)
    assert any("typ 'at+jwt'" in ln for ln in bad), bad


def test_hs256_key_differs(fresh: BridgeCluster) -> None:
    (fresh.keys_dir / "jwt_hs256.key").unlink()
    bridge("keys", "init", "--keys-dir", fresh.keys_dir, check=True)  # a new, different key
    token = fresh.mint("alice", "--alg", "HS256")
    bad = refused_and_diagnosed(fresh, token)
    assert any("HS256 key differs from the jwt_key file" in ln for ln in bad), bad
    assert any("HS256 signature does not match" in ln for ln in bad), bad


def test_jwt_key_readable_by_other_stops_2605(make_slurm: Callable[[str], BridgeCluster]) -> None:
    bc = make_slurm("26.05")
    os.chmod(bc.cluster.hs256_key_path, 0o604)
    with pytest.raises(Exception, match="slurmctld"):
        bc.cluster.restart_slurmctld()
    code, lines = doctor(bc)
    assert code == 1
    assert any("slurmctld 23.11+ refuses to start" in ln for ln in fails(lines)), lines


def test_no_auth_jwt(tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\nAuthType=auth/munge\n")
    proc = bridge("doctor", "--slurm-conf", conf, "--slurm-version", "26.05")
    assert proc.returncode == 1
    assert "AuthAltTypes does not include auth/jwt" in proc.stdout
