"""The bridge's own device grant (RFC 8628) in process: the terminal's endpoints, the /device
page's rules, and the phishing and replay shapes it refuses.

A browser session is made with Flask's test client (as the login callback leaves it); the full
path (Chromium, oidc-provider without a device endpoint, slurmrestd 26.05, Redis replicas) runs
in tests/integration/test_device_page.py.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import parse_settings
from slurm_jwt_bridge.web.device import USER_CODE_ALPHABET, _device_key, normalize_user_code
from tests.helpers.sessions import plant_session

FORM = "application/x-www-form-urlencoded"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def _app(keys_dir: Path, tmp_path: Path, idp: Any, **browser: Any) -> Any:
    data = {
        "keys": {"dir": str(keys_dir)},
        "audit": {"destination": f"file:{tmp_path / 'audit.log'}"},
        "server": {"public_url": "https://hpc.example.org"},
        "browser": {"secure_cookies": False, "device_poll_interval": 1, **browser},
        "issuers": [
            {
                "name": "oidc",
                "kind": "oidc",
                "issuer": idp.issuer,
                "audiences": ["bridge"],
                "token_use": ["access", "id"],
                "client_id": "bridge",
            }
        ],
        "mapping": {"require_local_account": False, "rules": [{"claim": "preferred_username"}]},
        "rate_limit": {"enabled": False},
    }
    return create_app(parse_settings(data, tmp_path))


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [a for a in map(json.loads, lines) if a.get("event") == "device"]


def _logged_in(app: Any, user: str = "alice", not_after: int | None = None) -> Any:
    client = app.test_client()
    grant = {
        "user": user,
        "issuer": "oidc",
        "subject": user,
        "client": "bridge",
        "kind": "user",
        "max_lifetime": None,
        "algs": ["RS256", "HS256"],
        "not_after": not_after or int(time.time()) + 900,
    }
    plant_session(client, grant=grant, ends=int(time.time()) + 3600, csrf="x")
    return client


def _start(app: Any) -> dict[str, Any]:
    r = app.test_client().post("/oauth/device_authorization", data={"client_id": "cli"})
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()


def _poll(app: Any, device_code: str, **extra: str) -> Any:
    return app.test_client().post(
        "/oauth/token", data={"grant_type": DEVICE_GRANT, "device_code": device_code, **extra}
    )


def _poll_later(app: Any, device_code: str, **extra: str) -> Any:
    time.sleep(1.1)  # device_poll_interval = 1: a poll that keeps the interval
    return _poll(app, device_code, **extra)


def _answer(client: Any, code: str, decision: str, csrf: str = "x") -> Any:
    return client.post("/device", data={"csrf": csrf, "code": code, "decision": decision})


@pytest.fixture
def app(keys_dir: Path, tmp_path: Path, idp: Any) -> Any:
    return _app(keys_dir, tmp_path, idp)


# ------------------------------------------------------------------ the terminal's side


def test_device_authorization_answer(app: Any, tmp_path: Path) -> None:
    dev = _start(app)
    assert set(dev) == {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
    }
    assert re.fullmatch(
        f"[{USER_CODE_ALPHABET}]{{4}}-[{USER_CODE_ALPHABET}]{{4}}", dev["user_code"]
    )
    assert dev["verification_uri"] == "https://hpc.example.org/device"
    assert dev["verification_uri_complete"].endswith("/device?code=" + dev["user_code"])
    assert dev["expires_in"] == 600 and dev["interval"] == 1
    assert len(dev["device_code"]) >= 40
    assert any(a["outcome"] == "issued" for a in _audit(tmp_path))


def test_cli_login_names_the_bridge_grant_without_an_idp_device_endpoint(app: Any) -> None:
    r = app.test_client().get("/api/v1/cli-login")
    assert r.status_code == 200
    body = r.get_json()
    assert body["grant"] == "bridge"
    # from [server] public_url, never from the Host header (the CLI posts only to --url's origin)
    r = app.test_client().get("/api/v1/cli-login", headers={"Host": "evil.example"})
    body = r.get_json()
    assert body["device_authorization_endpoint"] == (
        "https://hpc.example.org/oauth/device_authorization"
    )
    assert body["token_endpoint"] == "https://hpc.example.org/oauth/token"


def test_pending_then_slow_down_when_polling_too_fast(app: Any, tmp_path: Path) -> None:
    dev = _start(app)
    r = _poll_later(app, dev["device_code"])
    assert (r.status_code, r.get_json()["error"]) == (400, "authorization_pending")
    r = _poll(app, dev["device_code"])  # at once: too fast
    assert r.get_json()["error"] == "slow_down"
    assert "wait 6 s" in r.get_json()["error_description"]
    assert any(a.get("error") == "slow_down" for a in _audit(tmp_path))
    r = _poll_later(app, dev["device_code"])  # the interval is now 6 s
    assert r.get_json()["error"] == "slow_down"


def test_allow_gives_one_token_from_the_approving_users_grant(app: Any, tmp_path: Path) -> None:
    dev = _start(app)
    browser = _logged_in(app, "alice", not_after=int(time.time()) + 400)
    page = browser.get("/device?code=" + dev["user_code"].replace("-", "").lower())
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert dev["user_code"] in html and "127.0.0.1" in html and 'id="allow"' in html
    assert _poll_later(app, dev["device_code"]).get_json()["error"] == "authorization_pending"
    r = _answer(browser, dev["user_code"], "allow")
    assert r.status_code == 200 and "Terminal allowed" in r.get_data(as_text=True)
    r = _poll_later(app, dev["device_code"], requested_lifetime="3600")
    assert r.status_code == 200, r.get_data(as_text=True)
    token = r.get_json()["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sun"] == "alice"
    # capped like every browser-door token: never past the login's not_after
    assert claims["exp"] <= int(time.time()) + 400
    minted = [a for a in _audit(tmp_path) if a["outcome"] == "minted"]
    assert minted and minted[-1]["door"] == "device" and minted[-1]["user"] == "alice"
    assert token not in (tmp_path / "audit.log").read_text()


# ------------------------------------------------------------------ attacks: phishing, replay


def test_attack_replayed_device_code_gets_nothing(app: Any, tmp_path: Path) -> None:
    dev = _start(app)
    browser = _logged_in(app)
    assert _answer(browser, dev["user_code"], "allow").status_code == 200
    assert _poll_later(app, dev["device_code"]).status_code == 200
    r = _poll_later(app, dev["device_code"])
    assert (r.status_code, r.get_json()["error"]) == (400, "invalid_grant")
    assert "already used" in r.get_json()["error_description"]


def test_attack_an_approved_code_cannot_be_approved_again(app: Any) -> None:
    dev = _start(app)
    assert _answer(_logged_in(app, "alice"), dev["user_code"], "allow").status_code == 200
    # a second person (or the same, tricked again) answering the same code changes nothing
    r = _answer(_logged_in(app, "bob"), dev["user_code"], "allow")
    assert r.status_code == 409 and "already" in r.get_data(as_text=True)
    r = _answer(_logged_in(app, "bob"), dev["user_code"], "deny")
    assert r.status_code == 409
    token = _poll_later(app, dev["device_code"]).get_json()["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["sun"] == "alice"


def test_attack_link_with_the_code_never_approves_by_itself(app: Any) -> None:
    """verification_uri_complete sent to a victim: opening it only shows the code and asks."""
    dev = _start(app)
    victim = _logged_in(app)
    for _ in range(3):
        assert (
            victim.get(dev["verification_uri_complete"].split("hpc.example.org")[1]).status_code
            == 200
        )
    assert _poll_later(app, dev["device_code"]).get_json()["error"] == "authorization_pending"


def test_attack_cross_site_post_without_the_csrf_field_is_refused(app: Any) -> None:
    dev = _start(app)
    victim = _logged_in(app)
    r = victim.post("/device", data={"code": dev["user_code"], "decision": "allow"})
    assert r.status_code == 400
    r = _answer(victim, dev["user_code"], "allow", csrf="guessed")
    assert r.status_code == 400
    assert _poll_later(app, dev["device_code"]).get_json()["error"] == "authorization_pending"


def test_attack_the_page_cannot_be_framed(app: Any) -> None:
    dev = _start(app)
    r = _logged_in(app).get("/device?code=" + dev["user_code"])
    assert r.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["Cache-Control"] == "no-store"


def test_attack_without_a_login_nothing_is_shown_or_approved(app: Any) -> None:
    dev = _start(app)
    anon = app.test_client()
    r = anon.get("/device?code=" + dev["user_code"])
    assert r.status_code == 200 and dev["user_code"] not in r.get_data(as_text=True)
    assert 'id="login"' in r.get_data(as_text=True)
    r = anon.post("/device", data={"code": dev["user_code"], "decision": "allow", "csrf": ""})
    assert r.status_code == 302
    assert _poll_later(app, dev["device_code"]).get_json()["error"] == "authorization_pending"


def test_attack_guessing_user_codes_is_bounded_per_session(app: Any, tmp_path: Path) -> None:
    dev = _start(app)
    guesser = _logged_in(app, "mallory")
    for _ in range(5):
        r = guesser.get("/device?code=BBBB-BBBB")
        assert r.status_code == 400 and "No login is waiting" in r.get_data(as_text=True)
    r = guesser.get("/device?code=" + dev["user_code"])  # even the right code, now
    assert r.status_code == 429 and dev["user_code"] not in r.get_data(as_text=True)
    assert _answer(guesser, dev["user_code"], "allow").status_code == 429
    assert sum(a["outcome"] == "refused" for a in _audit(tmp_path)) >= 6


def test_attack_guessing_user_codes_is_bounded_per_address(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    app = _app(keys_dir, tmp_path, idp, device_max_attempts_per_address=3)
    dev = _start(app)
    for _ in range(3):  # a fresh session each time: the address still counts
        assert _logged_in(app).get("/device?code=BBBB-BBBB").status_code == 400
    r = _logged_in(app).get("/device?code=" + dev["user_code"])
    assert r.status_code == 429


def test_attack_guessing_device_codes_gets_nothing(app: Any, tmp_path: Path) -> None:
    _start(app)
    for guess in ("x", "A" * 43, "../../etc/passwd"):
        r = _poll(app, guess)
        assert (r.status_code, r.get_json()["error"]) == (400, "invalid_grant")
    assert any("unknown" in a.get("reason", "") for a in _audit(tmp_path))


# ------------------------------------------------------------------ deny, expiry, bad input


def test_deny_fails_the_terminal_with_access_denied(app: Any, tmp_path: Path) -> None:
    dev = _start(app)
    r = _answer(_logged_in(app), dev["user_code"], "deny")
    assert r.status_code == 200 and "Terminal denied" in r.get_data(as_text=True)
    r = _poll_later(app, dev["device_code"])
    assert (r.status_code, r.get_json()["error"]) == (400, "access_denied")
    assert "denied in the browser" in r.get_json()["error_description"]
    assert any(a["outcome"] == "denied" for a in _audit(tmp_path))


def test_expired_code_cannot_be_approved_or_polled(app: Any) -> None:
    dev = _start(app)
    store = app.extensions["slurm_jwt_bridge_device_store"]
    store.update(_device_key(dev["device_code"]), lambda rec: ({**rec, "expires": 1}, None))
    r = _logged_in(app).get("/device?code=" + dev["user_code"])
    assert r.status_code == 400 and "expired" in r.get_data(as_text=True)
    r = _poll_later(app, dev["device_code"])
    assert r.get_json()["error"] == "expired_token"


def test_expired_login_cannot_approve(app: Any) -> None:
    dev = _start(app)
    browser = _logged_in(app, not_after=int(time.time()) - 1)
    r = browser.get("/device?code=" + dev["user_code"])
    assert dev["user_code"] not in r.get_data(as_text=True)
    assert _answer(browser, dev["user_code"], "allow").status_code == 302


@pytest.mark.parametrize(
    "code", ["", "B" * 200, "\x00\x1b[31m", "BCDF-GHJ0", "AEIO-UAEI", "BCDF GHJK LM", "%ff"]
)
def test_bad_codes_get_a_clear_page_not_a_500(app: Any, code: str) -> None:
    r = _logged_in(app).get("/device", query_string={"code": code})
    assert r.status_code in (200, 400), r.status_code
    assert "Traceback" not in r.get_data(as_text=True)


def test_bad_terminal_requests_get_a_clear_error(app: Any) -> None:
    c = app.test_client()
    r = c.post("/oauth/device_authorization", json={"client_id": "cli"})
    assert (r.status_code, r.get_json()["error"]) == (400, "invalid_request")
    r = c.post("/oauth/token", data={"grant_type": DEVICE_GRANT})
    assert (r.status_code, r.get_json()["error"]) == (400, "invalid_request")
    r = c.post("/oauth/token", data={"grant_type": DEVICE_GRANT, "device_code": "x" * 500})
    assert r.status_code == 400
    r = _logged_in(app).post("/device", data={"csrf": "x", "code": "BCDF-GHJK", "decision": "yes"})
    assert r.status_code == 400


def test_normalize_user_code() -> None:
    assert normalize_user_code("bcdf-ghjk") == "BCDFGHJK"
    assert normalize_user_code(" BCDF GHJK ") == "BCDFGHJK"
    assert normalize_user_code("BCDF-GHJI") is None
    assert normalize_user_code("BCDFGHJKB") is None


def test_device_login_off_means_no_endpoints(keys_dir: Path, tmp_path: Path, idp: Any) -> None:
    app = _app(keys_dir, tmp_path, idp, device_login=False)
    c = app.test_client()
    assert c.post("/oauth/device_authorization", data={"client_id": "x"}).status_code == 404
    r = c.post("/oauth/token", data={"grant_type": DEVICE_GRANT, "device_code": "x"})
    assert r.get_json()["error"] == "unsupported_grant_type"
    assert c.get("/api/v1/cli-login").status_code == 404


# ------------------------------------------------------------------ the CLI's side


def test_attack_cli_refuses_a_bridge_grant_pointing_elsewhere() -> None:
    """A bridge (or a path in front of it) naming another host's endpoints for the bridge path:
    the CLI sends nothing there."""
    from slurm_jwt_bridge.device_login import LoginError, device_login
    from tests.helpers.stub_http import StubServer

    evil = StubServer(b'{"device_code": "d", "user_code": "BCDF-GHJK"}')
    body = json.dumps(
        {
            "grant": "bridge",
            "client_id": "slurm-jwt-bridge-cli",
            "device_authorization_endpoint": f"{evil.url}/oauth/device",
            "token_endpoint": f"{evil.url}/oauth/token",
        }
    ).encode()
    bridge = StubServer(body)
    try:
        with pytest.raises(LoginError, match="on another origin"):
            device_login(bridge.url, prompt=lambda _line: None)
        assert evil.seen == []
    finally:
        bridge.close()
        evil.close()


# ---------------------------------------------------------------- the adversarial review


def test_code_planted_before_an_ordinary_login_is_dropped(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    """A page on a sibling origin makes the logged-out victim open /device?code=ATTACKER; her
    later ordinary login must not end on the attacker's confirm page."""
    app = _app(keys_dir, tmp_path, idp)
    dev = _start(app)
    victim = app.test_client()
    victim.get(f"/device?code={dev['user_code']}")
    with victim.session_transaction() as s:
        assert s.get("device_next") == dev["user_code"]
    victim.get("/login")  # the start page's login
    with victim.session_transaction() as s:
        assert "device_next" not in s
    # Started from the device page, the code is kept for the login's return.
    victim.get(f"/device?code={dev['user_code']}")
    victim.get("/login?device=1")
    with victim.session_transaction() as s:
        assert s.get("device_next") == dev["user_code"]


def test_a_code_dies_with_the_login_that_allowed_it(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    app = _app(keys_dir, tmp_path, idp)
    dev = _start(app)
    client = _logged_in(app)
    assert _answer(client, dev["user_code"], "allow").status_code == 200
    assert client.post("/logout", data={"csrf": "x"}).status_code == 302
    r = _poll(app, dev["device_code"])
    assert r.status_code == 400 and r.get_json()["error"] == "access_denied", r.get_json()
    assert "ended" in _audit(tmp_path)[-1]["reason"]


def test_an_answer_that_is_neither_allow_nor_deny_is_audited(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    app = _app(keys_dir, tmp_path, idp)
    dev = _start(app)
    client = _logged_in(app)
    r = client.post("/device", data={"code": dev["user_code"], "decision": "maybe", "csrf": "x"})
    assert r.status_code == 400
    assert _audit(tmp_path)[-1]["outcome"] == "refused"
