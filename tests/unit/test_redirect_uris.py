"""The bridge's own URLs (the identity provider's redirect URI, the post-logout redirect URI,
the device page's verification URI, the terminal's endpoints) come from ``[server] public_url``,
never from the request's ``Host`` or ``X-Forwarded-Host`` header.

The attack: a redirect URI a client can steer sends the authorization code (or the user) to a
host of the attacker's choosing wherever the identity provider accepts it (a wildcard redirect
URI, a lenient registration). Without ``public_url``, the service refuses to run under gunicorn
when browser login is configured; the development server keeps the request's ``Host``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.cli import main
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.login_session import login_grant, login_issuer
from tests.helpers.sessions import plant_session

PUBLIC = "https://bridge.example.org"
EVIL = "evil.example"
APP = "slurm_jwt_bridge:create_app()"
FORGED = {"Host": EVIL, "X-Forwarded-Host": EVIL, "X-Forwarded-Proto": "https"}


def _data(keys_dir: Path, tmp_path: Path, idp: Any, public_url: str) -> dict[str, Any]:
    return {
        "keys": {"dir": str(keys_dir)},
        "audit": {"destination": "none"},
        "server": {"public_url": public_url, "proxy_fix": 1},
        "browser": {"secure_cookies": False},
        "issuers": [login_issuer(idp.issuer)],
        "mapping": {"require_local_account": False, "rules": [{"claim": "preferred_username"}]},
        "rate_limit": {"enabled": False},
    }


def _app(keys_dir: Path, tmp_path: Path, idp: Any, public_url: str = PUBLIC) -> Any:
    return create_app(parse_settings(_data(keys_dir, tmp_path, idp, public_url), tmp_path))


def _redirect_uri(location: str) -> str:
    return parse_qs(urlsplit(location).query)["redirect_uri"][0]


@pytest.mark.parametrize(
    "headers",
    [FORGED, {"Host": EVIL}, {"X-Forwarded-Host": EVIL}],
    ids=["host-and-forwarded-host", "host", "forwarded-host"],
)
def test_a_forged_host_does_not_steer_the_login_redirect_uri(
    keys_dir: Path, tmp_path: Path, idp: Any, headers: dict[str, str]
) -> None:
    r = _app(keys_dir, tmp_path, idp).test_client().get("/login", headers=headers)
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    assert r.headers["Location"].startswith(idp.issuer)
    assert _redirect_uri(r.headers["Location"]) == PUBLIC + "/auth/callback"


def test_a_forged_host_does_not_steer_the_post_logout_redirect_uri(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    client = _app(keys_dir, tmp_path, idp).test_client()
    plant_session(
        client,
        grant=login_grant(),
        ends=int(time.time()) + 3600,
        csrf="x",
        issuer="oidc",
        end_session=idp.issuer + "/logout",
    )
    # the session cookie belongs to the real host: the forged one is X-Forwarded-Host
    r = client.post("/logout", data={"csrf": "x"}, headers={"X-Forwarded-Host": EVIL})
    assert r.status_code == 302
    params = parse_qs(urlsplit(r.headers["Location"]).query)
    assert params["post_logout_redirect_uri"] == [PUBLIC + "/"]


def test_a_forged_host_does_not_steer_the_device_page_or_the_terminal_endpoints(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    client = _app(keys_dir, tmp_path, idp).test_client()
    r = client.post("/oauth/device_authorization", data={"client_id": "cli"}, headers=FORGED)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.json["verification_uri"] == PUBLIC + "/device"
    assert r.json["verification_uri_complete"].startswith(PUBLIC + "/device?code=")
    r = client.get("/api/v1/cli-login", headers=FORGED)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.json["device_authorization_endpoint"] == PUBLIC + "/oauth/device_authorization"
    assert r.json["token_endpoint"] == PUBLIC + "/oauth/token"


def test_without_public_url_x_forwarded_host_is_not_trusted(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    """The development server (no public_url) builds URLs from the request's Host; proxy_fix
    trusts X-Forwarded-For and -Proto only, so a client's X-Forwarded-Host changes nothing."""
    client = _app(keys_dir, tmp_path, idp, public_url="").test_client()
    headers = {"X-Forwarded-Host": EVIL, "X-Forwarded-For": "192.0.2.7"}
    r = client.get("/login", headers=headers)
    assert r.status_code == 302
    assert _redirect_uri(r.headers["Location"]) == "http://localhost/auth/callback"
    r = client.post("/oauth/device_authorization", data={"client_id": "cli"}, headers=headers)
    assert r.json["verification_uri"] == "http://localhost/device"


# ------------------------------------------------------------------ no public_url in production


def _config(tmp_path: Path, keys_dir: Path, public_url: str | None) -> Path:
    cfg = tmp_path / "bridge.toml"
    server = f'[server]\npublic_url = "{public_url}"\n' if public_url is not None else ""
    cfg.write_text(
        f'{server}[keys]\ndir = "{keys_dir}"\n[audit]\ndestination = "none"\n'
        '[[issuers]]\nname = "idp"\nkind = "oidc"\nissuer = "https://idp.example.org"\n'
        'audiences = ["bridge"]\ntoken_use = ["id"]\nclient_id = "bridge"\n'
        '[[mapping.rules]]\nclaim = "preferred_username"\n'
    )
    return cfg


def _gunicorn(cfg: Path) -> subprocess.CompletedProcess[str]:
    """gunicorn as the deployment runs it (systemd unit, container): it must stop by itself."""
    exe = Path(sys.executable).parent / "gunicorn"
    env = {**os.environ, "SLURM_JWT_BRIDGE_CONFIG": str(cfg), "GUNICORN_BIND": "127.0.0.1:0"}
    argv = [
        str(exe),
        "-c",
        "python:slurm_jwt_bridge.gunicorn_conf",
        "slurm_jwt_bridge:create_app()",
    ]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("gunicorn started with browser login and no public_url")


def test_gunicorn_refuses_browser_login_without_public_url(tmp_path: Path, keys_dir: Path) -> None:
    r = _gunicorn(_config(tmp_path, keys_dir, None))
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [
        "slurm-jwt-bridge: error: server.public_url: must be set for browser login "
        "(the identity provider's redirect URI is built from it, never from the request's Host)"
    ], r.stderr


def test_config_check_refuses_browser_login_without_public_url(
    tmp_path: Path, keys_dir: Path
) -> None:
    r = CliRunner().invoke(
        main, ["config", "check", "--config", str(_config(tmp_path, keys_dir, None))]
    )
    assert r.exit_code == 1 and "server.public_url: must be set" in r.output, r.output
    r = CliRunner().invoke(
        main, ["config", "check", "--config", str(_config(tmp_path, keys_dir, PUBLIC))]
    )
    assert (r.exit_code, r.output.strip()) == (0, "ok"), r.output


@pytest.mark.parametrize("script_name", ["@evil.example", ".evil.example", "/elsewhere", "/sjb"])
@pytest.mark.parametrize("public_url", [PUBLIC, PUBLIC + "/sjb"])
def test_a_script_name_does_not_move_the_login_redirect_uri(
    keys_dir: Path, tmp_path: Path, idp: Any, script_name: str, public_url: str
) -> None:
    """gunicorn takes SCRIPT_NAME from a header of a forwarder it trusts (127.0.0.1 by default):
    the service's own URLs are public_url (with any prefix) + the route's path, nothing more."""
    client = _app(keys_dir, tmp_path, idp, public_url).test_client()
    r = client.get("/login", environ_overrides={"SCRIPT_NAME": script_name})
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    assert _redirect_uri(r.headers["Location"]) == public_url + "/auth/callback"
