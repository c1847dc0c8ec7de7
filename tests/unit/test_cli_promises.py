"""What docs/cli.md promises about failures: one line on stderr, exit 1, no traceback, and
`jwks sync` leaving the file as it was whatever went wrong."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from slurm_jwt_bridge.keys import KeyRing
from tests.helpers.stub_http import StubServer
from tests.unit.test_cli import run


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("slurm-jwt-bridge: error:")]
    assert len(lines) == 1, proc.stderr
    assert proc.stdout == ""
    return lines[0]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("'unbalanced", "No closing quotation"),
        ("   ", "--reconfigure-command is empty"),
        ("/nonexistent/scontrol reconfigure", "restored to its previous content"),
    ],
)
def test_jwks_sync_keeps_the_file_for_every_reconfigure_failure(
    keys_dir: Path, tmp_path: Path, command: str, message: str
) -> None:
    doc = KeyRing.load(keys_dir).jwks()
    out = tmp_path / "jwks.json"
    old = {"keys": doc["keys"][:1]}
    out.write_text(json.dumps(old))
    marker = tmp_path / "reconfigured"
    srv = StubServer(json.dumps(doc).encode())
    try:
        base = ["jwks", "sync", "--url", srv.url + "/jwks.json", "--allow-http"]
        base += ["--out", str(out), "--reconfigure"]
        line = one_line_error(run(*base, "--reconfigure-command", command))
        assert message in line
        assert json.loads(out.read_text()) == old
        # The next run still sees the change, and reconfigures.
        r = run(*base, "--reconfigure-command", f"touch {marker}")
        assert r.returncode == 3, r.stderr
        assert marker.exists() and json.loads(out.read_text()) == doc
    finally:
        srv.close()


def test_audit_file_in_a_missing_directory(keys_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(f'[audit]\ndestination = "file:{tmp_path}/no/such/dir/audit.log"\n')
    line = one_line_error(
        run("mint", "alice", "--config", str(config), "--keys-dir", str(keys_dir))
    )
    assert "audit.log: No such file or directory" in line


def test_keys_init_where_it_cannot_create(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = one_line_error(run("keys", "init", "--keys-dir", str(blocker / "keys")))
    assert str(blocker / "keys") in line


def test_jwks_sync_loads_the_config_it_is_given(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text("[keys\n")
    out = tmp_path / "jwks.json"
    line = one_line_error(
        run("jwks", "sync", "--config", str(config), "--url", "https://x/j", "--out", str(out))
    )
    assert "not valid TOML" in line
    assert not out.exists()


def test_redis_storage_without_the_redis_extra(
    keys_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from click.testing import CliRunner

    from slurm_jwt_bridge.cli import main

    config = tmp_path / "bridge.toml"
    config.write_text(
        '[rate_limit]\nstorage_uri = "redis://127.0.0.1:6379"\n'
        '[[issuers]]\nname = "x"\nkind = "oidc"\nissuer = "https://idp.example.org"\n'
        'audiences = ["b"]\n[audit]\ndestination = "none"\n'
    )
    monkeypatch.setitem(sys.modules, "redis", None)  # as if the extra were not installed
    r = CliRunner().invoke(
        main, ["mint", "alice", "--config", str(config), "--keys-dir", str(keys_dir)]
    )
    assert r.exit_code == 1, r.output
    assert "rate_limit.storage_uri" in r.output and "slurm-jwt-bridge[redis]" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "config").glob("*.toml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_config_passes_config_check(keys_dir: Path, example: Path) -> None:
    r = run("config", "check", "--config", str(example), "--keys-dir", str(keys_dir))
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


def test_config_check_names_the_error(tmp_path: Path, keys_dir: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text('[tokens]\nmax_lifetime = "soon"\n')
    line = one_line_error(
        run("config", "check", "--config", str(config), "--keys-dir", str(keys_dir))
    )
    assert "tokens.max_lifetime: must be an integer, got 'soon'" in line
    missing = one_line_error(run("config", "check", "--keys-dir", str(tmp_path / "none")))
    assert "keys directory does not exist" in missing
