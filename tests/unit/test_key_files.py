"""Who may change what the bridge signs with and publishes: the keys directory's owner and mode,
``ring.json``'s mode, key files that are symlinks or someone else's; and ``jwks sync`` over http.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.cli import main
from slurm_jwt_bridge.keys import KeyRing, KeyRingError, init_keys, rsa_kid
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.proxy_settings import proxy_settings_data
from tests.helpers.stub_http import StubServer

NOBODY = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changes file owners (needs root)")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "slurm-jwt-bridge"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, check=False)


@pytest.fixture
def shared_keys() -> Iterator[Path]:
    """A keys directory another local user can reach (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="sjb-keys-"))
    base.chmod(0o755)
    d = base / "keys"
    init_keys(d)
    yield d
    subprocess.run(["rm", "-rf", str(base)], check=False)


def as_nobody(script: str, *args: str, data: bytes = b"") -> None:
    proc = subprocess.run(
        ["/bin/sh", "-c", script, "sh", *args], input=data, user=NOBODY, capture_output=True
    )
    assert proc.returncode == 0, proc.stderr


@needs_root
def test_a_local_user_who_can_write_the_keys_directory_cannot_add_a_key(
    shared_keys: Path, tmp_path: Path
) -> None:
    """The attack: with a 0777 keys directory, user nobody writes its own private key and a
    ring.json that lists it as the next key; `jwks export` would publish it to slurmctld."""
    shared_keys.chmod(0o777)
    mine = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = rsa_kid(mine.public_key())
    pem = mine.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ring = json.loads((shared_keys / "ring.json").read_text())
    ring["keys"] = [e for e in ring["keys"] if e["state"] != "next"]
    ring["keys"].append({"kid": kid, "state": "next", "created": 1})
    as_nobody('umask 077; cat > "$1/rs256-$2.pem"', str(shared_keys), kid, data=pem)
    as_nobody(
        'cat > "$1/.r" && chmod 644 "$1/.r" && mv -f "$1/.r" "$1/ring.json"',
        str(shared_keys),
        data=json.dumps(ring).encode(),
    )
    out = tmp_path / "jwks.json"
    r = run("jwks", "export", "--keys-dir", str(shared_keys), "--out", str(out))
    assert r.returncode == 1, r.stdout
    assert not out.exists()
    assert r.stderr.count("\n") == 1
    assert str(shared_keys) in r.stderr and "writable by group/other" in r.stderr


@pytest.mark.parametrize("mode", [0o770, 0o757, 0o775, 0o1777])
def test_keys_directory_writable_by_group_or_other_is_refused(keys_dir: Path, mode: int) -> None:
    keys_dir.chmod(mode)
    with pytest.raises(KeyRingError, match=f"^{keys_dir}: .*writable by group/other"):
        KeyRing.load(keys_dir)


def test_ring_json_writable_by_group_or_other_is_refused(keys_dir: Path) -> None:
    (keys_dir / "ring.json").chmod(0o666)
    with pytest.raises(KeyRingError, match=f"^{keys_dir / 'ring.json'}: .*writable"):
        KeyRing.load(keys_dir)


def test_a_key_file_that_is_a_symlink_is_refused(keys_dir: Path, tmp_path: Path) -> None:
    ring = KeyRing.load(keys_dir)
    pem = keys_dir / f"rs256-{ring.active.kid}.pem"
    elsewhere = tmp_path / "elsewhere.pem"
    pem.rename(elsewhere)
    pem.symlink_to(elsewhere)
    with pytest.raises(KeyRingError, match=f"^{pem}: .*symlink"):
        KeyRing.load(keys_dir)
    hs = keys_dir / "jwt_hs256.key"
    pem.unlink()
    elsewhere.rename(pem)
    hs.rename(tmp_path / "hs")
    hs.symlink_to(tmp_path / "hs")
    with pytest.raises(KeyRingError, match=f"^{hs}: .*symlink"):
        KeyRing.load(keys_dir)


@needs_root
def test_key_files_and_directory_of_another_user_are_refused(keys_dir: Path) -> None:
    ring = KeyRing.load(keys_dir)
    pem = keys_dir / f"rs256-{ring.next.kid}.pem"
    os.chown(pem, NOBODY, NOBODY)
    with pytest.raises(KeyRingError, match=f"^{pem}: .*owned by nobody"):
        KeyRing.load(keys_dir)
    os.chown(pem, 0, 0)
    os.chown(keys_dir / "ring.json", NOBODY, NOBODY)
    with pytest.raises(KeyRingError, match=f"^{keys_dir / 'ring.json'}: .*owned by nobody"):
        KeyRing.load(keys_dir)
    os.chown(keys_dir / "ring.json", 0, 0)
    os.chown(keys_dir, NOBODY, NOBODY)
    with pytest.raises(KeyRingError, match=f"^{keys_dir}: .*owned by nobody"):
        KeyRing.load(keys_dir)
    os.chown(keys_dir, 0, 0)
    assert KeyRing.load(keys_dir).active is not None


