"""``slurm-jwt-bridge login`` against a hostile bridge and identity provider: what it prints is
safe to ``eval``, the user's identity-provider token goes only to ``--url``'s origin, and text
from the other side reaches the terminal without control characters."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

GOOD_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdW4iOiJ4In0.c2ln"
UPSTREAM_TOKEN = "upstream-access-token-of-the-user"


class Hostile:
    """A bridge and its identity provider on 127.0.0.1, every answer settable."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.posted: list[tuple[str, dict[str, list[str]]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode()) if length else {}
                path = self.path.split("?")[0]
                outer.posted.append((path, form))
                body = outer.answers.get(path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(400 if "error" in body else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def configure(self, token: str, exchange_endpoint: str | None = None, **device: Any) -> None:
        self.answers = {
            "/api/v1/cli-login": {
                "issuer": self.url,
                "client_id": "cli",
                "scope": "openid",
                "device_authorization_endpoint": self.url + "/device",
                "token_endpoint": self.url + "/token",
                "token_exchange_endpoint": exchange_endpoint or self.url + "/oauth/token",
            },
            "/device": {
                "device_code": "dc",
                "user_code": "ABCD-EFGH",
                "verification_uri": self.url + "/activate",
                "interval": 1,
                **device,
            },
            "/token": {"access_token": UPSTREAM_TOKEN},
            "/oauth/token": {"access_token": token, "slurm_user": "alice", "expires_in": 60},
        }

    def exchanged_tokens(self) -> list[str]:
        return [f.get("subject_token", [""])[0] for p, f in self.posted if p == "/oauth/token"]


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    h = Hostile()
    h.thread.start()
    yield h
    h.httpd.shutdown()
    h.httpd.server_close()


def login(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "slurm-jwt-bridge"
    return subprocess.run(
        [str(exe), "login", "--url", url, "--interval", "0.01", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_export_output_cannot_run_commands_in_the_users_shell(
    hostile: Hostile, tmp_path: Path
) -> None:
    """The documented ``eval "$(slurm-jwt-bridge login --export)"`` with a token that is a
    command: nothing runs, nothing is printed on stdout."""
    hostile.configure("eyJx.eyJy.sig; touch PWNED #")
    out = login(hostile.url, "--export")
    subprocess.run(
        ["bash", "-c", 'eval "$OUT"'], cwd=tmp_path, env={"OUT": out.stdout}, check=False
    )
    assert not (tmp_path / "PWNED").exists()
    assert out.returncode != 0
    assert out.stdout == ""
    assert "not a Slurm token" in out.stderr


def test_export_of_a_real_token_evaluates_to_exactly_that_token(
    hostile: Hostile, tmp_path: Path
) -> None:
    hostile.configure(GOOD_TOKEN)
    out = login(hostile.url, "--export")
    assert out.returncode == 0, out.stderr
    shown = subprocess.run(
        ["bash", "-c", 'eval "$OUT"; printf %s "$SLURM_JWT"'],
        env={"OUT": out.stdout},
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout == GOOD_TOKEN


def test_the_users_idp_token_goes_only_to_the_bridge_origin(hostile: Hostile) -> None:
    """A cli-login answer naming another origin as token_exchange_endpoint (as a spoofed Host
    header made the bridge do) does not receive the user's identity-provider token."""
    thief = Hostile()
    thief.thread.start()
    try:
        thief.configure(GOOD_TOKEN)
        hostile.configure(GOOD_TOKEN, exchange_endpoint=thief.url + "/oauth/token")
        out = login(hostile.url)
        assert UPSTREAM_TOKEN not in thief.exchanged_tokens()
        assert out.returncode != 0
        assert "origin" in out.stderr
    finally:
        thief.httpd.shutdown()
        thief.httpd.server_close()


@pytest.mark.parametrize(
    "url", ["http://bridge.example.org", "http://10.1.2.3:8080/", "ftp://bridge.example.org"]
)
def test_plain_http_to_another_machine_is_refused_before_any_request(url: str) -> None:
    out = login(url)
    assert out.returncode != 0
    assert "https" in out.stderr
    assert "cannot reach" not in out.stderr  # refused, not attempted


def test_idp_text_reaches_the_terminal_without_control_characters(hostile: Hostile) -> None:
    hostile.configure(
        GOOD_TOKEN,
        user_code="ABCD\x1b]0;owned\x07-EFGH",
        verification_uri=hostile.url + "/activate\x1b[2J\r",
    )
    out = login(hostile.url)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stderr and "\x07" not in out.stderr and "\r" not in out.stderr
    assert "ABCD\\x1b]0;owned\\x07-EFGH" in out.stderr


def test_refusal_text_from_the_idp_is_printed_without_control_characters(
    hostile: Hostile,
) -> None:
    hostile.configure(GOOD_TOKEN)
    hostile.answers["/token"] = {"error": "access_denied", "error_description": "no\x1b[31m!"}
    out = login(hostile.url)
    assert out.returncode != 0
    assert "\x1b" not in out.stderr
    assert "no\\x1b[31m!" in out.stderr


def test_cli_login_answer_names_urls_from_public_url_only(idp: Any, keys_dir: Path) -> None:
    """A request with ``Host: evil.example:9999`` does not make the bridge advertise
    ``http://evil.example:9999/oauth/token`` as the place to send the user's token."""
    from slurm_jwt_bridge import create_app
    from slurm_jwt_bridge.settings import parse_settings

    idp.extra_discovery = {"device_authorization_endpoint": idp.issuer + "/device"}
    settings = parse_settings(
        {
            "server": {"public_url": "https://bridge.example.org"},
            "keys": {"dir": str(keys_dir)},
            "audit": {"destination": "none"},
            "browser": {"enabled": False},
            "issuers": [
                {"name": "idp", "kind": "oidc", "issuer": idp.issuer, "audiences": ["bridge"]}
            ],
            "mapping": {"rules": [{"claim": "preferred_username"}]},
            "cli_login": {"issuer": "idp", "client_id": "cli"},
        },
        keys_dir.parent,
    )
    client = create_app(settings).test_client()
    resp = client.get("/api/v1/cli-login", headers={"Host": "evil.example:9999"})
    assert resp.status_code == 200
    assert resp.json["token_exchange_endpoint"] == "https://bridge.example.org/oauth/token"
    assert "evil" not in resp.get_data(as_text=True)
    assert resp.headers["Cache-Control"] == "no-store"
