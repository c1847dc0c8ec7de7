"""The proxy's header rules, caches and error mapping, against a recording HTTP upstream.

The real slurmrestd runs in tests/integration/test_proxy_slurm.py; here an upstream that records
what it receives shows exactly which headers cross the proxy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import KeyRing
from slurm_jwt_bridge.minting import mint_slurm_token
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.ports import free_port
from tests.helpers.proxy_settings import proxy_settings_data
from tests.helpers.stub_http import StubServer

# slurmrestd's stand-in (the upstream fixture) sets a cookie, which must never reach the client
UPSTREAM_HEADERS = (("Set-Cookie", "upstream=1"),)


def make_client(keys_dir: Path, tmp_path: Path, idp: Any, upstream_url: str, **proxy: Any) -> Any:
    table = {
        "upstream": upstream_url,
        "read_timeout": 1.0,
        "connect_timeout": 1.0,
        "max_body": 4096,
        **proxy,
    }
    return create_app(
        parse_settings(proxy_settings_data(keys_dir, tmp_path, idp, table))
    ).test_client()


def alice(idp: Any, name: str = "alice") -> str:
    return idp.mint(idp.oidc_claims(sub=name, aud="bridge", preferred_username=name))


def test_client_slurm_headers_never_cross(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> None:
    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    r = client.get(
        "/slurm/v0.0.44/jobs?update_time=1",
        headers={
            "Authorization": f"Bearer {alice(idp)}",
            "X-SLURM-USER-NAME": "root",
            "X-Slurm-User-Token": "forged",
            "x-slurm-anything": "x",
            "Cookie": "sjb_session=secret",
            "Connection": "keep-alive, X-Private",
            "X-Private": "hop",
            "Accept": "application/json",
        },
    )
    assert r.status_code == 200, r.data
    got = upstream.seen[-1]
    assert got.path == "/slurm/v0.0.44/jobs?update_time=1"
    h = {k.lower(): v for k, v in got.headers}
    assert h["x-slurm-user-name"] == "alice"
    claims = jwt.decode(h["x-slurm-user-token"], options={"verify_signature": False})
    assert claims["sun"] == "alice"
    slurm = [k for k in h if k.startswith("x-slurm-")]
    assert sorted(slurm) == ["x-slurm-user-name", "x-slurm-user-token"]
    assert "authorization" not in h and "cookie" not in h and "x-private" not in h
    assert h["accept"] == "application/json"
    assert "set-cookie" not in {k.lower() for k in r.headers.keys()}


def test_bearer_style(keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer) -> None:
    client = make_client(keys_dir, tmp_path, idp, upstream.url, auth_style="bearer")
    client.get(
        "/slurm/v0.0.44/jobs",
        headers={"Authorization": f"Bearer {alice(idp)}", "X-SLURM-USER-NAME": "root"},
    )
    h = {k.lower(): v for k, v in upstream.seen[-1].headers}
    assert h["authorization"].startswith("Bearer ey")
    assert not [k for k in h if k.startswith("x-slurm-")]


def test_one_signature_for_steady_traffic(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> None:
    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    token = alice(idp)
    for _ in range(5):
        assert (
            client.get(
                "/slurm/v0.0.44/jobs", headers={"Authorization": f"Bearer {token}"}
            ).status_code
            == 200
        )
    other = alice(idp)  # a second upstream token for the same user reuses the Slurm token
    assert (
        client.get("/slurm/v0.0.44/jobs", headers={"Authorization": f"Bearer {other}"}).status_code
        == 200
    )
    forwarded = {s.header("X-SLURM-USER-TOKEN") for s in upstream.seen}
    assert len(forwarded) == 1
    audit = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert [a["outcome"] for a in audit] == ["minted"]


def test_raw_slurm_token_refused_unless_passthrough(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> None:
    raw = mint_slurm_token(KeyRing.load(keys_dir), "alice", 600).token
    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    r = client.get("/slurm/v0.0.44/jobs", headers={"Authorization": f"Bearer {raw}"})
    assert r.status_code == 401 and "raw Slurm token" in r.json["error_description"]
    assert upstream.seen == []
    passing = make_client(keys_dir, tmp_path, idp, upstream.url, passthrough_slurm_tokens=True)
    assert (
        passing.get("/slurm/v0.0.44/jobs", headers={"Authorization": f"Bearer {raw}"}).status_code
        == 200
    )
    assert upstream.seen[-1].header("X-SLURM-USER-TOKEN") == raw


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic YTpi"}, 401),
        ({"Authorization": "Bearer not.a.jwt"}, 401),
    ],
)
def test_unauthenticated(
    keys_dir: Path,
    tmp_path: Path,
    idp: Any,
    upstream: StubServer,
    headers: dict[str, str],
    status: int,
) -> None:
    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    r = client.get("/slurm/v0.0.44/jobs", headers=headers)
    assert r.status_code == status and r.json["error"]
    assert upstream.seen == []


def test_denied_user_is_403(keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer) -> None:
    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    r = client.get("/slurm/v0.0.44/jobs", headers={"Authorization": f"Bearer {alice(idp, 'root')}"})
    assert r.status_code == 403 and r.json["error"] == "access_denied"
    assert upstream.seen == []


def test_body_forwarded_and_size_limit(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> None:
    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    auth = {"Authorization": f"Bearer {alice(idp)}"}
    body = json.dumps({"job": {"script": "#!/bin/sh\ntrue\n"}}).encode()
    r = client.post(
        "/slurm/v0.0.44/job/submit", data=body, headers=auth, content_type="application/json"
    )
    assert r.status_code == 200 and upstream.seen[-1].body == body
    r = client.post("/slurm/v0.0.44/job/submit", data=b"x" * 5000, headers=auth)
    assert r.status_code == 413 and r.json["error"] == "invalid_request"


SUBMIT = "/slurm/v0.0.44/job/submit"


def _submit(
    client: Any,
    auth: dict[str, str],
    body: bytes = b"",
    *,
    coding: str | None = None,
    length: int | None = None,
    stream: Any = None,
) -> tuple[int, Any, Any]:
    """(status, headers, JSON) of a POST of ``body`` to job/submit, in the environ gunicorn and
    granian pass (the test client would rebuild CONTENT_LENGTH): with ``coding``, that
    Transfer-Encoding and no CONTENT_LENGTH; ``length``, a declared CONTENT_LENGTH; ``stream``,
    the body's stream in place of ``body``."""
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    env = EnvironBuilder(path=SUBMIT, method="POST", headers=auth, data=body).get_environ()
    env["RAW_URI"] = SUBMIT
    if coding is not None:
        env.pop("CONTENT_LENGTH", None)
        env["HTTP_TRANSFER_ENCODING"] = coding
        env["wsgi.input_terminated"] = True
    if length is not None:
        env["CONTENT_LENGTH"] = str(length)
    if stream is not None:
        env["wsgi.input"] = stream
    out, status, headers = run_wsgi_app(client.application.wsgi_app, env, buffered=True)
    return int(status.split()[0]), headers, json.loads(b"".join(out))


