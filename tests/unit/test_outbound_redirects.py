"""The requests-based clients (python-keycloak for introspection and ``keycloak setup``, authlib
for browser login, refresh and revocation) follow no redirect and take no trust from the
environment.

The attacks: an https endpoint (its certificate trusted through the issuer's ``ca_file``)
answers 307 to a plain-http listener, which then receives the client secret, the user's token,
the authorization code or the admin password in clear text; a discovery document names a
plain-http endpoint; ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` names a CA the issuer's
``ca_file`` does not, and requests trusted it instead.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.cli import main
from slurm_jwt_bridge.errors import BridgeError
from slurm_jwt_bridge.introspection import Introspector, introspect
from slurm_jwt_bridge.keycloak_setup import SetupError, connect
from slurm_jwt_bridge.settings import IntrospectionSettings, IssuerSettings, parse_settings
from tests.helpers.tls import TestCA
from tests.unit.test_tls_trust import ca, no_trust_variables  # the same fixtures

__all__ = ["ca", "no_trust_variables"]

SECRET = "CLIENT-SECRET-xyz"
PASSWORD = "ADMIN-PASSWORD-xyz"
USER_TOKEN = "opaque-user-token-xyz"


class Server:
    """A small HTTP(S) server on 127.0.0.1 answering fixed routes and logging every request."""

    def __init__(self, tls: Any = None) -> None:
        self.routes: dict[tuple[str, str], tuple[int, dict[str, str], bytes]] = {}
        self.log: list[tuple[str, str, dict[str, str], str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n).decode() if n else ""
                outer.log.append((method, self.path, dict(self.headers), body))
                path = urllib.parse.urlsplit(self.path).path
                status, headers, payload = outer.routes.get(
                    (method, path), (404, {}, b'{"error":"not_found"}')
                )
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        port = self.httpd.server_address[1]
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def json(self, method: str, path: str, body: Any, status: int = 200) -> None:
        self.routes[(method, path)] = (status, {}, json.dumps(body).encode())

    def redirect(self, method: str, path: str, to: str, status: int = 307) -> None:
        self.routes[(method, path)] = (status, {"Location": to}, b"")

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def other_ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki-other", "another CA")


@pytest.fixture
def https(ca: TestCA) -> Iterator[Server]:
    server = Server(ca.server_context())
    yield server
    server.stop()


@pytest.fixture
def catcher() -> Iterator[Server]:
    """Plain http: whatever reaches it crossed the network in clear text."""
    server = Server()
    yield server
    server.stop()


def _leaked(catcher: Server, *secrets: str) -> list[str]:
    text = json.dumps(catcher.log)
    return [s for s in secrets if s in text]


# ---------------------------------------------------------------- introspection


def _introspector(server: Server, ca_file: Path) -> Introspector:
    return Introspector(
        IssuerSettings(
            name="kc",
            kind="keycloak",
            issuer=server.base + "/realms/hpc",
            allowed_clients=("portal",),
            ca_file=str(ca_file),
            introspection=IntrospectionSettings("bridge", SECRET),
        )
    )


INTROSPECT = "/realms/hpc/protocol/openid-connect/token/introspect"


def test_introspection_follows_no_redirect_to_plain_http(
    https: Server, catcher: Server, ca: TestCA
) -> None:
    https.redirect("POST", INTROSPECT, catcher.base + "/steal")
    catcher.json("POST", "/steal", {"active": False})
    intro = _introspector(https, ca.ca_file)
    with pytest.raises(Exception) as raised:
        intro.ask(USER_TOKEN)
    assert "Redirect" in repr(raised.value.__cause__) or "connect" in str(raised.value)
    # Fails closed: the token is refused as when the issuer is unreachable.
    with pytest.raises(BridgeError) as refused:
        introspect([intro], USER_TOKEN, "h", lambda: 0.0)
    assert refused.value.status == 503
    assert catcher.log == []
    assert [m for m, *_ in https.log] == ["POST", "POST"]


def test_introspection_answers_without_redirect(https: Server, ca: TestCA) -> None:
    """The control: the same client reaches the same server when it answers directly."""
    https.json("POST", INTROSPECT, {"active": False})
    assert _introspector(https, ca.ca_file).ask(USER_TOKEN) == {"active": False}


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_introspection_ca_file_is_not_replaced_by_the_environment(
    monkeypatch: pytest.MonkeyPatch, ca: TestCA, other_ca: TestCA, variable: str
) -> None:
    """The server's certificate is from another CA than the issuer's ca_file; the environment
    names that other CA: still refused."""
    server = Server(other_ca.server_context())
    try:
        server.json("POST", INTROSPECT, {"active": False})
        monkeypatch.setenv(variable, str(other_ca.ca_file))
        with pytest.raises(Exception, match="connect"):
            _introspector(server, ca.ca_file).ask(USER_TOKEN)
        assert server.log == []
        # The control: with the right ca_file it answers.
        assert _introspector(server, other_ca.ca_file).ask(USER_TOKEN) == {"active": False}
    finally:
        server.stop()


# ---------------------------------------------------------------- keycloak setup

ADMIN_TOKEN = "/realms/master/protocol/openid-connect/token"


def test_keycloak_setup_follows_no_redirect_with_the_password(
    https: Server, catcher: Server, ca: TestCA
) -> None:
    https.redirect("POST", ADMIN_TOKEN, catcher.base + "/steal")
    catcher.json("POST", "/steal", {"access_token": "x", "expires_in": 60})
    with pytest.raises(SetupError):
        connect(
            https.base,
            "hpc",
            admin_realm="master",
            username="admin",
            password=PASSWORD,
            ca_file=str(ca.ca_file),
        )
    assert catcher.log == []
    assert len(https.log) == 1


def test_keycloak_setup_refuses_plain_http_to_another_machine(tmp_path: Path) -> None:
    """192.0.2.2 (TEST-NET-1): refused before any connection, so nothing needs to listen."""
    with pytest.raises(SetupError, match="plain http only to this machine"):
        connect("http://192.0.2.2:8080", "hpc", admin_realm="master", username="a", password="p")
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    out = CliRunner().invoke(
        main,
        [
            "keycloak",
            "setup",
            "--server",
            "http://192.0.2.2:8080",
            "--realm",
            "hpc",
            "--public-url",
            "https://bridge.example.org",
            "--admin-user",
            "admin",
            "--admin-password-file",
            str(pw),
        ],
    )
    assert out.exit_code != 0
    assert "plain http only to this machine" in out.output
    assert PASSWORD not in out.output


# ---------------------------------------------------------------- browser login (authlib)


def _meta(issuer: str, **overrides: str) -> dict[str, str]:
    meta = {
        "issuer": issuer,
        "authorization_endpoint": issuer + "/auth",
        "token_endpoint": issuer + "/token",
        "jwks_uri": issuer + "/jwks",
    }
    meta.update(overrides)
    return meta


def _login_app(tmp_path: Path, keys_dir: Path, issuer: str, ca_file: Path) -> Any:
    data = {
        "keys": {"dir": str(keys_dir)},
        "audit": {"destination": "none"},
        "issuers": [
            {
                "name": "w",
                "kind": "oidc",
                "issuer": issuer,
                "audiences": ["bridge"],
                "token_use": ["id"],
                "client_id": "bridge",
                "client_secret": SECRET,
                "ca_file": str(ca_file),
            }
        ],
        "mapping": {"rules": [{"claim": "preferred_username"}]},
        "server": {"public_url": "https://bridge.example.org"},
        "browser": {"enabled": True, "secure_cookies": False},
        "rate_limit": {"enabled": False},
    }
    return create_app(parse_settings(data, tmp_path))


def _state(location: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["state"][0]


DISCOVERY = "/realms/w/.well-known/openid-configuration"


def test_browser_discovery_follows_no_redirect(
    tmp_path: Path, keys_dir: Path, https: Server, catcher: Server, ca: TestCA
) -> None:
    issuer = https.base + "/realms/w"
    https.redirect("GET", DISCOVERY, catcher.base + "/disc", 302)
    catcher.json("GET", "/disc", _meta(issuer, authorization_endpoint=catcher.base + "/auth"))
    r = _login_app(tmp_path, keys_dir, issuer, ca.ca_file).test_client().get("/login")
    assert r.status_code == 503
    assert catcher.log == []


def test_browser_code_exchange_follows_no_redirect(
    tmp_path: Path, keys_dir: Path, https: Server, catcher: Server, ca: TestCA
) -> None:
    issuer = https.base + "/realms/w"
    https.json("GET", DISCOVERY, _meta(issuer))
    https.redirect("POST", "/realms/w/token", catcher.base + "/token")
    catcher.json("POST", "/token", {"error": "invalid_grant"}, 400)
    client = _login_app(tmp_path, keys_dir, issuer, ca.ca_file).test_client()
    r = client.get("/login")
    assert r.status_code == 302 and r.headers["Location"].startswith(issuer + "/auth")
    r = client.get(f"/auth/callback?code=victim-code&state={_state(r.headers['Location'])}")
    assert r.status_code == 502
    assert catcher.log == []
    assert [(m, p) for m, p, *_ in https.log][-1] == ("POST", "/realms/w/token")


def test_browser_refresh_follows_no_redirect(
    tmp_path: Path, keys_dir: Path, https: Server, catcher: Server, ca: TestCA
) -> None:
    """Refresh goes through the same authlib client as the code exchange."""
    issuer = https.base + "/realms/w"
    https.json("GET", DISCOVERY, _meta(issuer))
    https.redirect("POST", "/realms/w/token", catcher.base + "/token")
    app = _login_app(tmp_path, keys_dir, issuer, ca.ca_file)
    with app.test_request_context("/"):
        oauth_client = app.extensions["slurm_jwt_bridge_oauth"].create_client("w")
        with pytest.raises(Exception, match=r"[Rr]edirect"):
            oauth_client.fetch_access_token(grant_type="refresh_token", refresh_token="REFRESH-xyz")
    assert catcher.log == []


@pytest.mark.parametrize(
    "endpoint", ["authorization_endpoint", "token_endpoint", "jwks_uri", "end_session_endpoint"]
)
def test_browser_login_refuses_a_plain_http_endpoint(
    tmp_path: Path, keys_dir: Path, https: Server, catcher: Server, ca: TestCA, endpoint: str
) -> None:
    """An https issuer whose discovery document names a plain-http endpoint, even on this
    machine (another port there is anyone's)."""
    issuer = https.base + "/realms/w"
    https.json("GET", DISCOVERY, _meta(issuer, **{endpoint: catcher.base + "/x"}))
    r = _login_app(tmp_path, keys_dir, issuer, ca.ca_file).test_client().get("/login")
    assert r.status_code == 502
    assert "not https" in r.get_data(as_text=True)
    assert catcher.log == []


def test_browser_revocation_refuses_a_plain_http_endpoint(
    tmp_path: Path, keys_dir: Path, https: Server, catcher: Server, ca: TestCA
) -> None:
    from slurm_jwt_bridge.web.browser import _revoke

    issuer = https.base + "/realms/w"
    https.json("GET", DISCOVERY, _meta(issuer, revocation_endpoint=catcher.base + "/revoke"))
    app = _login_app(tmp_path, keys_dir, issuer, ca.ca_file)
    with app.test_request_context("/"):
        _revoke("w", "REFRESH-xyz")
    assert catcher.log == []
    # The control: an https revocation endpoint is called.
    https.json("GET", DISCOVERY, _meta(issuer, revocation_endpoint=issuer + "/revoke"))
    https.json("POST", "/realms/w/revoke", {})
    app = _login_app(tmp_path, keys_dir, issuer, ca.ca_file)
    with app.test_request_context("/"):
        _revoke("w", "REFRESH-xyz")
    assert ("POST", "/realms/w/revoke") in [(m, p) for m, p, *_ in https.log]


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_browser_ca_file_is_not_replaced_by_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    keys_dir: Path,
    ca: TestCA,
    other_ca: TestCA,
    variable: str,
) -> None:
    server = Server(other_ca.server_context())
    try:
        issuer = server.base + "/realms/w"
        server.json("GET", DISCOVERY, _meta(issuer))
        monkeypatch.setenv(variable, str(other_ca.ca_file))
        r = _login_app(tmp_path, keys_dir, issuer, ca.ca_file).test_client().get("/login")
        assert r.status_code == 503
        assert server.log == []
        # The control: with the right ca_file the login goes to the provider.
        r = _login_app(tmp_path, keys_dir, issuer, other_ca.ca_file).test_client().get("/login")
        assert r.status_code == 302 and r.headers["Location"].startswith(issuer + "/auth")
    finally:
        server.stop()
