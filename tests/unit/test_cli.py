import json
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner

from slurm_jwt_bridge.cli import main
from slurm_jwt_bridge.keys import KeyRing
from tests.helpers.stub_http import StubServer


def run(*args: str) -> subprocess.CompletedProcess:
    """The installed console script, as an admin would run it."""
    exe = Path(sys.executable).parent / "slurm-jwt-bridge"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, check=False)


def test_mint_prints_exactly_one_line_like_scontrol(keys_dir: Path) -> None:
    r = run("mint", "alice", "--keys-dir", str(keys_dir), "--lifespan", "600")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("SLURM_JWT=") and r.stdout.endswith("\n")
    assert r.stdout.count("\n") == 1
    token = r.stdout[len("SLURM_JWT=") : -1]
    ring = KeyRing.load(keys_dir)
    claims = jwt.decode(token, ring.active.private_key.public_key(), algorithms=["RS256"])
    assert claims["sun"] == "alice" and claims["exp"] - claims["iat"] == 600
    # the audit line goes to stderr, and holds no token
    audit = json.loads(r.stderr.strip().splitlines()[-1])
    assert audit["outcome"] == "minted" and audit["user"] == "alice"
    assert token not in r.stderr and token.split(".")[2] not in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["root"], "root (uid 0)"),
        (["slurm"], "SlurmUser"),
        (["bad/name"], "not a POSIX portable user name"),
        (["0"], "numeric uid"),
        (["alice", "--lifespan", "99999"], "exceeds the maximum"),
    ],
)
def test_refused_mint_prints_nothing_on_stdout(keys_dir: Path, args: list, message: str) -> None:
    r = run("mint", *args, "--keys-dir", str(keys_dir))
    assert r.returncode != 0
    assert r.stdout == ""
    assert message in r.stderr


def test_mint_hs256_and_config_file(keys_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(
        f'[keys]\ndir = "{keys_dir}"\ndefault_alg = "HS256"\n[policy]\ndeny_users = ["bob"]\n'
    )
    r = run("mint", "alice", "--config", str(cfg))
    token = r.stdout.strip().split("=", 1)[1]
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    r = run("mint", "bob", "--config", str(cfg))
    assert r.returncode != 0 and "deny_users" in r.stderr


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bridge.toml"
    cfg.write_text("[tokens]\nmax_lifetime = 'x'\n")
    r = run("keys", "list", "--config", str(cfg))
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "slurm-jwt-bridge: error: tokens.max_lifetime: must be an integer, got 'x'"
    )


def test_bad_key_permissions_refuse_with_one_line(keys_dir: Path) -> None:
    next(keys_dir.glob("rs256-*.pem")).chmod(0o644)
    r = run("mint", "alice", "--keys-dir", str(keys_dir))
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1
    assert "group/other" in r.stderr


def test_keys_commands(tmp_path: Path) -> None:
    d = str(tmp_path / "k")
    runner = CliRunner()
    assert "created active" in runner.invoke(main, ["keys", "init", "--keys-dir", d]).output
    assert "nothing created" in runner.invoke(main, ["keys", "init", "--keys-dir", d]).output
    out = runner.invoke(main, ["keys", "rotate", "--keys-dir", d, "--force"]).output
    assert "activated" in out and "retired" in out
    listed = json.loads(runner.invoke(main, ["keys", "list", "--keys-dir", d, "--json"]).output)
    assert sorted(r["state"] for r in listed["rs256"]) == ["active", "next", "retired"]
    assert "nothing to prune" in runner.invoke(main, ["keys", "prune", "--keys-dir", d]).output
    text = runner.invoke(main, ["keys", "list", "--keys-dir", d]).output
    assert "retired" in text and "HS256 key (jwt_hs256.key): present" in text


def test_import_hs256_command(tmp_path: Path) -> None:
    src = tmp_path / "jwt_hs256.key"
    src.write_bytes(b"k" * 32 + b"\n")
    r = CliRunner().invoke(
        main, ["keys", "import-hs256", str(src), "--keys-dir", str(tmp_path / "k")]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "k" / "jwt_hs256.key").read_bytes() == b"k" * 32 + b"\n"


