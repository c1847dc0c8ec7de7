import json
import os
import time
from pathlib import Path

import pytest

from slurm_jwt_bridge.keys import (
    HS256_FILE,
    KeyRing,
    KeyRingError,
    KeyRingSource,
    import_hs256,
    init_keys,
    prune_keys,
    rotate_keys,
    rsa_kid,
)


def states(d: Path) -> dict[str, str]:
    return {k.kid: k.state for k in KeyRing.load(d).rsa_keys}


def test_init_creates_active_next_and_hs256_with_private_modes(tmp_path: Path) -> None:
    d = tmp_path / "k"
    lines = init_keys(d)
    assert len(lines) == 4
    ring = KeyRing.load(d)
    assert sorted(states(d).values()) == ["active", "next"]
    assert ring.active is not None and ring.active.bits == 2048
    assert ring.hs256 is not None and len(ring.hs256) >= 32
    for f in d.iterdir():
        if f.name.endswith(".pem") or f.name == HS256_FILE:
            assert f.stat().st_mode & 0o777 == 0o600, f


def test_init_never_overwrites(tmp_path: Path) -> None:
    d = tmp_path / "k"
    init_keys(d)
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    assert init_keys(d) == []
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before


def test_kid_is_rfc7638_thumbprint_and_stable(keys_dir: Path) -> None:
    ring = KeyRing.load(keys_dir)
    key = ring.active
    assert key is not None
    assert rsa_kid(key.private_key.public_key()) == key.kid
    # RFC 7638 by hand: SHA-256 over {"e","kty","n"} with no whitespace.
    import base64
    import hashlib

    jwk = key.public_jwk()
    canon = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"))
    digest = base64.urlsafe_b64encode(hashlib.sha256(canon.encode()).digest()).rstrip(b"=")
    assert key.kid == digest.decode()
    assert KeyRing.load(keys_dir).active.kid == key.kid


def test_rotation_publishes_next_first_and_keeps_retired_until_tokens_expired(
    keys_dir: Path,
) -> None:
    ring0 = KeyRing.load(keys_dir)
    old_active, old_next = ring0.active.kid, ring0.next.kid
    # The next key is already published before it signs anything.
    assert {k["kid"] for k in ring0.jwks()["keys"]} == {old_active, old_next}
    rotate_keys(keys_dir, max_lifetime=3600, margin=300)
    ring1 = KeyRing.load(keys_dir)
    assert ring1.active.kid == old_next
    assert ring1.next.kid not in (old_active, old_next)
    retired = next(k for k in ring1.rsa_keys if k.kid == old_active)
    assert retired.state == "retired"
    assert retired.publish_until == retired.retired + 3600 + 300
    published = {k["kid"] for k in ring1.jwks()["keys"]}
    assert published == {old_active, old_next, ring1.next.kid}
    # After the window the retired key leaves the JWKS, then prune removes the file.
    later = retired.publish_until + 1
    assert old_active not in {k["kid"] for k in ring1.jwks(now=later)["keys"]}
    assert prune_keys(keys_dir, now=retired.publish_until - 1) == []
    assert prune_keys(keys_dir, now=later) == [f"pruned {old_active}"]
    assert not (keys_dir / f"rs256-{old_active}.pem").exists()
    assert old_active not in states(keys_dir)


def test_rotate_without_next_key_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "k"
    init_keys(d)
    ring = json.loads((d / "ring.json").read_text())
    ring["keys"] = [e for e in ring["keys"] if e["state"] != "next"]
    (d / "ring.json").write_text(json.dumps(ring))
    with pytest.raises(KeyRingError, match="no next key"):
        rotate_keys(d, 3600, 300)


def test_jwks_shape_is_what_slurm_reads(keys_dir: Path) -> None:
    for key in KeyRing.load(keys_dir).jwks()["keys"]:
        assert set(key) == {"kty", "alg", "use", "kid", "n", "e"}
        assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig"
        assert "=" not in key["n"] and key["e"] == "AQAB"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_group_or_other_readable_key_file_is_refused(keys_dir: Path, mode: int) -> None:
    pem = next(keys_dir.glob("rs256-*.pem"))
    pem.chmod(mode)
    with pytest.raises(KeyRingError) as info:
        KeyRing.load(keys_dir)
    assert "lets group/other access a private key" in str(info.value)
    assert f"chmod 600 {pem}" in str(info.value)


def test_hs256_key_permissions_are_checked_too(keys_dir: Path) -> None:
    (keys_dir / HS256_FILE).chmod(0o644)
    with pytest.raises(KeyRingError, match=r"jwt_hs256\.key: mode 0644"):
        KeyRing.load(keys_dir)


def test_corrupt_and_missing_key_files(keys_dir: Path, tmp_path: Path) -> None:
    pem = next(keys_dir.glob("rs256-*.pem"))
    pem.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyRingError, match="not a PEM private key"):
        KeyRing.load(keys_dir)
    pem.unlink()
    with pytest.raises(KeyRingError, match="key file is missing"):
        KeyRing.load(keys_dir)
    (keys_dir / "ring.json").write_text("{")
    with pytest.raises(KeyRingError, match="unreadable key ring metadata"):
        KeyRing.load(keys_dir)
    with pytest.raises(KeyRingError, match="does not exist"):
        KeyRing.load(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KeyRingError, match="no keys"):
        KeyRing.load(empty)


def test_swapped_key_file_does_not_match_its_kid(tmp_path: Path) -> None:
    d = tmp_path / "k"
    init_keys(d)
    pems = sorted(d.glob("rs256-*.pem"))
    a, b = pems[0].read_bytes(), pems[1].read_bytes()
    pems[0].write_bytes(b)
    pems[1].write_bytes(a)
    with pytest.raises(KeyRingError, match="does not match its kid"):
        KeyRing.load(d)


def test_hs256_too_short_is_refused(keys_dir: Path) -> None:
    (keys_dir / HS256_FILE).write_bytes(b"short")
    with pytest.raises(KeyRingError, match="at least 32 needed"):
        KeyRing.load(keys_dir)


def test_import_hs256_copies_bytes_exactly(tmp_path: Path) -> None:
    src = tmp_path / "slurm.key"
    data = os.urandom(40) + b"\n"  # Slurm uses the file's raw bytes, newline included
    src.write_bytes(data)
    d = tmp_path / "k"
    import_hs256(src, d)
    assert (d / HS256_FILE).read_bytes() == data
    assert (d / HS256_FILE).stat().st_mode & 0o777 == 0o600
    import_hs256(src, d)  # same bytes again: fine
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    with pytest.raises(KeyRingError, match="a different HS256 key already exists"):
        import_hs256(other, d)
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 31)
    with pytest.raises(KeyRingError, match="31 bytes"):
        import_hs256(short, tmp_path / "k2")


def test_source_reloads_on_change_and_keeps_last_good_ring(keys_dir: Path) -> None:
    source = KeyRingSource(keys_dir, check_interval=0)
    first = source.current().active.kid
    rotate_keys(keys_dir, 3600, 300)
    time.sleep(0.01)
    assert source.current().active.kid != first
    good = source.current()
    # A broken file at runtime: the last good ring stays in service, the error is kept.
    next(keys_dir.glob("rs256-*.pem")).chmod(0o644)
    assert source.maybe_reload(force=True) is False
    assert source.current() is good
    assert source.last_error and "group/other" in source.last_error