def _audit_lines(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _audit_outcomes(tmp_path: Path) -> list[str]:
    return [line["outcome"] for line in _audit_lines(tmp_path)]


def test_attack_a_chunked_body_over_the_limit_is_refused_audited_and_not_sent(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> None:
    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    auth = {"Authorization": f"Bearer {alice(idp)}"}
    status, _headers, answer = _submit(client, auth, b"x" * 50000, coding="chunked")
    assert status == 413 and answer["error"] == "invalid_request"
    assert "4096 bytes" in answer["error_description"]
    assert upstream.seen == []  # not even the request's start reached slurmrestd
    assert _audit_outcomes(tmp_path) == ["refused"]  # audited; nothing minted
    assert 'door="proxy"' in client.get("/metrics").get_data(as_text=True)
    # within the limit: forwarded whole, with its length
    body = b'{"job": {"script": "#!/bin/sh"}}'
    status, _headers, answer = _submit(client, auth, body, coding="chunked")
    assert status == 200 and upstream.seen[-1].body == body
    assert upstream.seen[-1].header("Content-Length") == str(len(body))


@pytest.mark.parametrize("framing", ["declared", "chunked"])
def test_attack_a_body_that_stops_early_is_408_audited_and_nothing_minted_or_sent(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer, framing: str
) -> None:
    class Stalled:  # the worker's read timeout, as gunicorn_worker.py raises it
        def read(self, *_a: Any) -> bytes:
            raise TimeoutError("timed out")

    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    auth = {"Authorization": f"Bearer {alice(idp)}"}
    if framing == "declared":
        answer = _submit(client, auth, b"x" * 10, length=1000)  # 10 bytes arrive
    else:
        answer = _submit(client, auth, b"x" * 10, coding="chunked", stream=Stalled())
    status, headers, body = answer
    assert status == 408, status
    assert body["error_description"] == "the request body did not arrive in time"
    assert headers.get("Connection") == "close"
    assert upstream.seen == []
    assert _audit_outcomes(tmp_path) == ["refused"]


def test_attack_a_chunk_the_server_cannot_parse_is_an_audited_400_not_a_500(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> None:
    from gunicorn.http.errors import InvalidChunkSize

    class BadChunk:  # gunicorn's body reader on "zz\\r\\n" as a chunk size
        def read(self, *_a: Any) -> bytes:
            raise InvalidChunkSize(b"zz")

    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    auth = {"Authorization": f"Bearer {alice(idp)}"}
    status, _headers, body = _submit(client, auth, coding="chunked", stream=BadChunk())
    assert status == 400, status
    assert "malformed" in body["error_description"]
    assert upstream.seen == [] and _audit_outcomes(tmp_path) == ["refused"]


def test_a_transfer_coding_other_than_chunked_is_refused(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> None:
    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    auth = {"Authorization": f"Bearer {alice(idp)}"}
    status, _headers, body = _submit(client, auth, b"x" * 10, coding="gzip, chunked")
    assert status == 400 and "Transfer-Encoding" in body["error_description"]
    assert upstream.seen == [] and _audit_outcomes(tmp_path) == ["refused"]


def test_slurm_auth_failure_becomes_401(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> None:
    upstream.status = 511
    upstream.body = b'{"errors":[{"error":"Protocol authentication error","error_number":1007}]}'
    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    r = client.get("/slurm/v0.0.44/jobs", headers={"Authorization": f"Bearer {alice(idp)}"})
    assert r.status_code == 401
    assert r.json["error"] == "slurm_token_refused"
    assert "JWKS file is not synced" in r.json["error_description"]
    assert r.json["kid"] == KeyRing.load(keys_dir).active.kid
    # the operator sees it in the audit log too: slurmrestd refused the token the bridge minted
    minted, refused = _audit_lines(tmp_path)
    assert (minted["event"], minted["outcome"]) == ("remint", "minted")
    assert (refused["event"], refused["outcome"]) == ("slurmrestd", "refused")
    assert refused["user"] == "alice" and refused["status"] == 511
    assert (refused["kid"], refused["jti"]) == (minted["kid"], minted["jti"])
    assert refused["door"] == "proxy" and refused["path"] == "/slurm/v0.0.44/jobs"
    assert "token" not in refused and "JWKS" in refused["reason"]
    # other upstream errors pass through untouched
    upstream.status, upstream.body = 404, b'{"errors":[{"error":"not found"}]}'
    r = client.get("/slurm/v0.0.44/job/99", headers={"Authorization": f"Bearer {alice(idp)}"})
    assert r.status_code == 404 and r.data == upstream.body


def test_upstream_down_is_502(keys_dir: Path, tmp_path: Path, idp: Any) -> None:
    client = make_client(keys_dir, tmp_path, idp, f"http://127.0.0.1:{free_port()}")
    r = client.get("/slurm/v0.0.44/jobs", headers={"Authorization": f"Bearer {alice(idp)}"})
    assert r.status_code == 502 and r.json["error"] == "upstream_unavailable"


def test_upstream_slow_is_504(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> None:
    upstream.delay = 3
    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    r = client.get("/slurm/v0.0.44/jobs", headers={"Authorization": f"Bearer {alice(idp)}"})
    assert r.status_code == 504 and r.json["error"] == "upstream_timeout"


def test_small_answers_are_relayed_whole_with_their_length(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> None:
    upstream.body = b'{"jobs": [' + b'{"job_id": 1},' * 100 + b'{"job_id": 2}]}'
    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    r = client.get("/slurm/v0.0.44/jobs", headers={"Authorization": f"Bearer {alice(idp)}"})
    assert r.status_code == 200 and r.data == upstream.body
    assert r.headers["Content-Length"] == str(len(upstream.body))
    assert "Transfer-Encoding" not in r.headers


def test_a_small_answer_cut_short_is_502(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> None:
    upstream.body = b'{"jobs": []}' + b" " * 2000
    upstream.cut_after = 100
    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    r = client.get("/slurm/v0.0.44/jobs", headers={"Authorization": f"Bearer {alice(idp)}"})
    assert r.status_code == 502 and r.json["error"] == "upstream_unavailable"
    assert "cut" in r.json["error_description"]


def test_large_answers_stream_with_their_length_and_a_cut_is_not_hidden(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer
) -> None:
    from slurm_jwt_bridge.web.proxy import WHOLE_BODY, RelayInterrupted

    upstream.body = b"x" * (WHOLE_BODY + 100_000)
    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    headers = {"Authorization": f"Bearer {alice(idp)}"}
    r = client.get("/slurm/v0.0.44/jobs", headers=headers)
    assert r.status_code == 200 and r.data == upstream.body
    assert r.headers["Content-Length"] == str(len(upstream.body))
    upstream.cut_after = WHOLE_BODY // 2
    r = client.get("/slurm/v0.0.44/jobs", headers=headers, buffered=False)
    assert r.status_code == 200  # the status line went out before the body broke off
    with pytest.raises(RelayInterrupted, match="broke off"):
        b"".join(r.response)  # the WSGI server sees the error and drops the connection
    r.close()


@pytest.mark.parametrize(
    ("status", "body", "path"),
    [
        # a job id holding "1007", in an error that is not about the token
        (500, b'{"errors":[{"error":"job 10071 is not pending","error_number":2017}]}', "10071"),
        # slurmrestd echoing a path the client chose
        (401, b'{"errors":[{"error":"no such path /slurm/authentication"}]}', "authentication"),
    ],
)
def test_attack_an_error_that_only_mentions_authentication_is_relayed_as_it_is(
    keys_dir: Path,
    tmp_path: Path,
    idp: Any,
    upstream: StubServer,
    status: int,
    body: bytes,
    path: str,
) -> None:
    """Only slurmrestd's own refusal of the token (511, or errors[] naming slurmctld's
    authentication error) is the proxy's 401 slurm_token_refused: an error whose text merely
    contains "1007" or "authentication" reaches the client as slurmrestd sent it, writes no
    refusal line, and the user's Slurm token stays cached."""
    client = make_client(keys_dir, tmp_path, idp, upstream.url)
    auth = {"Authorization": f"Bearer {alice(idp)}"}
    assert client.get("/slurm/v0.0.44/jobs", headers=auth).status_code == 200
    upstream.status, upstream.body = status, body
    r = client.get(f"/slurm/v0.0.44/job/{path}", headers=auth)
    assert (r.status_code, r.data) == (status, body)
    lines = _audit_lines(tmp_path)
    assert [(a["event"], a["outcome"]) for a in lines] == [("remint", "minted")]
    sent = {s.header("X-SLURM-USER-TOKEN") for s in upstream.seen}
    assert len(sent) == 1  # the same cached token both times
