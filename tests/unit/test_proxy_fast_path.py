"""The proxy's common case is answered in front of Flask (web/proxy_door.py ``ProxyFastPath``):

- for every request, the answer (status, headers, body), the request slurmrestd receives and the
  audit lines are the ones the Flask view gives (a minted Slurm token differs only in its own
  jti, iat and exp);
- it answers only what Flask would route to the proxy view: every path it takes is one
  Flask's own URL map sends to the proxy, and what it leaves (a body, a cookie, another method,
  a raw Slurm token, other credentials) reaches Flask;
- a bug outside the pipeline is the JSON 500 Flask's handler gives.

The upstream is a recording HTTP server (tests/helpers/stub_http.py); the real slurmrestd is in
tests/integration/test_proxy_slurm.py, whose GETs go through this path."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import jwt
from werkzeug.test import EnvironBuilder, run_wsgi_app

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import KeyRing
from slurm_jwt_bridge.minting import mint_slurm_token
from slurm_jwt_bridge.settings import parse_settings
from slurm_jwt_bridge.web import proxy, proxy_door
from slurm_jwt_bridge.web.proxy_door import ProxyFastPath, fast_path_token
from tests.helpers.proxy_settings import proxy_settings_data
from tests.helpers.stub_http import Received, StubServer
from tests.unit.test_proxy_auth_request import idp_token

TIME = ("ts", "time", "jti", "exp", "iat")
JOBS = "/slurm/v0.0.44/jobs"


# slurmrestd's stand-in (the upstream fixture) sets a cookie, which must never reach the client
UPSTREAM_HEADERS = (("Set-Cookie", "upstream=1"),)


def _app(keys_dir: Path, audit_dir: Path, idp: Any, upstream_url: str, **table: Any) -> Any:
    audit_dir.mkdir(exist_ok=True)
    proxy_table = {"upstream": upstream_url, "read_timeout": 2.0, "connect_timeout": 1.0, **table}
    return create_app(parse_settings(proxy_settings_data(keys_dir, audit_dir, idp, proxy_table)))


def _fast_path(app: Any) -> ProxyFastPath:
    layer = app.wsgi_app
    while not isinstance(layer, ProxyFastPath):
        layer = layer.app
    return layer


def _call(
    wsgi: Any, method: str, target: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    path, _, query = target.partition("?")
    environ = EnvironBuilder(
        path=path,
        query_string=query,
        method=method,
        headers=headers,
        data=body,
        environ_base={"REMOTE_ADDR": "10.1.2.3"},
    ).get_environ()
    environ["RAW_URI"] = target  # as gunicorn passes the request target
    out, status, hdrs = run_wsgi_app(wsgi, environ, buffered=True)
    return int(status.split()[0]), hdrs.to_wsgi_list(), b"".join(out)


def _audit(audit_dir: Path) -> list[dict[str, Any]]:
    path = audit_dir / "audit.log"
    if not path.exists():
        return []
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIME} for line in lines]


def _received(seen: Received) -> tuple[str, str, list[tuple[str, str]], dict[str, Any]]:
    """What slurmrestd got, its Slurm token's claims without their time and id."""
    headers, claims = [], {}
    for name, value in seen.headers:
        if name.lower() in ("authorization", "x-slurm-user-token"):
            token = value.removeprefix("Bearer ")
            raw = jwt.decode(token, options={"verify_signature": False})
            claims = {k: v for k, v in raw.items() if k not in TIME}
            value = value.replace(token, "<token>")
        headers.append((name, value))
    return seen.method, seen.path, headers, claims