def test_a_private_keys_directory_still_loads(keys_dir: Path) -> None:
    keys_dir.chmod(0o755)
    assert KeyRing.load(keys_dir).active is not None


# ---------------------------------------------------------------- jwks sync transport


def test_jwks_sync_refuses_plain_http_unless_allowed(keys_dir: Path, tmp_path: Path) -> None:
    doc = KeyRing.load(keys_dir).jwks()
    srv = StubServer(json.dumps(doc).encode())
    out = tmp_path / "jwks.json"
    try:
        base = ["jwks", "sync", "--url", srv.url + "/jwks.json", "--out", str(out)]
        r = run(*base)
        assert r.returncode == 1, r.stdout
        assert "--allow-http" in r.stderr and r.stderr.count("\n") == 1
        assert not out.exists() and srv.seen == []
        r = run(*base, "--allow-http")
        assert r.returncode == 3, r.stderr
        assert json.loads(out.read_text()) == doc
    finally:
        srv.close()


def test_jwks_sync_keeps_ca_file_and_refuses_other_schemes(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        main, ["jwks", "sync", "--url", "file:///etc/passwd", "--out", str(tmp_path / "j")]
    )
    assert r.exit_code == 1 and "https" in r.output
    r = CliRunner().invoke(main, ["jwks", "sync", "--help"])
    assert "--ca-file" in r.output and "--allow-http" in r.output


# ---------------------------------------------------------------- emergency revocation


def _audit_lines(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.startswith("{")]


@pytest.mark.parametrize("state", ["active", "next"])
def test_keys_revoke_removes_the_key_at_once_and_is_audited(keys_dir: Path, state: str) -> None:
    before = KeyRing.load(keys_dir)
    victim = getattr(before, state).kid
    r = run("keys", "revoke", "--keys-dir", str(keys_dir), "--", victim)
    assert r.returncode == 0, r.stderr
    assert f"revoked {victim} (was {state})" in r.stdout
    after = KeyRing.load(keys_dir)
    assert victim not in [k.kid for k in after.rsa_keys]
    assert victim not in [k["kid"] for k in after.jwks()["keys"]]
    assert not (keys_dir / f"rs256-{victim}.pem").exists()
    assert after.active is not None and after.next is not None
    if state == "active":
        assert after.active.kid == before.next.kid  # already published: slurmctld knows it
    else:
        assert after.active.kid == before.active.kid
    assert after.next.kid not in (before.active.kid, before.next.kid)
    (line,) = _audit_lines(r.stderr)
    assert line["event"] == "keys.revoke" and line["outcome"] == "revoked" and line["kid"] == victim


def test_keys_revoke_a_retired_key_and_an_unknown_one(keys_dir: Path) -> None:
    old = KeyRing.load(keys_dir).active.kid
    assert run("keys", "rotate", "--force", "--keys-dir", str(keys_dir)).returncode == 0
    before = KeyRing.load(keys_dir)
    r = run("keys", "revoke", "--keys-dir", str(keys_dir), "--", old)
    assert r.returncode == 0, r.stderr
    after = KeyRing.load(keys_dir)
    assert old not in [k.kid for k in after.rsa_keys]
    assert (after.active.kid, after.next.kid) == (before.active.kid, before.next.kid)
    r = run("keys", "revoke", "no-such-kid", "--keys-dir", str(keys_dir))
    assert r.returncode == 1 and r.stdout == ""
    assert "no key 'no-such-kid'" in r.stderr
    assert _audit_lines(r.stderr)[0]["outcome"] == "refused"


def test_the_proxy_stops_reusing_a_token_of_a_revoked_key(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    upstream = StubServer()
    try:
        data = proxy_settings_data(keys_dir, tmp_path, idp, {"upstream": upstream.url})
        data["keys"]["reload_interval"] = 0
        client = create_app(parse_settings(data)).test_client()
        token = idp.mint(idp.oidc_claims(sub="s-alice", aud="bridge", preferred_username="alice"))
        headers = {"Authorization": f"Bearer {token}"}

        def kid_sent() -> str:
            r = client.get("/slurm/v0.0.44/jobs", headers=headers)
            assert r.status_code == 200
            return jwt.get_unverified_header(upstream.seen[-1].header("X-SLURM-USER-TOKEN"))["kid"]

        stolen = kid_sent()
        assert kid_sent() == stolen  # reused
        assert run("keys", "revoke", "--keys-dir", str(keys_dir), "--", stolen).returncode == 0
        assert kid_sent() != stolen
    finally:
        upstream.close()