def test_jwks_export(keys_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "jwks.json"
    r = CliRunner().invoke(main, ["jwks", "export", "--keys-dir", str(keys_dir), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.stat().st_mode & 0o777 == 0o644
    assert json.loads(out.read_text()) == KeyRing.load(keys_dir).jwks()


def test_jwks_sync_exit_codes_and_reconfigure(keys_dir: Path, tmp_path: Path) -> None:
    doc = KeyRing.load(keys_dir).jwks()
    srv = StubServer(json.dumps(doc).encode())
    out = tmp_path / "jwks.json"
    marker = tmp_path / "reconfigured"
    cmd = f"touch {marker}"
    try:
        base = ["jwks", "sync", "--url", srv.url + "/jwks.json", "--out", str(out), "--allow-http"]
        r = run(*base, "--reconfigure", "--reconfigure-command", cmd)
        assert r.returncode == 3, r.stderr
        assert marker.exists() and json.loads(out.read_text()) == doc
        assert out.stat().st_mode & 0o777 == 0o644
        marker.unlink()
        r = run(*base, "--reconfigure", "--reconfigure-command", cmd)
        assert r.returncode == 0 and "unchanged" in r.stdout
        assert not marker.exists()
        # a failing reconfigure puts the old file back so the next run retries
        srv.body = json.dumps({"keys": doc["keys"][:1]}).encode()
        r = run(*base, "--reconfigure", "--reconfigure-command", "false")
        assert r.returncode == 1 and "restored" in r.stderr
        assert json.loads(out.read_text()) == doc
    finally:
        srv.close()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json", 200, "not JSON"),
        (b'{"keys": []}', 200, "no keys"),
        (b'{"keys": [{"kty": "RSA", "kid": "a", "n": "AQ", "e": "AQAB"}]}', 200, "alg must be"),
        (
            b'{"keys": [{"kty": "EC", "alg": "RS256", "kid": "a", "n": "AQ", "e": "AQAB"}]}',
            200,
            "kty must be",
        ),
        (b'{"keys": [{"kty": "RSA", "alg": "RS256", "n": "AQ", "e": "AQAB"}]}', 200, "kid must"),
        (
            b'{"keys": [{"kty": "RSA", "alg": "RS256", "kid": "a", "n": "A+Q=", "e": "AQAB"}]}',
            200,
            "base64url",
        ),
        (
            b'{"keys": [{"kty": "RSA", "alg": "RS256", "kid": "a", "n": "AQ", "e": "AQAB", '
            b'"d": "AQ"}]}',
            200,
            "private key material",
        ),
        (b"{}", 500, "HTTP 500"),
    ],
)
def test_jwks_sync_refuses_bad_documents(
    tmp_path: Path, body: bytes, status: int, message: str
) -> None:
    srv = StubServer(body, status)
    out = tmp_path / "jwks.json"
    out.write_text("old")
    try:
        r = run("jwks", "sync", "--url", srv.url + "/jwks.json", "--out", str(out), "--allow-http")
    finally:
        srv.close()
    assert r.returncode == 1
    assert message in r.stderr
    assert out.read_text() == "old"


def test_jwks_sync_unreachable(tmp_path: Path) -> None:
    r = run(
        "jwks",
        "sync",
        "--url",
        "http://127.0.0.1:9/jwks.json",
        "--out",
        str(tmp_path / "j"),
        "--timeout",
        "2",
        "--allow-http",
    )
    assert r.returncode == 1 and "ConnectError" in r.stderr


@pytest.mark.parametrize("body", [b'[{"keys": []}]', b'{"keys": [1]}', b'{"keys": 5}'])
def test_doctor_refuses_a_bridge_document_that_is_not_a_jwks(tmp_path: Path, body: bytes) -> None:
    """A JSON document from --url that is no JWKS is one line and exit 1 (it once ended in a
    traceback)."""
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=t\nAuthAltTypes=auth/jwt\n")
    srv = StubServer(body)
    try:
        r = run(
            "doctor", "--slurm-conf", str(conf), "--slurm-version", "26.05",
            "--url", srv.url + "/jwks.json",
        )  # fmt: skip
    finally:
        srv.close()
    assert r.returncode == 1, r.stderr
    assert "cannot compare with the bridge" in r.stderr and "not a JWKS" in r.stderr
    assert "Traceback" not in r.stderr