def _cases(idp: Any, keys_dir: Path) -> dict[str, tuple[str, str, dict[str, str], bytes | None]]:
    good = idp_token(idp)
    head, payload, sig = good.split(".")
    raw_slurm = mint_slurm_token(KeyRing.load(keys_dir), "alice", 600, "RS256").token
    bearer = {"Authorization": f"Bearer {good}"}
    return {
        "proxied": ("GET", JOBS + "?update_time=1", bearer, None),
        "proxied, the client's own Slurm headers dropped": (
            "GET",
            JOBS,
            {**bearer, "X-SLURM-USER-NAME": "root", "X-Slurm-User-Token": "forged", "Te": "x"},
            None,
        ),
        "proxied, Connection names a header to drop": (
            "GET",
            JOBS,
            {**bearer, "Connection": "X-Drop-Me", "X-Drop-Me": "1", "Accept": "*/*"},
            None,
        ),
        "proxied, lower-case scheme": ("GET", JOBS, {"Authorization": f"bearer {good}"}, None),
        "slurmdb prefix": ("GET", "/slurmdb/v0.0.44/jobs", bearer, None),
        "openapi prefix": ("GET", "/openapi/v3", bearer, None),
        "forged signature": (
            "GET",
            JOBS,
            {"Authorization": f"Bearer {head}.{payload}.{sig[:-4]}AAAA"},
            None,
        ),
        "expired": ("GET", JOBS, {"Authorization": f"Bearer {idp_token(idp, ttl=-600)}"}, None),
        "root": ("GET", JOBS, {"Authorization": f"Bearer {idp_token(idp, 'root')}"}, None),
        "not a JWT": ("GET", JOBS, {"Authorization": "Bearer garbage"}, None),
        "a dot segment": ("GET", "/slurm/v0.0.44/../v0.0.44/jobs", bearer, None),
        "an encoded dot segment": ("GET", "/slurm/v0.0.44/%2e%2e/jobs", bearer, None),
        "an encoded slash": ("GET", "/slurm/v0.0.44/jobs%2F..%2F", bearer, None),
        "a fragment": ("GET", JOBS + "#x", bearer, None),
        "an encoded line feed": ("GET", JOBS + "%0Ax", bearer, None),
        "an encoded tab": ("GET", JOBS + "%09x", bearer, None),
        "a raw Slurm token, passthrough off": (
            "GET",
            JOBS,
            {"Authorization": f"Bearer {raw_slurm}"},
            None,
        ),
        "Basic credentials": ("GET", JOBS, {"Authorization": "Basic YWxpY2U6eA=="}, None),
        "no credentials": ("GET", JOBS, {}, None),
        "a cookie beside the token": ("GET", JOBS, {**bearer, "Cookie": "sjb_session=x"}, None),
        "a body": ("POST", "/slurm/v0.0.44/job/submit", bearer, b'{"job": {}}'),
        "HEAD": ("HEAD", JOBS, bearer, None),
        "DELETE": ("DELETE", "/slurm/v0.0.44/job/7", bearer, None),
        "the bare prefix": ("GET", "/slurm/", bearer, None),
        "a Host werkzeug cannot encode": ("GET", JOBS, {**bearer, "Host": ".."}, None),
        "a Host with an empty label": ("GET", JOBS, {**bearer, "Host": "a..example.org"}, None),
        "a Host with a 64-character label": ("GET", JOBS, {**bearer, "Host": "a" * 64}, None),
    }


