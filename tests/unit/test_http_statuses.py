"""docs/http.md's table of token-endpoint refusals, walked: every documented (status, error)
is produced through the Flask test client at /oauth/token or /api/v1/token, and every pair
the walk produces is documented. Each refusal carries ``Cache-Control: no-store``. The reverse
proxy's table, the statuses of ``GET /proxy/auth`` and the rows of "Keys and operations" (JWKS,
health, readiness, metrics) are walked the same way.

slurmrestd's answers (511, slow, closed port) come from a stub upstream here; the proxy against
real slurmrestd runs in tests/integration/test_proxy_slurm.py.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import KeyRing
from slurm_jwt_bridge.minting import mint_slurm_token
from slurm_jwt_bridge.settings import parse_settings
from slurm_jwt_bridge.web.device import _device_key
from tests.helpers.login_session import login_grant, login_issuer
from tests.helpers.sessions import plant_session
from tests.helpers.slurm import free_port
from tests.helpers.stub_http import StubServer
from tests.helpers.test_issuer import forge

DOC = Path(__file__).resolve().parents[2] / "docs" / "http.md"
TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"


def status_table(after: str = "") -> set[tuple[int, str]]:
    """The (status, error) rows of the first status table of docs/http.md after the line
    ``after`` (the top one: token-endpoint refusals)."""
    text = DOC.read_text().split(after, 1)[1] if after else DOC.read_text()
    table = text.split("| status | `error` | when |", 1)[1].split("\n\n", 1)[0]
    return {(int(s), e) for s, e in re.findall(r"^\| (\d{3}) \| `(\w+)` \|", table, re.M)}


def assert_walk_covers(documented: set[tuple[int, str]], walked: set[tuple[int, str]]) -> None:
    assert len(documented) >= 8, documented  # the table is still found
    assert walked == documented, (
        f"documented, no producer: {sorted(documented - walked)}; "
        f"produced, undocumented: {sorted(walked - documented)}"
    )


def _app(tmp_path: Path, idp: Any, **extra: Any) -> Any:
    data: dict[str, Any] = {
        "keys": {"dir": str(tmp_path / "keys")},
        "audit": {"destination": "none"},
        "browser": {"enabled": False},
        "issuers": [
            {
                "name": "oidc",
                "kind": "oidc",
                "issuer": idp.issuer,
                "audiences": ["bridge"],
                "token_use": ["access"],
            }
        ],
        "mapping": {"require_local_account": False, "rules": [{"claim": "preferred_username"}]},
        "rate_limit": {"enabled": False},
    }
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return create_app(parse_settings(data, tmp_path))


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    from click.testing import CliRunner

    from slurm_jwt_bridge.cli import main

    r = CliRunner().invoke(main, ["keys", "init", "--keys-dir", str(tmp_path / "keys")])
    assert r.exit_code == 0, r.output
    return tmp_path / "keys"


def _user(idp: Any, name: str = "alice") -> str:
    """A new token each time (a token already verified is cached and not counted again)."""
    claims = idp.oidc_claims(aud="bridge", preferred_username=name, jti=secrets.token_hex(8))
    return str(idp.mint(claims))


def _exchange(client: Any, token: str, **extra: str) -> Any:
    form = {"grant_type": TE, "subject_token": token, "subject_token_type": AT, **extra}
    return client.post("/oauth/token", data=form)


Producer = Callable[[Path, Any], Any]


def _invalid_request(tmp: Path, idp: Any) -> Any:
    return _app(tmp, idp).test_client().post("/oauth/token", data={"grant_type": TE})


def _unsupported_grant_type(tmp: Path, idp: Any) -> Any:
    return _app(tmp, idp).test_client().post("/oauth/token", data={"grant_type": "password"})


def _invalid_grant(tmp: Path, idp: Any) -> Any:
    token = forge({"alg": "none"}, idp.oidc_claims(aud="bridge", preferred_username="alice"))
    return _exchange(_app(tmp, idp).test_client(), token)


def _unauthorized_client(tmp: Path, idp: Any) -> Any:
    client = _app(tmp, idp).test_client()
    return _exchange(client, _user(idp), actor_token=_user(idp, "bob"), actor_token_type=AT)


def _no_bearer(tmp: Path, idp: Any) -> Any:
    return _app(tmp, idp).test_client().post("/api/v1/token", json={})


def _root(tmp: Path, idp: Any) -> Any:
    return _exchange(_app(tmp, idp).test_client(), _user(idp, "root"))


def _too_large(tmp: Path, idp: Any) -> Any:
    return _exchange(_app(tmp, idp).test_client(), "x" * (65 * 1024))


def _rate_limited(tmp: Path, idp: Any) -> Any:
    client = _app(tmp, idp, rate_limit={"enabled": True, "per_address": "1/minute"}).test_client()
    _exchange(client, _user(idp))
    return _exchange(client, _user(idp))


def _lookup_cannot_start(tmp: Path, idp: Any) -> Any:
    rule = {"claim": "preferred_username", "command": [str(tmp / "no-such-command")]}
    client = _app(tmp, idp, mapping={"rules": [rule]}).test_client()
    return _exchange(client, _user(idp))


def _issuer_down(tmp: Path, idp: Any) -> Any:
    token = _user(idp)
    idp.mode = "down"  # before the bridge starts: it never has the issuer's keys
    return _exchange(_app(tmp, idp).test_client(), token)


PRODUCERS: dict[tuple[int, str], Producer] = {
    (400, "invalid_request"): _invalid_request,
    (400, "unsupported_grant_type"): _unsupported_grant_type,
    (400, "invalid_grant"): _invalid_grant,
    (400, "unauthorized_client"): _unauthorized_client,
    (401, "invalid_request"): _no_bearer,
    (403, "access_denied"): _root,
    (413, "invalid_request"): _too_large,
    (429, "rate_limited"): _rate_limited,
    (500, "server_error"): _lookup_cannot_start,
    (503, "temporarily_unavailable"): _issuer_down,
}


def test_the_walk_covers_the_documented_table() -> None:
    assert_walk_covers(status_table(), set(PRODUCERS))


@pytest.mark.parametrize("row", sorted(PRODUCERS), ids=lambda r: f"{r[0]}-{r[1]}")
def test_each_documented_refusal_is_produced(
    tmp_path: Path, idp: Any, keys: Path, row: tuple[int, str]
) -> None:
    r = PRODUCERS[row](tmp_path, idp)
    assert (r.status_code, (r.get_json(silent=True) or {}).get("error")) == row, r.get_data(
        as_text=True
    )[:300]
    assert r.headers.get("Cache-Control") == "no-store", dict(r.headers)


# ---------------------------------------------------------------- keys and operations


def operations_table() -> dict[str, set[int]]:
    """path -> the statuses its row of "Keys and operations" names (200 for every path)."""
    text = DOC.read_text().split("## Keys and operations", 1)[1].split("\n\n", 2)[1]
    rows: dict[str, set[int]] = {}
    for line in text.splitlines()[2:]:
        paths, _, meaning = line.partition(" | ")
        statuses = {200} | {int(n) for n in re.findall(r"`(\d{3})\b", meaning)}
        for path in re.findall(r"`GET (/[\w./-]*)`", paths):
            rows[path] = statuses
    return rows


def _operations(tmp: Path, idp: Any) -> dict[str, set[int]]:
    produced: dict[str, set[int]] = {}
    client = _app(tmp, idp).test_client()
    for path in ("/.well-known/jwks.json", "/jwks.json"):
        r = client.get(path)
        r2 = client.get(path, headers={"If-None-Match": r.headers["ETag"]})
        produced[path] = {r.status_code, r2.status_code}
    produced["/healthz"] = {client.get("/healthz").status_code}
    outside = {"REMOTE_ADDR": "192.0.2.7"}  # not in [server] internal_allow
    produced["/metrics"] = {
        client.get("/metrics").status_code,
        client.get("/metrics", environ_base=outside).status_code,
    }
    client.post(  # the issuer's keys are fetched by the first token they verify
        "/oauth/token",
        data={"grant_type": TE, "subject_token": _user(idp), "subject_token_type": AT},
    )
    ready = client.get("/readyz").status_code
    idp.mode = "down"  # a bridge that cannot fetch its issuer's keys is not ready
    produced["/readyz"] = {ready, _app(tmp, idp).test_client().get("/readyz").status_code}
    return produced


def test_keys_and_operations_statuses_are_the_documented_ones(
    tmp_path: Path, idp: Any, keys: Path
) -> None:
    documented = operations_table()
    assert set(documented) >= {"/jwks.json", "/healthz", "/readyz", "/metrics"}, documented
    assert _operations(tmp_path, idp) == documented


# ---------------------------------------------------------------- reverse proxy, /proxy/auth

JOBS = "/slurm/v0.0.44/jobs"


def auth_request_statuses() -> set[int]:
    """The statuses the ``GET /proxy/auth`` section names in bold."""
    section = DOC.read_text().split("### `GET /proxy/auth`", 1)[1].split("\n## ", 1)[0]
    return {int(s) for s in re.findall(r"\*\*(\d{3})\*\*", section)}


@pytest.fixture
def upstream() -> Iterator[StubServer]:
    u = StubServer(b'{"jobs": []}')
    yield u
    u.close()


def _proxy(tmp: Path, idp: Any, upstream: StubServer, **extra: Any) -> Any:
    proxy = {
        "upstream": upstream.url,
        "read_timeout": 1.0,
        "connect_timeout": 1.0,
        "max_body": 4096,
        "auth_request": True,
        **extra.pop("proxy", {}),
    }
    return _app(tmp, idp, proxy=proxy, **extra).test_client()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _short_lived(idp: Any) -> str:
    claims = idp.oidc_claims(aud="bridge", preferred_username="alice")
    return str(idp.mint({**claims, "exp": int(time.time()) + 30}))


Door = Callable[[Path, Any, StubServer], Any]


def _slurm_refused(tmp: Path, idp: Any, up: StubServer) -> Any:
    up.status, up.body = 511, b'{"errors":[{"error":"Protocol authentication error"}]}'
    return _proxy(tmp, idp, up).get(JOBS, headers=_bearer(_user(idp)))


def _bad_path(tmp: Path, idp: Any, up: StubServer) -> Any:
    return _proxy(tmp, idp, up).get("/slurm/v0.0.44/%2e%2e/jobs", headers=_bearer(_user(idp)))


def _raw_slurm_token(tmp: Path, idp: Any, up: StubServer) -> Any:
    raw = mint_slurm_token(KeyRing.load(tmp / "keys"), "alice", 600).token
    return _proxy(tmp, idp, up).get(JOBS, headers=_bearer(raw))


def _expires_too_soon(tmp: Path, idp: Any, up: StubServer) -> Any:
    return _proxy(tmp, idp, up).get(JOBS, headers=_bearer(_short_lived(idp)))


def _proxy_root(tmp: Path, idp: Any, up: StubServer) -> Any:
    return _proxy(tmp, idp, up).get(JOBS, headers=_bearer(_user(idp, "root")))


def _body_stopped(tmp: Path, idp: Any, up: StubServer) -> Any:
    """What the worker's read timeout leaves (gunicorn_worker.py): a body shorter than its
    Content-Length."""
    return _proxy(tmp, idp, up).post(
        "/slurm/v0.0.44/job/submit",
        input_stream=io.BytesIO(b"{"),
        environ_overrides={"CONTENT_LENGTH": "100"},
        headers=_bearer(_user(idp)),
    )


def _no_credentials(tmp: Path, idp: Any, up: StubServer) -> Any:
    return _proxy(tmp, idp, up).get(JOBS)


def _proxy_too_large(tmp: Path, idp: Any, up: StubServer) -> Any:
    return _proxy(tmp, idp, up).post(
        "/slurm/v0.0.44/job/submit", data=b"x" * 5000, headers=_bearer(_user(idp))
    )


def _proxy_rate_limited(tmp: Path, idp: Any, up: StubServer) -> Any:
    client = _proxy(tmp, idp, up, rate_limit={"enabled": True, "per_subject": "1/minute"})
    client.get(JOBS, headers=_bearer(_user(idp)))
    return client.get(JOBS, headers=_bearer(_user(idp)))


def _proxy_lookup_cannot_start(tmp: Path, idp: Any, up: StubServer) -> Any:
    rule = {"claim": "preferred_username", "command": [str(tmp / "no-such-command")]}
    return _proxy(tmp, idp, up, mapping={"rules": [rule]}).get(JOBS, headers=_bearer(_user(idp)))


def _upstream_down(tmp: Path, idp: Any, up: StubServer) -> Any:
    client = _app(tmp, idp, proxy={"upstream": f"http://127.0.0.1:{free_port()}"}).test_client()
    return client.get(JOBS, headers=_bearer(_user(idp)))


def _proxy_issuer_down(tmp: Path, idp: Any, up: StubServer) -> Any:
    token = _user(idp)
    idp.mode = "down"  # before the bridge starts: it never has the issuer's keys
    return _proxy(tmp, idp, up).get(JOBS, headers=_bearer(token))


def _upstream_slow(tmp: Path, idp: Any, up: StubServer) -> Any:
    up.delay = 3  # read_timeout is 1 s
    return _proxy(tmp, idp, up).get(JOBS, headers=_bearer(_user(idp)))


PROXY: dict[tuple[int, str], Door] = {
    (401, "slurm_token_refused"): _slurm_refused,
    (400, "invalid_request"): _bad_path,
    (401, "invalid_token"): _raw_slurm_token,
    (401, "invalid_grant"): _expires_too_soon,
    (403, "access_denied"): _proxy_root,
    (408, "invalid_request"): _body_stopped,
    (401, "invalid_request"): _no_credentials,
    (413, "invalid_request"): _proxy_too_large,
    (429, "rate_limited"): _proxy_rate_limited,
    (500, "server_error"): _proxy_lookup_cannot_start,
    (502, "upstream_unavailable"): _upstream_down,
    (503, "temporarily_unavailable"): _proxy_issuer_down,
    (504, "upstream_timeout"): _upstream_slow,
}


def test_the_proxy_walk_covers_the_documented_table() -> None:
    assert_walk_covers(status_table("## Reverse proxy"), set(PROXY))


@pytest.mark.parametrize("row", sorted(PROXY), ids=lambda r: f"{r[0]}-{r[1]}")
def test_each_documented_proxy_refusal_is_produced(
    tmp_path: Path, idp: Any, keys: Path, upstream: StubServer, row: tuple[int, str]
) -> None:
    r = PROXY[row](tmp_path, idp, upstream)
    assert (r.status_code, (r.get_json(silent=True) or {}).get("error")) == row, r.get_data(
        as_text=True
    )[:300]


AUTH = "/proxy/auth"


def _auth(client: Any, token: str | None = None, **headers: str) -> Any:
    return client.get(AUTH, headers={**(_bearer(token) if token else {}), **headers})


def _auth_statuses(tmp: Path, idp: Any, up: StubServer) -> dict[int, set[str | None]]:
    """Every answer /proxy/auth gives in this walk: status -> the errors seen with it."""
    answers = []
    client = _proxy(tmp, idp, up)
    answers.append(_auth(client, _user(idp)))  # 200
    answers.append(_auth(client))  # 401, no credentials
    answers.append(_auth(client, _short_lived(idp)))  # 401 invalid_grant
    answers.append(_auth(client, _user(idp, "root")))  # 403 access_denied
    answers.append(_auth(client, _user(idp), **{"X-Original-URI": "/slurm/%2e%2e/x"}))  # 403
    stranger = client.get(
        AUTH, headers=_bearer(_user(idp)), environ_base={"REMOTE_ADDR": "192.0.2.7"}
    )
    answers.append(stranger)  # 403, not in auth_request_allow_from
    limited = _proxy(tmp, idp, up, rate_limit={"enabled": True, "per_subject": "1/minute"})
    _auth(limited, _user(idp, "bob"))
    answers.append(_auth(limited, _user(idp, "bob")))  # 429
    rule = {"claim": "preferred_username", "command": [str(tmp / "no-such-command")]}
    answers.append(_auth(_proxy(tmp, idp, up, mapping={"rules": [rule]}), _user(idp)))  # 500
    token = _user(idp)
    idp.mode = "down"  # before the bridge starts: it never has the issuer's keys
    answers.append(_auth(_proxy(tmp, idp, up), token))  # 503
    seen: dict[int, set[str | None]] = {}
    for r in answers:
        seen.setdefault(r.status_code, set()).add((r.get_json(silent=True) or {}).get("error"))
    return seen


def test_proxy_auth_statuses_are_the_documented_ones(
    tmp_path: Path, idp: Any, keys: Path, upstream: StubServer
) -> None:
    documented = auth_request_statuses()
    assert len(documented) >= 5, documented
    seen = _auth_statuses(tmp_path, idp, upstream)
    assert set(seen) == documented, seen
    assert seen[403] == {"access_denied", "invalid_request"}, seen
    assert seen[429] == {"rate_limited"} and seen[500] == {"server_error"}, seen
    assert seen[503] == {"temporarily_unavailable"}, seen


# ---------------------------------------------------------------- browser and device pages

PUBLIC = "https://bridge.example.org"


def page_statuses(after: str) -> set[int]:
    """The statuses of the first ``| status | page | when |`` table after the line ``after``."""
    text = DOC.read_text().split(after, 1)[1]
    table = text.split("| status | page | when |", 1)[1].split("\n\n", 1)[0]
    return {int(s) for s in re.findall(r"^\| (\d{3}) \|", table, re.M)}


def _browser(tmp: Path, idp: Any, **extra: Any) -> Any:
    return _app(
        tmp,
        idp,
        issuers=[login_issuer(idp.issuer)],
        server={"public_url": PUBLIC},
        browser={"enabled": True, "secure_cookies": False, **extra.pop("browser", {})},
        **extra,
    ).test_client()


def _logged_in(client: Any, **grant: Any) -> Any:
    plant_session(client, grant=login_grant(**grant), ends=int(time.time()) + 3600, csrf="x")
    return client


def _callback(client: Any, idp: Any, token_endpoint: StubServer, user: str = "alice") -> Any:
    """A login through /login and /auth/callback; the provider's token endpoint answers an ID
    token for ``user`` carrying the login's nonce."""
    start = parse_qs(urlsplit(client.get("/login").headers["Location"]).query)
    claims = idp.oidc_claims(aud="bridge", preferred_username=user, nonce=start["nonce"][0])
    answer = {"access_token": "opaque", "token_type": "Bearer", "id_token": idp.mint(claims)}
    token_endpoint.body = json.dumps(answer).encode()
    return client.get(f"/auth/callback?code=c&state={start['state'][0]}")


