"""``POST /oauth/token`` is answered in front of Flask (web/token_door.py ``TokenFastPath``):

- for every request it answers, the status, headers, JSON and audit line must be the ones the
  Flask view gives (a minted token differs only in its own claims);
- what it gives to Flask (another content type, a body over the limit, a chunked body, the
  device grant) is answered by the view, with the rate-limit headers added;
- it owns the per-address limit of ``POST /oauth/token``: each request is counted once,
  whichever way it is answered, and a request over the limit is refused, audited and counted;
- a body that stops before its ``Content-Length`` gets 408 and nothing is minted."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import KeyRing
from slurm_jwt_bridge.settings import parse_settings
from slurm_jwt_bridge.web.token_door import TokenFastPath
from tests.helpers.proxy_settings import proxy_settings_data
from tests.unit.test_door_refusals_audited import Watch
from tests.unit.test_proxy_auth_request import idp_token

FORM = "application/x-www-form-urlencoded"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


def _app(keys_dir: Path, tmp_path: Path, idp: Any, **rate_limit: Any) -> Any:
    data = proxy_settings_data(keys_dir, tmp_path, idp, None)
    # without limits the view's answers have no X-RateLimit headers to compare
    data["rate_limit"] = {"enabled": bool(rate_limit), **rate_limit}
    return create_app(parse_settings(data))


def _form(**fields: str) -> bytes:
    from urllib.parse import urlencode

    return urlencode(fields).encode()


def _answer(
    wsgi: Any, body: bytes, headers: dict[str, str] | None = None, **env: Any
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": FORM} if headers is None else headers
    environ = EnvironBuilder(
        path="/oauth/token",
        method="POST",
        data=body,
        headers=headers,
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    ).get_environ()
    environ.update(env)
    out, status, hdrs = run_wsgi_app(wsgi, environ, buffered=True)
    names = [name.lower() for name, _ in hdrs.to_wsgi_list()]
    assert len(names) == len(set(names)), hdrs  # no header twice
    return int(status.split()[0]), dict(hdrs.to_wsgi_list()), b"".join(out)


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _without_time(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k not in ("ts", "time", "jti", "exp", "iat")}


@pytest.fixture
def app(keys_dir: Path, tmp_path: Path, idp: Any) -> Any:
    return _app(keys_dir, tmp_path, idp)


def _flask(app: Any) -> Any:
    """The app behind the fast path (Flask, with the JWKS fast path in front)."""
    fast = app.wsgi_app
    assert isinstance(fast, TokenFastPath)
    return fast.app


def _cases(idp: Any) -> dict[str, tuple[bytes, dict[str, str] | None]]:
    good = idp_token(idp)
    head, payload, sig = good.split(".")
    forged = f"{head}.{payload}.{sig[:-4]}AAAA"
    form = {"grant_type": EXCHANGE, "subject_token": good, "subject_token_type": ACCESS}
    return {
        "minted": (_form(**form), None),
        "minted, charset in the content type": (
            _form(**form),
            {"Content-Type": f"{FORM}; charset=utf-8"},
        ),
        "minted, first value of a field wins": (
            _form(**form) + b"&subject_token=x.y.z&grant_type=other",
            None,
        ),
        "minted, a lifetime": (_form(**form, requested_lifetime="120"), None),
        "no grant_type": (_form(subject_token=good), None),
        "another grant": (_form(**{**form, "grant_type": "client_credentials"}), None),
        "device grant with the device page off": (
            _form(grant_type="urn:ietf:params:oauth:grant-type:device_code", device_code="x"),
            None,
        ),
        "no subject_token": (_form(grant_type=EXCHANGE), None),
        "unknown subject_token_type": (_form(**{**form, "subject_token_type": "saml"}), None),
        "unknown requested_token_type": (_form(**form, requested_token_type="saml"), None),
        "actor without its type": (_form(**form, actor_token=good), None),
        "lifetime not a number": (_form(**form, requested_lifetime="soon"), None),
        "lifetime of superscript digits": (_form(**form, requested_lifetime="\u00b9\u00b2"), None),
        "lifetime too large": (_form(**form, requested_lifetime="9" * 400), None),
        "forged signature": (_form(**{**form, "subject_token": forged}), None),
        "not a JWT": (_form(**{**form, "subject_token": "garbage"}), None),
        "unknown alg": (_form(**form, alg="none"), None),
        "body not UTF-8": (b"\xff\xfe=1", None),
        "empty body": (b"", None),
        "JSON, not a form": (json.dumps(form).encode(), {"Content-Type": "application/json"}),
        "no content type": (_form(**form), {}),
        "body over the limit": (b"a=" + b"x" * 70000, None),
    }


def test_answers_and_audit_lines_are_the_flask_views(
    app: Any, idp: Any, tmp_path: Path, keys_dir: Path
) -> None:
    public = KeyRing.load(keys_dir).active.private_key.public_key()
    for name, (body, headers) in _cases(idp).items():
        before = len(_audit(tmp_path))
        ours = _answer(app.wsgi_app, body, headers)
        between = len(_audit(tmp_path))
        flask = _answer(_flask(app), body, headers)
        lines = _audit(tmp_path)
        assert len(lines) - between == between - before, name  # the same audit lines
        assert [_without_time(x) for x in lines[before:between]] == [
            _without_time(x) for x in lines[between:]
        ], name
        assert ours[0] == flask[0], (name, ours, flask)
        if ours[0] != 200:
            assert ours == flask, name
            assert b"eyJ" not in ours[2], name  # no token, not even the one sent
            continue
        # a minted token: the same answer but for the token's own jti, iat and exp
        mine, theirs = json.loads(ours[2]), json.loads(flask[2])
        claims = [
            jwt.decode(x.pop("access_token"), options={"verify_signature": False})
            for x in (mine, theirs)
        ]
        assert mine == theirs, name
        assert [_without_time(c) for c in claims[:1]] == [_without_time(c) for c in claims[1:]]
        assert {k: v for k, v in ours[1].items() if k != "Content-Length"} == {
            k: v for k, v in flask[1].items() if k != "Content-Length"
        }, name
        assert int(ours[1]["Content-Length"]) == len(ours[2])
        assert jwt.decode(json.loads(ours[2])["access_token"], public, algorithms=["RS256"])


def test_everything_else_reaches_flask(app: Any) -> None:
    client = app.test_client()
    assert client.get("/oauth/token").status_code == 405
    assert client.post("/oauth/token/", data={"a": "b"}).status_code == 404
    assert client.get("/healthz").status_code == 200
    assert client.get("/jwks.json").status_code == 200


def test_a_body_that_stops_early_gets_408_and_nothing_is_minted(
    app: Any, idp: Any, tmp_path: Path
) -> None:
    body = _form(grant_type=EXCHANGE, subject_token=idp_token(idp), subject_token_type=ACCESS)
    before = _audit(tmp_path)
    status, headers, out = _answer(
        app.wsgi_app,
        body,
        None,
        **{"wsgi.input": io.BytesIO(body[:-10]), "CONTENT_LENGTH": str(len(body))},
    )
    assert status == 408 and headers["Connection"] == "close", (status, out)
    assert json.loads(out)["error"] == "invalid_request"
    assert _audit(tmp_path) == before  # nothing minted (nor refused: nothing was decided)


class _Failing(io.RawIOBase):
    def read(self, n: int = -1) -> bytes:
        raise TimeoutError("the client stopped sending")


def test_a_read_that_times_out_gets_408(app: Any) -> None:
    status, _, out = _answer(
        app.wsgi_app, b"x=1", None, **{"wsgi.input": _Failing(), "CONTENT_LENGTH": "500"}
    )
    assert status == 408 and json.loads(out)["error"] == "invalid_request"


def _statuses(app: Any, requests: list[tuple[bytes, dict[str, str] | None]]) -> list[tuple]:
    out = []
    for body, headers in requests:
        status, hdrs, _ = _answer(app.wsgi_app, body, headers)
        out.append((status, hdrs.get("X-RateLimit-Remaining")))
    return out


def test_attack_each_request_counts_once_whichever_way_it_is_answered(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    """Answers given to Flask (another content type, a chunked body, over the size limit)
    count against the same per-address limit as those answered in front of it, once each: no
    way around the limit, and no request counted twice."""
    app = _app(keys_dir, tmp_path, idp, per_address="5/minute", per_subject="1000/minute")
    good = _form(grant_type=EXCHANGE, subject_token=idp_token(idp), subject_token_type=ACCESS)
    got = _statuses(
        app,
        [
            (good, None),
            (good, {"Content-Type": "application/json"}),
            (good, {"Content-Type": FORM, "Transfer-Encoding": "chunked"}),
            (b"a=" + b"x" * 70000, None),
            (good, None),
            (good, None),
            (good, {"Content-Type": "text/plain"}),
        ],
    )
    assert got == [
        (200, "4"),
        (400, "3"),
        (got[2][0], "2"),
        (413, "1"),
        (200, "0"),
        (429, "0"),
        (429, "0"),
    ], got


def test_attack_over_the_address_limit_is_refused_audited_and_counted(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    app = _app(keys_dir, tmp_path, idp, per_address="2/minute", per_subject="1000/minute")
    token = idp_token(idp)
    good = _form(grant_type=EXCHANGE, subject_token=token, subject_token_type=ACCESS)
    for _ in range(2):
        status, headers, _ = _answer(app.wsgi_app, good)
        assert status == 200 and headers["X-RateLimit-Limit"] == "2"
        assert int(headers["Retry-After"]) >= 0  # as Flask-Limiter sends it on every answer
    watch = Watch(app, tmp_path)
    status, headers, out = _answer(app.wsgi_app, good)
    assert status == 429, out
    assert json.loads(out) == {
        "error": "rate_limited",
        "error_description": "too many requests: 2 per 1 minute",
    }
    assert headers["Cache-Control"] == "no-store" and headers["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(headers["Retry-After"]) <= 61
    assert headers["X-Content-Type-Options"] == "nosniff"
    new = watch.new_lines()
    assert len(new) == 1, new
    line = new[0]
    assert (line["event"], line["outcome"], line["door"]) == (
        "exchange",
        "refused",
        "token-exchange",
    )
    assert token not in json.dumps(line)
    assert watch.counted() == {("token-exchange", "rate_limited_address"): 1.0}


def test_attack_a_forwarded_address_is_counted_behind_proxy_fix_only(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    """With ``[server] proxy_fix = 1`` the limit counts the address the front proxy saw; without
    it, an X-Forwarded-For from the client changes nothing."""
    good = _form(grant_type=EXCHANGE, subject_token=idp_token(idp), subject_token_type=ACCESS)
    for proxy_fix, expect in ((0, [200, 429]), (1, [200, 200])):
        data = proxy_settings_data(keys_dir, tmp_path, idp, None)
        data["rate_limit"] = {"enabled": True, "per_address": "1/minute"}
        data["server"] = {"proxy_fix": proxy_fix}
        app = create_app(parse_settings(data))
        got = [
            _answer(app.wsgi_app, good, {"Content-Type": FORM, "X-Forwarded-For": addr})[0]
            for addr in ("192.0.2.1", "192.0.2.2")
        ]
        assert got == expect, (proxy_fix, got)
        assert _audit(tmp_path)[-1]["remote_addr"] == ("192.0.2.2" if proxy_fix else "127.0.0.1")


def test_attack_other_spellings_of_the_path_or_method_are_limited_too(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    """Flask routes ``//oauth/token`` (gunicorn turns ``/%2Foauth/token`` into it) and a
    lower-case ``post`` (granian passes it on) to the same view: they go past the fast path to
    Flask, whose limit on the view counts them in the same counter."""
    app = _app(keys_dir, tmp_path, idp, per_address="2/minute", per_subject="1000/minute")
    good = _form(grant_type=EXCHANGE, subject_token=idp_token(idp), subject_token_type=ACCESS)
    spellings = [
        {"PATH_INFO": "//oauth/token"},
        {"PATH_INFO": "///oauth/token"},
        {"REQUEST_METHOD": "post"},
        {"REQUEST_METHOD": "Post"},
    ]
    first = _answer(app.wsgi_app, good)
    second = _answer(app.wsgi_app, good, None, PATH_INFO="//oauth/token")
    assert [first[0], second[0]] == [200, 200], (first, second)
    assert second[1]["X-RateLimit-Remaining"] == "0"  # one counter for both
    for env in spellings:
        status, _, out = _answer(app.wsgi_app, good, None, **env)
        assert status == 429, (env, status, out)
        assert b"access_token" not in out
    assert _answer(app.wsgi_app, good)[0] == 429


def test_a_content_length_of_many_digits_is_answered_as_the_view_does(app: Any, idp: Any) -> None:
    good = _form(grant_type=EXCHANGE, subject_token=idp_token(idp), subject_token_type=ACCESS)
    for length in ("0" * 4301 + str(len(good)), "9" * 4400, "1" * 13):
        env = {"CONTENT_LENGTH": length}
        ours = _answer(app.wsgi_app, good, None, **env)
        flask = _answer(_flask(app), good, None, **env)
        assert ours[0] != 408 and ours[0] == flask[0], (length[:8], ours, flask)


def test_a_bug_outside_the_pipeline_is_a_json_500_as_flask_answers(
    app: Any, idp: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from slurm_jwt_bridge.web import token_door

    def broken(body: bytes) -> dict[str, str]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(token_door, "parse_form", broken)
    good = _form(grant_type=EXCHANGE, subject_token=idp_token(idp), subject_token_type=ACCESS)
    status, headers, out = _answer(app.wsgi_app, good)
    assert status == 500 and headers["Content-Type"] == "application/json"
    assert json.loads(out) == {
        "error": "server_error",
        "error_description": "internal error; see the log",
    }
    assert "a bug" in caplog.text and "a bug" not in out.decode()