def test_answers_upstream_requests_and_audit_lines_are_the_flask_views(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> None:
    # two apps alike (each verifies and mints once, its own caches): one answers through the
    # fast path, the other through the Flask view alone
    ours_app = _app(keys_dir, tmp_path / "ours", idp, upstream.url)
    flask_app = _app(keys_dir, tmp_path / "flask", idp, upstream.url)
    ours, flask = ours_app.wsgi_app, _fast_path(flask_app).app
    answered = 0
    for name, (method, target, headers, body) in _cases(idp, keys_dir).items():
        for status_upstream in (200, 404):
            upstream.status = status_upstream
            before = len(upstream.seen)
            mine = _call(ours, method, target, headers, body)
            between = len(upstream.seen)
            theirs = _call(flask, method, target, headers, body)
            assert mine[0] == theirs[0], (name, mine, theirs)
            assert mine == theirs, name
            assert b"eyJ" not in mine[2], name  # no token in any answer
            sent = [_received(x) for x in upstream.seen[before:between]]
            assert sent == [_received(x) for x in upstream.seen[between:]], name
            answered += mine[0] == 200
        assert _audit(tmp_path / "ours") == _audit(tmp_path / "flask"), name
    assert answered >= 5  # the proxied cases did reach slurmrestd's stand-in
    assert _audit(tmp_path / "ours")  # and the refusals were audited


def test_a_token_slurmctld_refuses_is_the_same_401(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> None:
    upstream.status, upstream.body = 500, b'{"errors": [{"error": "Unspecified error"}]}'
    headers = {"Authorization": f"Bearer {idp_token(idp)}"}
    ours_app = _app(keys_dir, tmp_path / "ours", idp, upstream.url)
    flask_app = _app(keys_dir, tmp_path / "flask", idp, upstream.url)
    mine = _call(ours_app.wsgi_app, "GET", JOBS, headers)
    theirs = _call(_fast_path(flask_app).app, "GET", JOBS, headers)
    assert mine[0] == 401 and json.loads(mine[2])["error"] == "slurm_token_refused"
    assert mine == theirs


def _routed_to_proxy(app: Any, environ: dict[str, Any]) -> bool:
    from werkzeug.exceptions import HTTPException
    from werkzeug.routing import RequestRedirect

    adapter = app.url_map.bind_to_environ(environ)
    try:
        endpoint, _ = adapter.match()
    except (HTTPException, RequestRedirect):
        return False
    return str(endpoint).startswith("proxy.")


def test_attack_every_path_it_takes_is_one_flask_routes_to_the_proxy(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> None:
    app = _app(keys_dir, tmp_path / "a", idp, upstream.url)
    bearer = {"Authorization": f"Bearer {idp_token(idp)}"}
    rng = random.Random(24)
    pieces = ["/", "//", "slurm", "slurmdb", "openapi", "v0.0.44", "jobs", ".", "..", "%2e", "a"]
    pieces += ["\n", "\r", "\t", " ", "\x00", "\x7f", "\x0b"]
    paths = ["/slurm", "/slurm/", "/slurm//jobs", "/slurmx/jobs", "/openapi.json", "/slurm/\u00e9"]
    for _ in range(3000):
        start = rng.choice(["/slurm/", "/slurmdb/", "/openapi/", "/slurm", "/"])
        paths.append(start + "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))))
    taken = 0
    for path in paths:
        environ = EnvironBuilder(path="/", headers=bearer).get_environ()
        environ["PATH_INFO"] = path
        if fast_path_token(environ) is not None:
            taken += 1
            assert _routed_to_proxy(app, environ), path
    assert taken > 300


def test_what_it_leaves_reaches_flask(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer, monkeypatch: Any
) -> None:
    app = _app(keys_dir, tmp_path / "a", idp, upstream.url)
    calls: list[str] = []
    forwarded = ProxyFastPath._forwarded

    def spy(self: ProxyFastPath, req: Any, token: str) -> Any:
        calls.append(req.path)
        return forwarded(self, req, token)

    monkeypatch.setattr(ProxyFastPath, "_forwarded", spy)
    cases = _cases(idp, keys_dir)
    taken = {"proxied", "slurmdb prefix", "forged signature", "not a JWT", "a dot segment"}
    left = {
        "a raw Slurm token, passthrough off",
        "Basic credentials",
        "no credentials",
        "a cookie beside the token",
        "a body",
        "HEAD",
        "DELETE",
        "the bare prefix",
    }
    for name in taken | left:
        method, target, headers, body = cases[name]
        calls.clear()
        _call(app.wsgi_app, method, target, headers, body)
        assert bool(calls) == (name in taken), name


def test_a_bug_outside_the_pipeline_is_a_json_500_as_flask_answers(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer, monkeypatch: Any
) -> None:
    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(proxy, "forward", broken)
    monkeypatch.setattr(proxy_door, "forward", broken)
    app = _app(keys_dir, tmp_path / "a", idp, upstream.url)
    headers = {"Authorization": f"Bearer {idp_token(idp)}"}
    mine = _call(app.wsgi_app, "GET", JOBS, headers)
    theirs = _call(_fast_path(app).app, "GET", JOBS, headers)
    assert mine[0] == 500
    assert json.loads(mine[2]) == {
        "error": "server_error",
        "error_description": "internal error; see the log",
    }
    assert mine == theirs
