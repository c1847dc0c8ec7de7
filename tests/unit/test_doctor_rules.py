"""doctor's rules on hand-made files and tokens (the real daemons are in
tests/integration/test_doctor.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jwt
import pytest

from slurm_jwt_bridge.doctor import Host, SlurmVersion, jwt_conf, run_doctor
from slurm_jwt_bridge.keys import KeyRing

V2205 = SlurmVersion.parse("22.05.8")
V2605 = SlurmVersion.parse("26.05.5")


@pytest.fixture
def controller(tmp_path: Path, keys_dir: Path) -> Path:
    """A slurm.conf, JWKS file and jwt_key file as `jwks export` and an admin would leave them."""
    ring = KeyRing.load(keys_dir)
    (tmp_path / "jwks.json").write_text(json.dumps(ring.jwks()))
    os.chmod(tmp_path / "jwks.json", 0o644)
    key = tmp_path / "jwt_hs256.key"
    key.write_bytes(ring.hs256 or b"")
    os.chmod(key, 0o600)
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "ClusterName=t\nSlurmUser=slurm\nAuthAltTypes=auth/jwt\n"
        f"AuthAltParameters=jwt_key={key},jwks={tmp_path / 'jwks.json'}\n"
        f"SlurmctldPidFile={tmp_path / 'none.pid'}\n"
        "NodeName=n1 CPUs=2 State=UNKNOWN\n"
    )
    return conf


def lines(report) -> list[str]:
    return [f.line() for f in report.findings]


def signed(keys_dir: Path, claims: dict, **header) -> str:
    ring = KeyRing.load(keys_dir)
    assert ring.active is not None
    return jwt.encode(
        claims,
        ring.active.private_key,
        algorithm="RS256",
        headers={"kid": ring.active.kid, **header},
    )


def test_conf_parsing_is_case_insensitive_and_reads_params(controller: Path) -> None:
    text = controller.read_text().replace("AuthAltTypes", "authalttypes")
    controller.write_text(text + "AuthAltParameters=jwks=/x.json,use_jwt_client_ids_only\n")
    conf, problems = jwt_conf(controller)
    assert conf.enabled and not problems
    assert conf.jwks == "/x.json"
    assert conf.jwt_key is None
    assert conf.client_ids == "use_jwt_client_ids_only"
    assert conf.slurm_user == "slurm"


def test_space_after_comma_is_named(controller: Path) -> None:
    controller.write_text(controller.read_text() + "AuthAltParameters=jwks=/x.json, jwt_key=/k\n")
    report = run_doctor(controller, version=V2605)
    assert report.failed
    assert any("has a space in" in ln for ln in lines(report))


def test_default_jwt_key_location(tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text("AuthAltTypes=auth/jwt\nStateSaveLocation=/var/spool/x\n")
    parsed, _ = jwt_conf(conf)
    assert parsed.jwt_key == "/var/spool/x/jwt_hs256.key"


def test_healthy_files_and_token(controller: Path, keys_dir: Path) -> None:
    ring = KeyRing.load(keys_dir)
    now = int(time.time())
    token = signed(keys_dir, {"exp": now + 600, "iat": now, "sun": "root"})
    report = run_doctor(
        controller,
        version=V2605,
        published=ring.jwks(),
        states={k.kid: k.state for k in ring.rsa_keys},
        bridge_hs256=ring.hs256,
        token=token,
    )
    text = lines(report)
    # slurmctld is not running: a warning, not a failure.
    assert not report.failed, text
    assert any(
        "master key" not in ln and "warn slurmctld: `scontrol show config` did not answer" in ln
        for ln in text
    )
    assert any("may act as any user" in ln for ln in text)  # sun=root is flagged


def test_token_checked_against_a_jwks_file_with_private_members(
    controller: Path, keys_dir: Path
) -> None:
    """A JWKS file that also holds the private key is reported, and the token's signature is
    still checked against its public half (the check once crashed with an AttributeError)."""
    from jwt.algorithms import RSAAlgorithm

    ring = KeyRing.load(keys_dir)
    assert ring.active is not None
    private = json.loads(RSAAlgorithm.to_jwk(ring.active.private_key))
    path = controller.parent / "jwks.json"
    doc = json.loads(path.read_text())
    for key in doc["keys"]:
        if key["kid"] == ring.active.kid:
            key.update(private)
    path.write_text(json.dumps(doc))
    now = int(time.time())
    token = signed(keys_dir, {"exp": now + 600, "iat": now, "sun": "alice"})
    text = lines(run_doctor(controller, version=V2605, token=token))
    assert any("contains private key material" in ln for ln in text), text
    assert any(f"RS256 signature verifies with key {ring.active.kid}" in ln for ln in text), text


@pytest.mark.parametrize(
    ("mode", "kind", "version", "level"),
    [
        (0o604, "jwt_key", V2605, "FAIL"),
        (0o604, "jwt_key", V2205, "warn"),
        (0o646, "jwks", V2605, "FAIL"),
        (0o664, "jwks", V2605, "warn"),
    ],
)
def test_permission_rules_per_version(
    controller: Path, mode: int, kind: str, version: SlurmVersion, level: str
) -> None:
    path = controller.parent / ("jwt_hs256.key" if kind == "jwt_key" else "jwks.json")
    os.chmod(path, mode)
    report = run_doctor(controller, version=version)
    assert any(ln.startswith(level) and f"mode {mode:04o}" in ln for ln in lines(report))


def test_jwks_without_alg_is_refused(controller: Path) -> None:
    path = controller.parent / "jwks.json"
    doc = json.loads(path.read_text())
    for key in doc["keys"]:
        key.pop("alg")
    path.write_text(json.dumps(doc))
    report = run_doctor(controller, version=V2605)
    assert report.failed
    assert any("alg must be" in ln for ln in lines(report))


def test_identity_claims_against_client_ids_only(controller: Path, keys_dir: Path) -> None:
    controller.write_text(
        controller.read_text().replace(
            "AuthAltParameters=", "AuthAltParameters=use_jwt_client_ids_only,"
        )
    )
    now = int(time.time())
    plain = signed(keys_dir, {"exp": now + 600, "iat": now, "sun": "nosuch-sjb"})
    report = run_doctor(controller, version=V2605, token=plain)
    assert any("use_jwt_client_ids_only: refused" in ln for ln in lines(report))
    ident = {"name": "nosuch-sjb", "gecos": "X", "dir": "/home/x", "shell": "/bin/sh", "gids": [7]}
    full = signed(
        keys_dir,
        {"exp": now + 600, "iat": now, "sun": "nosuch-sjb", "uid": 2345, "gid": 2345, "id": ident},
    )
    report = run_doctor(controller, version=V2605, token=full)
    assert not report.failed, lines(report)
    both = dict(ident, groups={"x": 7})
    broken = signed(
        keys_dir,
        {"exp": now + 600, "iat": now, "sun": "nosuch-sjb", "uid": 2345, "gid": 2345, "id": both},
    )
    report = run_doctor(controller, version=V2605, token=broken)
    assert any("incomplete" in ln and ln.startswith("FAIL") for ln in lines(report))
    # 26.05.5 refuses an identity with an empty gecos ("identity validation failed").
    no_gecos = signed(
        keys_dir,
        {
            "exp": now + 600,
            "iat": now,
            "sun": "nosuch-sjb",
            "uid": 2345,
            "gid": 2345,
            "id": dict(ident, gecos=""),
        },
    )
    report = run_doctor(controller, version=V2605, token=no_gecos)
    assert any("incomplete" in ln and ln.startswith("FAIL") for ln in lines(report))


@pytest.mark.parametrize(
    ("token", "expect"),
    [
        ("abc", "not a compact JWT"),
        ("a.b.c", "not base64url JSON"),
        (
            jwt.encode({"exp": 1, "sun": "x"}, "k" * 32, algorithm="HS384"),
            "Slurm accepts only HS256 and RS256",
        ),
    ],
)
def test_malformed_tokens(controller: Path, token: str, expect: str) -> None:
    report = run_doctor(controller, version=V2605, token=token)
    assert report.failed
    assert any(expect in ln for ln in lines(report)), lines(report)


def test_output_has_no_control_characters(controller: Path, keys_dir: Path) -> None:
    now = int(time.time())
    token = signed(keys_dir, {"exp": now + 600, "iat": now, "sun": "evil\x1b[2Jname"})
    report = run_doctor(controller, version=V2605, token=token)
    assert all("\x1b" not in ln for ln in lines(report))


def test_chroot_root_reads_passwd_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("carol:x:4321:4321::/home/carol:/bin/sh\n")
    host = Host(root)
    assert host.getpwnam("carol") == (4321, 4321)
    assert host.getpwnam("root") is None
    assert host.path("/etc/slurm/slurm.conf") == root / "etc/slurm/slurm.conf"
