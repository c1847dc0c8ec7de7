"""`keys rotate` cannot activate a key slurmctld may not have, nor be run by the wrong user."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurm_jwt_bridge.cli import main
from slurm_jwt_bridge.keys import KeyRing, KeyRingError, check_owner, init_keys, rotate_keys


def test_young_next_key_is_not_activated(keys_dir: Path) -> None:
    before = KeyRing.load(keys_dir)
    with pytest.raises(KeyRingError, match="min_next_age = 900 s"):
        rotate_keys(keys_dir, 3600, 300, min_next_age=900)
    assert KeyRing.load(keys_dir).active.kid == before.active.kid  # nothing changed


def test_force_activates_and_is_audited(tmp_path: Path, keys_dir: Path) -> None:
    audit = tmp_path / "audit.log"
    config = tmp_path / "bridge.toml"
    config.write_text(f'[keys]\ndir = "{keys_dir}"\n[audit]\ndestination = "file:{audit}"\n')
    runner = CliRunner()
    refused = runner.invoke(main, ["keys", "rotate", "--config", str(config)])
    assert refused.exit_code == 1
    assert "min_next_age" in refused.output
    forced = runner.invoke(main, ["keys", "rotate", "--config", str(config), "--force"])
    assert forced.exit_code == 0, forced.output
    assert "(forced, published" in forced.output
    lines = [json.loads(ln) for ln in audit.read_text().splitlines()]
    assert [(e["event"], e["outcome"]) for e in lines] == [
        ("keys.rotate", "refused"),
        ("keys.rotate", "rotated"),
    ]
    assert lines[1]["forced"] is True


def test_next_key_not_served_by_the_bridge_is_not_activated(keys_dir: Path) -> None:
    with pytest.raises(KeyRingError, match="not in the JWKS the bridge serves"):
        rotate_keys(keys_dir, 3600, 300, published_kids={"some-other-kid"})
    ring = KeyRing.load(keys_dir)
    assert ring.next is not None
    rotate_keys(keys_dir, 3600, 300, published_kids={ring.next.kid})
    assert KeyRing.load(keys_dir).active.kid == ring.next.kid


def test_unreadable_next_key_is_not_activated(keys_dir: Path) -> None:
    ring = KeyRing.load(keys_dir)
    assert ring.next is not None
    pem = keys_dir / f"rs256-{ring.next.kid}.pem"
    pem.write_bytes(b"not a key")
    with pytest.raises(KeyRingError, match="not a PEM private key"):
        rotate_keys(keys_dir, 3600, 300)
    assert json.loads((keys_dir / "ring.json").read_text()) is not None
    states = {
        e["kid"]: e["state"] for e in json.loads((keys_dir / "ring.json").read_text())["keys"]
    }
    assert states[ring.next.kid] == "next"


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a directory's owner needs root")
def test_key_commands_refuse_another_users_directory(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    init_keys(d)
    nobody = pwd.getpwnam("nobody")
    os.chown(d, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(KeyRingError, match="runuser -u nobody -- slurm-jwt-bridge"):
        check_owner(d)
    for argv in (["rotate", "--force"], ["prune"], ["init"]):
        out = CliRunner().invoke(main, ["keys", *argv, "--keys-dir", str(d)])
        assert out.exit_code == 1, (argv, out.output)
        assert "owned by nobody, not by root" in out.output


def test_jwks_url_is_https_and_a_usable_jwks(keys_dir: Path) -> None:
    from tests.helpers.stub_http import StubServer

    ring = KeyRing.load(keys_dir)
    for body in (b"[1, 2]", b'{"keys": 5}', json.dumps(ring.jwks()).encode()):
        srv = StubServer(body)
        try:
            url = srv.url + "/jwks.json"
            plain = CliRunner().invoke(
                main, ["keys", "rotate", "--keys-dir", str(keys_dir), "--jwks-url", url]
            )
            assert plain.exit_code == 1 and "http" in plain.output, plain.output
            out = CliRunner().invoke(
                main,
                [
                    "keys",
                    "rotate",
                    "--keys-dir",
                    str(keys_dir),
                    "--force",
                    "--jwks-url",
                    url,
                    "--allow-http",
                ],
            )
        finally:
            srv.close()
        if body.startswith(b'{"keys": ['):
            assert out.exit_code == 0, out.output
        else:
            assert out.exit_code == 1 and "not a JWKS Slurm can use" in out.output, out.output
            assert out.exception is None or isinstance(out.exception, SystemExit)
