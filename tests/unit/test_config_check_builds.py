"""``slurm-jwt-bridge config check`` (the gate before a reload) says ok only for a configuration
the service starts with: the load-time rules refuse what the service cannot use, and the check
then builds the application as the service does (``create_app``, without serving), reporting a
failure as one line. The build leaves nothing behind: no audit file, no session directory or key,
no connection to Redis."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.cli import main
from slurm_jwt_bridge.settings import SettingsError, load_settings
from tests.unit.test_cli_promises import one_line_error, run

BAD = {
    "audit_file_empty": ('[audit]\ndestination = "file:"\n', "audit.destination: file: needs"),
    "proxy_bad_host": ('[proxy]\nupstream = "http://[::1"\n', "proxy.upstream: not a valid"),
    "proxy_bad_port": ('[proxy]\nupstream = "http://h:99999"\n', "proxy.upstream: not a valid"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_what_the_service_cannot_start_with_is_refused_at_load(
    tmp_path: Path, keys_dir: Path, name: str
) -> None:
    text, says = BAD[name]
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(text)
    with pytest.raises(SettingsError, match=says):
        load_settings(cfg)
    line = one_line_error(run("config", "check", "--config", str(cfg), "--keys-dir", str(keys_dir)))
    assert says in line, line


def _check(cfg: Path, keys_dir: Path) -> Any:
    return CliRunner().invoke(
        main, ["config", "check", "--config", str(cfg), "--keys-dir", str(keys_dir)]
    )


def test_a_storage_whose_module_is_missing_is_refused_at_load(
    tmp_path: Path, keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pymemcache", None)  # as where it is not installed
    cfg = tmp_path / "bridge.toml"
    cfg.write_text('[rate_limit]\nstorage_uri = "memcached://localhost:11211"\n')
    with pytest.raises(SettingsError, match=r"rate_limit\.storage_uri: memcached:// needs"):
        load_settings(cfg)
    r = _check(cfg, keys_dir)
    assert r.exit_code == 1 and "pymemcache" in r.output and "ok" not in r.output, r.output


def _browser_config(tmp_path: Path, keys_dir: Path, extra: str = "") -> Path:
    cfg = tmp_path / "etc" / "bridge.toml"
    cfg.parent.mkdir(exist_ok=True)
    cfg.write_text(
        f'[keys]\ndir = "{keys_dir}"\n'
        f'[server]\npublic_url = "https://bridge.example.org"\n{extra}'
        '[[issuers]]\nname = "oidc"\nkind = "oidc"\nissuer = "https://idp.example.org"\n'
        'audiences = ["bridge"]\ntoken_use = ["access", "id"]\nclient_id = "bridge"\n'
    )
    return cfg


def test_a_failure_only_the_build_finds_is_one_line(tmp_path: Path, keys_dir: Path) -> None:
    """A session directory group/other may enter: no load-time rule sees it, the start
    refuses it (web/browser.py), and so does the check."""
    sessions = tmp_path / "sessions"
    sessions.mkdir(mode=0o755)
    os.chmod(sessions, 0o755)  # noqa: S103 (what the start must refuse)
    cfg = _browser_config(tmp_path, keys_dir, f'[browser]\nsession_dir = "{sessions}"\n')
    s = load_settings(cfg)  # the load-time rules pass it
    with pytest.raises(Exception, match="lets group/other access"):
        create_app(s)
    line = one_line_error(run("config", "check", "--config", str(cfg), "--keys-dir", str(keys_dir)))
    assert "the service cannot start" in line and "lets group/other access" in line, line


def test_an_audit_file_that_cannot_be_written_is_named(tmp_path: Path, keys_dir: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[audit]\ndestination = "file:{blocker}/audit.log"\n')
    line = one_line_error(run("config", "check", "--config", str(cfg), "--keys-dir", str(keys_dir)))
    assert line.endswith(
        f"audit.destination: {blocker}/audit.log: the audit file cannot be opened for writing"
    ), line


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("sessions", ["local", "local-existing", "redis"])
def test_the_build_leaves_nothing_behind(tmp_path: Path, keys_dir: Path, sessions: str) -> None:
    """What the service creates at start (audit file, session and device directories, session
    key) is not created by the check, and neither Redis (rate limits, sessions) is contacted:
    a listening socket stands for it and must see no connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    redis = f"redis://127.0.0.1:{listener.getsockname()[1]}"
    browser = (
        f'session_dir = "{tmp_path / "state" / "sessions"}"\n'
        if sessions.startswith("local")
        else f'session_storage_uri = "{redis}/1"\n'
    )
    cfg = _browser_config(
        tmp_path,
        keys_dir,
        f'secret_key_file = "{tmp_path / "state" / "session.key"}"\n'
        f'[audit]\ndestination = "file:{tmp_path / "log" / "audit.log"}"\n'
        f'[rate_limit]\nstorage_uri = "{redis}/0"\n[browser]\n{browser}',
    )
    (tmp_path / "log").mkdir()
    (tmp_path / "state").mkdir()  # where the start creates the session key (and sessions)
    if sessions == "local-existing":  # the start writes into them; the check must not
        (tmp_path / "state" / "sessions").mkdir(mode=0o700)
        (tmp_path / "state" / "sessions-device").mkdir(mode=0o700)
    before = _tree(tmp_path)
    r = run("config", "check", "--config", str(cfg), "--keys-dir", str(keys_dir))
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
    assert _tree(tmp_path) == before
    try:
        with pytest.raises(TimeoutError):
            listener.accept()[0].close()
    finally:
        listener.close()
