"""Generated client headers never steer what the proxy tells slurmrestd.

A client sends any mix of ``X-SLURM-*``, ``Authorization``, ``Proxy-Authorization``, ``Cookie``,
``Forwarded`` and ``Connection`` headers: any case, ``-`` or ``_``, duplicates, padding
whitespace, values such as ``root`` or a real Slurm token for root signed with the bridge's own
key. Whatever it sends, the request either is refused before slurmrestd (a 4xx JSON error, and
the recording upstream sees nothing), or slurmrestd receives exactly the bridge's credentials
for the mapped user and no other:

- ``auth_style = "x-slurm"``: one ``X-SLURM-USER-NAME: alice``, one ``X-SLURM-USER-TOKEN``
  that verifies with the bridge's active key and says ``sun = alice``; no ``Authorization``;
- ``auth_style = "bearer"``: one ``Authorization: Bearer <that token>``; no ``X-SLURM-*``;
- never a ``Cookie``, ``Proxy-Authorization`` or other ``X-SLURM-*`` header, never a value
  the client chose in any of those.

Two transports: the WSGI test client (fast, many examples) and raw bytes on a socket to a real
threaded HTTP server (the server's own header parsing: obs-fold, ``Name :``, tabs).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.serving import make_server

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import KeyRing, init_keys
from slurm_jwt_bridge.minting import mint_slurm_token
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.issuers import bridge_data, oidc_issuer
from tests.helpers.stub_http import StubServer
from tests.helpers.test_issuer import TestIssuer

_ENV_EXAMPLES = int(os.environ.get("SLURM_JWT_BRIDGE_FUZZ_EXAMPLES", "0") or 0)
FUZZ = settings(
    max_examples=_ENV_EXAMPLES or 200,
    deadline=None,
    derandomize=not _ENV_EXAMPLES,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
SOCKET_FUZZ = settings(FUZZ, max_examples=_ENV_EXAMPLES or 60)
USER = "alice"
PATH = "/slurm/v0.0.44/jobs"
STYLES = ("x-slurm", "bearer")


@dataclass
class Env:
    apps: dict[str, Any]
    clients: dict[str, Any]
    servers: dict[str, Any]
    recorder: StubServer
    ring: KeyRing
    idp_token: str
    root_slurm_token: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    keys_dir = tmp_path_factory.mktemp("fuzz-proxy") / "keys"
    init_keys(keys_dir)
    idp = TestIssuer().start()
    oidc = idp.add_issuer("/oidc")
    recorder = StubServer()
    apps, clients, servers = {}, {}, {}
    for style in STYLES:
        data = bridge_data(
            keys_dir,
            [oidc_issuer(oidc)],
            rate_limit={"enabled": False},
            proxy={"upstream": recorder.url, "auth_style": style, "read_timeout": 5.0},
        )
        app = create_app(parse_settings(data))
        apps[style] = app
        clients[style] = app.test_client()
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[style] = server
    ring = KeyRing.load(keys_dir)
    token = oidc.mint(
        {
            **oidc.oidc_claims(sub="s-alice", aud="bridge", preferred_username=USER),
            "exp": oidc.now() + 86400,
        }
    )
    yield Env(
        apps,
        clients,
        servers,
        recorder,
        ring,
        token,
        mint_slurm_token(ring, "root", 600).token,
    )
    for server in servers.values():
        server.shutdown()
    recorder.close()
    idp.stop()


# ---------------------------------------------------------------- the property


def assert_only_bridge_credentials(env: Env, style: str, sent: list[tuple[str, str]]) -> None:
    got = env.recorder.seen[-1].headers
    lower = [(k.lower().strip(), v) for k, v in got]
    # slurmrestd reads X-SLURM-USER-NAME/-TOKEN; "X-Slurm" alone is no X-SLURM-* header.
    slurm = [(k, v) for k, v in lower if k.startswith(("x-slurm-", "x_slurm_"))]
    auth = [v for k, v in lower if k == "authorization"]
    assert not [k for k, _ in lower if k in ("cookie", "proxy-authorization")], got
    if style == "x-slurm":
        assert sorted(k for k, _ in slurm) == ["x-slurm-user-name", "x-slurm-user-token"], got
        assert dict(slurm)["x-slurm-user-name"] == USER
        token = dict(slurm)["x-slurm-user-token"]
        assert auth == [], got
    else:
        assert slurm == [], got
        assert len(auth) == 1 and auth[0].startswith("Bearer "), got
        token = auth[0][len("Bearer ") :]
    assert env.ring.active is not None
    claims = jwt.decode(token, env.ring.active.private_key.public_key(), algorithms=["RS256"])
    assert claims["sun"] == USER
    client_values = {v.strip() for _, v in sent}
    assert token not in client_values and token != env.root_slurm_token


def assert_refused_before_upstream(status: int, body: Any, seen_before: int, env: Env) -> None:
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    assert len(env.recorder.seen) == seen_before, "a refused request reached slurmrestd"


# ---------------------------------------------------------------- strategies

BASE_NAMES = [
    "X-SLURM-USER-NAME",
    "X-SLURM-USER-TOKEN",
    "X-SLURM-USER-ID",
    "X-Slurm-Anything",
    "X-SLURM",
    "Authorization",
    "Proxy-Authorization",
    "Cookie",
    "Forwarded",
    "X-Forwarded-For",
    "Connection",
]


@st.composite
def header_name(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(BASE_NAMES))
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    name = "".join(c.upper() if f else c.lower() for c, f in zip(name, flips, strict=True))
    if draw(st.booleans()):
        name = name.replace("-", "_")
    return name


def header_value(env_tokens: list[str]) -> st.SearchStrategy[str]:
    """A field value as an HTTP server hands it on: no leading or trailing whitespace (the raw
    socket test below sends the padding itself)."""
    return st.one_of(
        st.sampled_from(["root", "slurm", "alice", "ROOT", "0", "", " root ", "root, alice"]),
        st.sampled_from(env_tokens),
        st.sampled_from(env_tokens).map(lambda t: f"Bearer {t}"),
        st.sampled_from(["X-SLURM-USER-NAME", "x-slurm-user-token, Cookie", "close"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
    ).map(lambda v: v.strip() or "x")  # an empty duplicate would end a joined value in ", "


@st.composite
def request_headers(draw: st.DrawFn, env: Env) -> tuple[list[tuple[str, str]], bool]:
    """(headers, whether the one valid Authorization is among them unchanged)."""
    junk_tokens = [env.root_slurm_token, env.idp_token, env.idp_token[:-3] + "AAA"]
    headers = draw(st.lists(st.tuples(header_name(), header_value(junk_tokens)), max_size=8))
    valid = draw(st.integers(0, 9)) > 0
    if valid:
        headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
        auth_name = draw(st.sampled_from(["Authorization", "authorization", "AUTHORIZATION"]))
        scheme = draw(st.sampled_from(["Bearer", "bearer", "BEARER"]))
        pad = draw(st.sampled_from(["", " ", "  "]))
        headers.insert(
            draw(st.integers(0, len(headers))), (auth_name, f"{scheme} {pad}{env.idp_token}")
        )
    return headers, valid


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("style", STYLES)
def test_plain_request_forwards_only_bridge_credentials(env: Env, style: str) -> None:
    """The positive control (and a fixed point of the property)."""
    sent = [("X-SLURM-USER-NAME", "root"), ("X-SLURM-USER-TOKEN", env.root_slurm_token)]
    r = env.clients[style].get(PATH, headers=[("Authorization", f"Bearer {env.idp_token}"), *sent])
    assert r.status_code == 200, r.get_data()
    assert r.json == {"jobs": []}
    assert_only_bridge_credentials(env, style, sent)


@pytest.mark.parametrize("style", STYLES)
@FUZZ
@given(data=st.data())
def test_any_client_headers_wsgi(env: Env, style: str, data: st.DataObject) -> None:
    headers, valid = data.draw(request_headers(env), label="headers")
    before = len(env.recorder.seen)
    r = env.clients[style].get(PATH, headers=headers)
    r.get_data()  # consume the streamed body: that closes the upstream connection
    if r.status_code == 200:
        assert_only_bridge_credentials(env, style, headers)
    else:
        assert_refused_before_upstream(r.status_code, r.get_json(silent=True), before, env)
        # With exactly one valid Authorization the request must go through.
        assert not (valid and sum(k.lower() == "authorization" for k, _ in headers) == 1), (
            r.status_code,
            r.get_data()[:300],
        )


def _raw_request(port: int, lines: list[str]) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
            line + "\r\n" for line in lines
        )
        s.sendall(head.encode("latin-1") + b"Connection: close\r\n\r\n")
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    status = int(raw.split(b" ", 2)[1])
    return status, raw.split(b"\r\n\r\n", 1)[-1]


@st.composite
def raw_header_lines(draw: st.DrawFn, env: Env) -> list[str]:
    headers, _valid = draw(request_headers(env))
    lines = []
    for name, value in headers:
        sep = draw(st.sampled_from([": ", ":", ":\t", " : "]))
        lines.append(f"{name}{sep}{value}")
        if draw(st.integers(0, 7)) == 0:
            lines.append(draw(st.sampled_from([" folded", "\tX-SLURM-USER-NAME: root"])))
    return lines


@pytest.mark.parametrize("style", STYLES)
@SOCKET_FUZZ
@given(data=st.data())
def test_any_client_header_bytes_real_server(env: Env, style: str, data: st.DataObject) -> None:
    import json

    lines = data.draw(raw_header_lines(env), label="lines")
    before = len(env.recorder.seen)
    status, body = _raw_request(env.servers[style].port, lines)
    if status == 200:
        sent = [(ln.split(":", 1)[0], ln.split(":", 1)[-1]) for ln in lines]
        assert_only_bridge_credentials(env, style, sent)
    else:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if status == 400 and parsed is None:
            # The HTTP server itself refused the bytes (malformed request): never forwarded.
            assert len(env.recorder.seen) == before
            return
        assert_refused_before_upstream(status, parsed, before, env)