def _browser_statuses(tmp: Path, idp: Any, up: StubServer) -> dict[int, Any]:
    idp.extra_discovery = {"token_endpoint": up.url + "/token"}
    seen: dict[int, Any] = {}

    def saw(r: Any) -> None:
        seen.setdefault(r.status_code, r)

    saw(_logged_in(_browser(tmp, idp)).post("/token", data={"csrf": "forged"}))  # 400
    saw(_logged_in(_browser(tmp, idp), not_after=1).post("/token", data={"csrf": "x"}))  # 401
    saw(_callback(_browser(tmp, idp), idp, up, "root"))  # 403
    saw(_browser(tmp, idp).get("/login?issuer=nope"))  # 404
    limited = _browser(tmp, idp, rate_limit={"enabled": True, "per_address": "1/minute"})
    limited.get("/login")
    saw(limited.get("/login"))  # 429
    rule = {"claim": "preferred_username", "command": [str(tmp / "no-such-command")]}
    saw(_callback(_browser(tmp, idp, mapping={"rules": [rule]}), idp, up))  # 500
    closed = StubServer()
    closed.close()  # the token endpoint cannot be reached
    idp.extra_discovery = {"token_endpoint": closed.url + "/token"}
    client = _browser(tmp, idp)
    start = parse_qs(urlsplit(client.get("/login").headers["Location"]).query)
    saw(client.get(f"/auth/callback?code=c&state={start['state'][0]}"))  # 502
    idp.mode = "down"
    saw(_browser(tmp, idp).get("/login"))  # 503
    return seen


