"""Browser sessions in process: the session key's hygiene, what a session cookie is worth, and
the proxy's cross-site request rules for cookie-authenticated calls.

The full login (Chromium, oidc-provider, refresh, logout, replay) runs in
tests/integration/test_browser_login.py; here a session is made with Flask's test client.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from flask.sessions import SecureCookieSessionInterface

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import SESSION_KEY_FILE, KeyRingError
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.ports import free_port
from tests.helpers.proxy_settings import browser_proxy_settings_data
from tests.helpers.sessions import logged_in, plant_session, session_grant
from tests.helpers.stub_http import StubServer

PUBLIC = "https://hpc.example.org"
UPSTREAM_BODY = b'{"job_id": 1}'  # what the stand-in slurmrestd answers
JOB = "/slurm/v0.0.44/job/submit"


def _data(keys_dir: Path, tmp_path: Path, idp: Any, upstream_url: str) -> dict[str, Any]:
    return browser_proxy_settings_data(keys_dir, tmp_path, idp, {"upstream": upstream_url}, PUBLIC)


def _app(keys_dir: Path, tmp_path: Path, idp: Any, upstream_url: str) -> Any:
    return create_app(parse_settings(_data(keys_dir, tmp_path, idp, upstream_url), tmp_path))


# ------------------------------------------------------------------ session key hygiene


def _serve(
    tmp_path: Path, keys_dir: Path, command: tuple[str, ...] = ("serve",)
) -> subprocess.CompletedProcess[str]:
    """``slurm-jwt-bridge serve``: it must stop by itself; still running after 20 s = started."""
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(
        f'[keys]\ndir = "{keys_dir}"\n[audit]\ndestination = "none"\n'
        '[[issuers]]\nname = "idp"\nkind = "oidc"\nissuer = "https://idp.example.org"\n'
        'audiences = ["bridge"]\ntoken_use = ["id"]\nclient_id = "bridge"\n'
        '[[mapping.rules]]\nclaim = "preferred_username"\n'
        f'[browser]\nenabled = true\n[server]\nhost = "127.0.0.1"\nport = {free_port()}\n'
        'public_url = "https://bridge.example.org"\n'
    )
    exe = Path(sys.executable).parent / "slurm-jwt-bridge"
    try:
        return subprocess.run(
            [str(exe), *command, "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the service started with this session key")


def test_readable_session_key_stops_the_service(tmp_path: Path, keys_dir: Path) -> None:
    key = keys_dir / SESSION_KEY_FILE
    key.chmod(0o644)
    r = _serve(tmp_path, keys_dir)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(key) in lines[0] and "0644" in lines[0], lines[0]


def test_config_check_refuses_a_readable_session_key(tmp_path: Path, keys_dir: Path) -> None:
    key = keys_dir / SESSION_KEY_FILE
    key.chmod(0o640)
    r = _serve(tmp_path, keys_dir, ("config", "check"))
    assert r.returncode == 1 and r.stdout == "", (r.stdout, r.stderr)
    assert str(key) in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    key.chmod(0o600)
    r = _serve(tmp_path, keys_dir, ("config", "check"))
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr


def test_short_session_key_stops_the_service(tmp_path: Path, keys_dir: Path) -> None:
    key = keys_dir / SESSION_KEY_FILE
    key.write_bytes(b"0123456789abcdef")  # 16 bytes
    key.chmod(0o600)
    r = _serve(tmp_path, keys_dir)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(key) in lines[0] and "32" in lines[0], lines[0]


def test_missing_session_key_is_created_0600(
    tmp_path: Path, keys_dir: Path, idp: Any, upstream: StubServer
) -> None:
    key = keys_dir / SESSION_KEY_FILE
    key.unlink()
    _app(keys_dir, tmp_path, idp, upstream.url)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) >= 32


def test_uncreatable_session_key_is_one_clear_error(
    tmp_path: Path, keys_dir: Path, idp: Any, upstream: StubServer
) -> None:
    data = _data(keys_dir, tmp_path, idp, upstream.url)
    data["server"]["secret_key_file"] = str(tmp_path / "no-such-dir" / "session.key")
    with pytest.raises(KeyRingError, match=re.escape("no-such-dir/session.key")):
        create_app(parse_settings(data, tmp_path))


# ------------------------------------------------------------------ what a cookie is worth


def test_cookie_forged_with_the_session_key_gets_nothing(
    tmp_path: Path, keys_dir: Path, idp: Any, upstream: StubServer
) -> None:
    """Whoever reads session.key cannot make a session: the cookie is only a random id."""
    app = _app(keys_dir, tmp_path, idp, upstream.url)
    forger = SecureCookieSessionInterface().get_signing_serializer(app)
    if forger is None:  # no secret key at all: nothing to forge with
        pytest.fail("the app has no secret key")
    forged = forger.dumps({"grant": session_grant("bob"), "ends": int(time.time()) + 3600})
    client = app.test_client()
    client.set_cookie("sjb_session", forged)
    r = client.get("/slurm/v0.0.44/jobs")
    assert r.status_code == 401, r.get_data(as_text=True)
    assert upstream.seen == []
    page = client.get("/")
    assert b'id="token"' not in page.data


def test_session_store_directory_is_private(
    tmp_path: Path, keys_dir: Path, idp: Any, upstream: StubServer
) -> None:
    app = _app(keys_dir, tmp_path, idp, upstream.url)
    logged_in(app)
    store = tmp_path / "sessions"
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    files = [p for p in store.iterdir() if p.is_file()]
    assert files, "no session file in the store"
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)


def test_open_session_store_directory_is_refused(
    tmp_path: Path, keys_dir: Path, idp: Any, upstream: StubServer
) -> None:
    store = tmp_path / "sessions"
    store.mkdir(mode=0o755)
    os.chmod(store, 0o755)  # noqa: S103 (the misconfiguration under test)
    with pytest.raises(KeyRingError, match="sessions"):
        _app(keys_dir, tmp_path, idp, upstream.url)


# ------------------------------------------------------------------ proxy CSRF


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize(
    "headers",
    [
        {},  # a form or text/plain fetch from another site: no custom header, no Origin
        {"Origin": "https://evil.example.org"},
        {"Origin": "https://sibling.hpc.example.org", "X-Requested-With": "fetch"},
        {"Origin": "null", "X-Requested-With": "fetch"},
        {"Origin": PUBLIC},  # same origin but no custom header (a plain form post)
        {"Referer": "https://evil.example.org/x", "X-Requested-With": "fetch"},
        {"X-Requested-With": "fetch"},  # neither Origin nor Referer
    ],
    ids=["bare", "evil", "sibling", "null", "no-header", "evil-referer", "no-origin"],
)
def test_cross_site_state_change_with_session_cookie_is_403(
    tmp_path: Path,
    keys_dir: Path,
    idp: Any,
    upstream: StubServer,
    method: str,
    headers: dict[str, str],
) -> None:
    client = logged_in(_app(keys_dir, tmp_path, idp, upstream.url))
    r = client.open(
        JOB, method=method, data="{}", headers={"Content-Type": "text/plain", **headers}
    )
    assert r.status_code == 403, r.get_data(as_text=True)
    assert upstream.seen == []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
@pytest.mark.parametrize(
    "origin", [{"Origin": PUBLIC}, {"Referer": PUBLIC + "/"}], ids=["origin", "referer"]
)
def test_same_origin_state_change_with_header_is_forwarded(
    tmp_path: Path,
    keys_dir: Path,
    idp: Any,
    upstream: StubServer,
    method: str,
    origin: dict[str, str],
) -> None:
    client = logged_in(_app(keys_dir, tmp_path, idp, upstream.url))
    r = client.open(
        JOB,
        method=method,
        data="{}",
        headers={"Content-Type": "application/json", "X-Requested-With": "fetch", **origin},
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    assert [s.method for s in upstream.seen] == [method]
    assert upstream.seen[0].header("X-SLURM-USER-NAME") == "alice"


def test_session_get_needs_no_origin(
    tmp_path: Path, keys_dir: Path, idp: Any, upstream: StubServer
) -> None:
    client = logged_in(_app(keys_dir, tmp_path, idp, upstream.url))
    assert client.get("/slurm/v0.0.44/jobs").status_code == 200
    assert upstream.seen[0].header("X-SLURM-USER-NAME") == "alice"


def test_bearer_requests_are_unaffected(
    tmp_path: Path, keys_dir: Path, idp: Any, upstream: StubServer
) -> None:
    app = _app(keys_dir, tmp_path, idp, upstream.url)
    token = idp.mint(idp.oidc_claims(sub="alice", aud="bridge", preferred_username="alice"))
    r = app.test_client().post(
        JOB,
        data="{}",
        headers={"Authorization": f"Bearer {token}", "Origin": "https://evil.example.org"},
    )
    assert r.status_code == 200, r.get_data(as_text=True)


def test_session_past_its_end_proxies_nothing(
    tmp_path: Path, keys_dir: Path, idp: Any, upstream: StubServer
) -> None:
    """A session whose login (upstream token) has ended mints no already-expired token."""
    app = _app(keys_dir, tmp_path, idp, upstream.url)
    client = app.test_client()
    grant = session_grant("alice")
    grant["not_after"] = int(time.time()) - 5
    plant_session(client, grant=grant, ends=int(time.time()) + 3600)
    r = client.get("/slurm/v0.0.44/jobs")
    assert r.status_code == 401, r.get_data(as_text=True)
    assert upstream.seen == []


# ------------------------------------------------------------------ the session's own limits


def test_session_past_session_lifetime_is_over(
    tmp_path: Path, keys_dir: Path, idp: Any, upstream: StubServer
) -> None:
    """No sliding window: past its end the page shows the login and mints nothing."""
    app = _app(keys_dir, tmp_path, idp, upstream.url)
    client = app.test_client()
    plant_session(
        client, grant=session_grant("alice"), ends=int(time.time()) - 1, csrf="x", token="old"
    )
    page = client.get("/")
    assert b'id="token"' not in page.data and b'id="login"' in page.data
    r = client.post("/token", data={"csrf": "x", "lifetime": "300"})
    assert r.status_code == 302 and b'id="token"' not in client.get("/").data
    assert client.get("/slurm/v0.0.44/jobs").status_code == 401
    assert upstream.seen == []
    assert not [
        line for line in (tmp_path / "audit.log").read_text().splitlines() if "minted" in line
    ]


def test_cookie_is_an_opaque_id_and_host_prefixed_when_secure(
    tmp_path: Path, keys_dir: Path, idp: Any, upstream: StubServer
) -> None:
    data = _data(keys_dir, tmp_path, idp, upstream.url)
    data["browser"]["secure_cookies"] = True
    app = create_app(parse_settings(data, tmp_path))
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["grant"] = session_grant("alice")
        sess["ends"] = int(time.time()) + 3600
    cookie = client.get_cookie("__Host-sjb_session")
    assert cookie is not None and client.get_cookie("sjb_session") is None
    # no Domain attribute (origin_only), Path=/, Secure: what the __Host- prefix requires
    assert cookie.secure and cookie.http_only and cookie.path == "/" and cookie.origin_only
    assert len(cookie.value) <= 64 and "." not in cookie.value  # a random id, nothing signed
    assert "alice" not in cookie.value