def test_browser_page_statuses_are_the_documented_ones(
    tmp_path: Path, idp: Any, keys: Path, upstream: StubServer
) -> None:
    documented = page_statuses("## Browser")
    assert len(documented) >= 6, documented
    seen = _browser_statuses(tmp_path, idp, upstream)
    assert set(seen) == documented, {s: r.get_data(as_text=True)[:200] for s, r in seen.items()}
    assert seen[429].json["error"] == "rate_limited"


def _device_statuses(tmp: Path, idp: Any, monkeypatch: pytest.MonkeyPatch) -> set[int]:
    seen = set()
    client = _logged_in(_browser(tmp, idp))
    seen.add(client.get("/device?code=BCDF-GHJK").status_code)  # 400: no login waits for it
    code = client.post("/oauth/device_authorization", data={"client_id": "cli"}).json
    allow = {"code": code["user_code"], "decision": "allow", "csrf": "x"}
    assert client.post("/device", data=allow).status_code == 200
    seen.add(client.post("/device", data=allow).status_code)  # 409
    off = _browser(tmp, idp, browser={"device_login": False})
    seen.add(off.get("/device").status_code)  # 404
    seen.add(off.post("/oauth/device_authorization").status_code)
    locked = _logged_in(_browser(tmp, idp, browser={"device_max_attempts": 1}))
    locked.get("/device?code=BCDF-GHJK")
    seen.add(locked.get("/device?code=BCDF-GHJK").status_code)  # 429
    import slurm_jwt_bridge.web.device as device

    monkeypatch.setattr(device.secrets, "choice", lambda alphabet: alphabet[0])
    clash = _browser(tmp, idp)
    clash.post("/oauth/device_authorization", data={"client_id": "cli"})
    seen.add(clash.post("/oauth/device_authorization", data={"client_id": "cli"}).status_code)
    return seen


def test_device_page_statuses_are_the_documented_ones(
    tmp_path: Path, idp: Any, keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    documented = page_statuses("The device page and its endpoint:")
    assert _device_statuses(tmp_path, idp, monkeypatch) == documented


# ---------------------------------------------------------------- the device-code grant

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def device_grant_errors() -> set[tuple[int, str]]:
    """The (status, error) pairs the device-code grant's paragraph names."""
    text = DOC.read_text().split("answers the device-code grant", 1)[1].split("\n\n", 1)[0]
    return {(int(s), e) for s, e in re.findall(r"(\d{3}) `(\w+)`", text)}


def _device_grant_errors(tmp: Path, idp: Any) -> set[tuple[int, str]]:
    client = _logged_in(_browser(tmp, idp, browser={"device_poll_interval": 1}))
    store = client.application.extensions["slurm_jwt_bridge_device_store"]
    seen = set()

    def start() -> dict[str, Any]:
        return dict(client.post("/oauth/device_authorization", data={"client_id": "cli"}).json)

    def poll(dev: dict[str, Any]) -> None:
        form = {"grant_type": DEVICE_GRANT, "device_code": dev["device_code"]}
        r = client.post("/oauth/token", data=form)
        seen.add((r.status_code, r.json["error"]))

    dev = start()
    time.sleep(1.1)  # device_poll_interval = 1: a poll that keeps the interval
    poll(dev)  # authorization_pending
    poll(dev)  # slow_down: polled again at once
    poll({"device_code": "no-such-code"})  # invalid_grant
    denied = start()
    client.post("/device", data={"code": denied["user_code"], "decision": "deny", "csrf": "x"})
    poll(denied)  # access_denied
    expired = start()
    store.update(_device_key(expired["device_code"]), lambda rec: ({**rec, "expires": 1}, None))
    poll(expired)  # expired_token
    return seen


def test_device_grant_errors_are_the_documented_ones(tmp_path: Path, idp: Any, keys: Path) -> None:
    documented = device_grant_errors()
    assert len(documented) >= 4, documented
    assert _device_grant_errors(tmp_path, idp) == documented


def cli_login_statuses() -> set[int]:
    """The statuses the ``GET /api/v1/cli-login`` section names (200 is the answer)."""
    text = DOC.read_text().split("### `GET /api/v1/cli-login`", 1)[1].split("\n### ", 1)[0]
    return {200} | {int(s) for s in re.findall(r"\b(\d{3})\b", text)}


def test_cli_login_statuses_are_the_documented_ones(tmp_path: Path, idp: Any, keys: Path) -> None:
    seen = set()
    for device_login in (True, False):
        off = {"browser": {"device_login": device_login}}
        seen.add(_browser(tmp_path, idp, **off).get("/api/v1/cli-login").status_code)
    cli = {"cli_login": {"issuer": "oidc", "client_id": "cli"}, "browser": {"device_login": False}}
    idp.mode = "down"  # before the bridge starts: it never has the discovery document
    r = _browser(tmp_path, idp, **cli).get("/api/v1/cli-login")
    assert r.json["error"] == "temporarily_unavailable", r.json
    seen.add(r.status_code)
    assert seen == cli_login_statuses()


# ---------------------------------------------------------------- rate-limit storage down


def _storage_down() -> dict[str, Any]:
    """[rate_limit] on a Redis nobody listens on: every count fails."""
    return {"enabled": True, "storage_uri": f"redis://127.0.0.1:{free_port()}"}


def test_the_rate_limit_storage_down_answer_is_documented_per_door(
    tmp_path: Path, idp: Any, keys: Path, upstream: StubServer
) -> None:
    """Each door that counts requests answers the storage outage with a status its own table
    documents (a 503 ``temporarily_unavailable``), never a bare 500."""
    down = _storage_down()
    api = _app(tmp_path, idp, rate_limit=down).test_client()
    answers = {
        "token": [
            _exchange(api, _user(idp)),
            api.post("/api/v1/token", headers=_bearer(_user(idp))),
        ],
        "proxy": [
            _proxy(tmp_path, idp, upstream, rate_limit=down).get(JOBS, headers=_bearer(_user(idp)))
        ],
        "auth": [_auth(_proxy(tmp_path, idp, upstream, rate_limit=down), _user(idp))],
        "browser": [_browser(tmp_path, idp, rate_limit=down).get("/login")],
        "device": [
            _browser(tmp_path, idp, rate_limit=down).post("/oauth/device_authorization"),
            _logged_in(_browser(tmp_path, idp, rate_limit=down)).get("/device"),
        ],
    }
    for door, rs in answers.items():
        for r in rs:
            assert r.status_code == 503, (door, r.get_data(as_text=True)[:300])
            assert r.json["error"] == "temporarily_unavailable", (door, r.json)
            assert int(r.headers["Retry-After"]) >= 1, (door, dict(r.headers))
    assert (503, "temporarily_unavailable") in status_table()
    assert (503, "temporarily_unavailable") in status_table("## Reverse proxy")
    assert 503 in auth_request_statuses()
    assert 503 in page_statuses("## Browser")
    assert 503 in page_statuses("The device page and its endpoint:")
    text = DOC.read_text()
    assert text.count("`[rate_limit] storage_uri` cannot be reached") >= 3, "rows name the cause"
