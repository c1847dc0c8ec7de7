"""Faults around the service, seen through its HTTP doors (not only the verifier):

- the identity provider's JWKS endpoint down, refusing, slow, answering garbage or a huge or
  deeply nested document: cached keys keep working inside ``jwks_stale_window``, then tokens
  are refused with a reason (503 ``temporarily_unavailable``), ``/readyz`` says so, and no
  request waits past ``http_timeout``; a refresh in progress never holds up requests that still
  have usable keys (tests/unit/test_upstream.py covers the verifier alone);
- slurmrestd down or slow: 502/504 within the proxy timeouts while health, token exchange and
  other proxied requests keep answering;
- key files missing, unreadable, too open, corrupt: ``slurm-jwt-bridge serve`` (the real
  command) exits 1 with one line on stderr; after start, a broken keys directory keeps the last
  good ring (JWKS and minting unchanged) and ``/readyz`` shows the reload error.

The service runs in a thread (werkzeug's threaded server) so requests are concurrent; time for
the JWKS cache comes from a clock the test moves, never from sleeping. Waits are bounded by
client timeouts (a hang fails the test; nothing asserts how fast an answer came).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from werkzeug.serving import make_server

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import KeyRing, init_keys, rotate_keys
from slurm_jwt_bridge.settings import parse_settings
from slurm_jwt_bridge.upstream import UpstreamVerifier
from tests.helpers.ports import free_port
from tests.helpers.stub_http import StubServer
from tests.helpers.test_issuer import TestIssuer

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
HTTP_TIMEOUT = 2.0  # the issuer's http_timeout in these tests
BOUND = HTTP_TIMEOUT + 15  # a client that waits longer than this has found a hang
CLI = str(Path(sys.executable).parent / "slurm-jwt-bridge")


class Clock:
    """Time for the JWKS cache and the test issuer's tokens; moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


class Served:
    """The Flask app behind a real threaded HTTP server on 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def bridge(self) -> Any:
        return self.app.extensions["slurm_jwt_bridge"]

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=BOUND, **kw)

    def exchange(self, token: str) -> requests.Response:
        form = {"grant_type": TE, "subject_token": token, "subject_token_type": AT}
        return requests.post(self.url + "/oauth/token", data=form, timeout=BOUND)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def settings_data(
    keys_dir: Path, handle: Any, issuer_extra: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "keys": {"dir": str(keys_dir), "reload_interval": 0},
        "audit": {"destination": "none"},
        "browser": {"enabled": False},
        "rate_limit": {"enabled": False},
        "issuers": [
            {
                "name": "idp",
                "kind": "oidc",
                "issuer": handle.issuer,
                "audiences": ["bridge"],
                "http_timeout": HTTP_TIMEOUT,
                **(issuer_extra or {}),
            }
        ],
        "mapping": {"require_local_account": False, "rules": [{"claim": "preferred_username"}]},
    }
    data.update(extra)
    return data


def user_token(idp: Any, name: str = "alice") -> str:
    return idp.mint(idp.oidc_claims(sub=f"s-{name}", aud="bridge", preferred_username=name))


def in_thread(func: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``func`` in a thread; its result (or exception) lands in the returned list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(func())
        except Exception as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def wait_for(what: str, cond: Callable[[], bool], timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# ================================================================ the IdP's JWKS


@dataclass
class IdpEnv:
    served: Served
    idp: Any
    clock: Clock


@pytest.fixture
def idp_env(keys_dir: Path) -> Iterator[IdpEnv]:
    clock = Clock()
    server = TestIssuer(clock=clock).start()
    idp = server.add_issuer("/idp")
    settings = parse_settings(settings_data(keys_dir, idp))
    app = create_app(settings)
    bridge = app.extensions["slurm_jwt_bridge"]
    metrics = app.extensions["slurm_jwt_bridge_metrics"]
    # Same verifier, but on the test's clock (Pipeline.verifier is the public seam).
    bridge.pipeline.verifier = UpstreamVerifier(
        settings.issuers, clock=clock, on_fetch=metrics.jwks_fetch
    )
    served = Served(app)
    yield IdpEnv(served, idp, clock)
    served.close()
    server.stop()


TTL = 300  # JWKS refresh age with the default jwks_stale_window (3600 s): min(300, 3600 / 2)
STALE_WINDOW = 3600
REFETCH = 60
FAULTS = {
    "down": "HTTP 503",
    "refused": "Error",  # the connection closes without an answer (RemoteProtocolError)
    "garbage": "not JSON",
    "huge": "larger than",
    "huge_stream": "larger than",
    "slow": "Timeout",
}


@pytest.mark.parametrize("mode", list(FAULTS))
def test_jwks_outage_stale_window_then_refusal_then_recovery(idp_env: IdpEnv, mode: str) -> None:
    s, idp, clock = idp_env.served, idp_env.idp, idp_env.clock
    idp.slow_seconds = HTTP_TIMEOUT + 20  # longer than the bridge waits
    r = s.exchange(user_token(idp))
    assert r.status_code == 200, r.text
    ready = s.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["issuers"]["idp"]["stale"] is False

    idp.mode = mode
    clock.advance(TTL + 1)  # keys due for refresh; the refresh fails
    r = s.exchange(user_token(idp, "bob"))
    assert r.status_code == 200, r.text  # cached keys, inside the stale window
    ready = s.get("/readyz")
    detail = ready.json()["checks"]["issuers"]["idp"]
    assert ready.status_code == 200, ready.json()
    assert detail["stale"] is True and detail["usable"] is True
    assert FAULTS[mode] in detail["last_error"], detail

    clock.advance(STALE_WINDOW)  # past the stale window
    r = s.exchange(user_token(idp, "carol"))
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == "temporarily_unavailable" and "access_token" not in body
    assert "stale window" in body["error_description"] and "'idp'" in body["error_description"]
    assert FAULTS[mode] in body["error_description"]
    ready = s.get("/readyz")
    assert ready.status_code == 503 and ready.json()["ready"] is False
    assert ready.json()["checks"]["issuers"]["idp"]["usable"] is False
    assert s.get("/healthz").status_code == 200  # alive, just not ready

    idp.mode = "ok"
    clock.advance(REFETCH + 1)  # the next attempt is due
    r = s.exchange(user_token(idp, "dave"))
    assert r.status_code == 200, r.text
    ready = s.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["issuers"]["idp"]["stale"] is False
    metrics = s.get("/metrics").text
    assert 'slurm_jwt_bridge_upstream_jwks_fetches_total{issuer="idp",outcome="error"}' in metrics


def test_first_fetch_failing_refuses_with_a_reason(keys_dir: Path) -> None:
    """No keys ever fetched (IdP down at start): 503 naming the cause, not ready, no hang."""
    clock = Clock()
    server = TestIssuer(clock=clock).start()
    idp = server.add_issuer("/idp")
    idp.mode = "down"
    served = Served(create_app(parse_settings(settings_data(keys_dir, idp))))
    try:
        r = served.exchange(user_token(idp))
        assert r.status_code == 503, r.text
        assert "could not be fetched" in r.json()["error_description"]
        assert "HTTP 503" in r.json()["error_description"]
        ready = served.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["issuers"]["idp"]["jwks_present"] is False
    finally:
        served.close()
        server.stop()


def test_slow_refresh_does_not_hold_up_requests_with_usable_keys(idp_env: IdpEnv) -> None:
    """One request pays for the slow refresh (at most http_timeout); the others, with keys
    inside the stale window, answer while it is still waiting."""
    s, idp, clock = idp_env.served, idp_env.idp, idp_env.clock
    assert s.exchange(user_token(idp)).status_code == 200
    idp.mode, idp.slow_seconds = "slow", HTTP_TIMEOUT + 20
    clock.advance(TTL + 1)
    fetches = idp.jwks_requests
    slow, slow_out = in_thread(lambda: s.exchange(user_token(idp, "bob")))
    wait_for("the refresh to reach the IdP", lambda: idp.jwks_requests > fetches)
    for name in ("carol", "dave", "erin"):
        r = s.exchange(user_token(idp, name))
        assert r.status_code == 200, r.text
    assert s.get("/healthz").status_code == 200
    assert slow.is_alive(), "the refresh finished before the other requests: nothing was shown"
    slow.join(BOUND)
    assert not slow.is_alive(), "a request waited past http_timeout"
    assert isinstance(slow_out[0], requests.Response), slow_out
    assert slow_out[0].status_code == 200, slow_out[0].text  # stale keys still usable


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # RecursionError in json.loads was a 500 (fixed in issuer_documents.py _get_json).
        (b"[" * 200_000 + b"]" * 200_000, "not JSON"),
        (b'{"keys": []}', "no usable asymmetric signing key"),
        (b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no usable asymmetric signing key"),
        (b"[1, 2]", "not a JSON object"),
    ],
)
def test_unusable_jwks_documents_are_refusals_with_a_reason(
    keys_dir: Path, body: bytes, reason: str
) -> None:
    server = TestIssuer().start()
    idp = server.add_issuer("/idp")
    doc = StubServer(body)
    data = settings_data(keys_dir, idp, {"jwks_uri": doc.url + "/jwks"})
    served = Served(create_app(parse_settings(data)))
    try:
        r = served.exchange(user_token(idp))
        assert r.status_code == 503, r.text
        assert reason in r.json()["error_description"]
        ready = served.get("/readyz")
        assert ready.status_code == 503 and reason in json.dumps(ready.json())
    finally:
        served.close()
        doc.close()
        server.stop()


def test_jwks_sync_refuses_a_deeply_nested_document_with_one_line(tmp_path: Path) -> None:
    """The controller side: a hostile or broken JWKS URL leaves the jwks= file untouched."""
    doc = StubServer(b"[" * 200_000 + b"]" * 200_000)
    out = tmp_path / "jwks.json"
    out.write_text('{"keys": []}\n')
    try:
        proc = subprocess.run(
            [CLI, "jwks", "sync", "--url", doc.url + "/jwks", "--out", str(out), "--allow-http"],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    finally:
        doc.close()
    assert_one_line_refusal(proc, "not JSON")
    assert out.read_text() == '{"keys": []}\n'


# ================================================================ slurmrestd


class Slurmrestd:
    """A stub slurmrestd: paths containing 'slow' wait for ``release`` (or 60 s)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                if "slow" in self.path:
                    outer.arrived.set()
                    outer.release.wait(60)
                body = b'{"jobs":[]}'
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the proxy gave up on us: that is the point

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def proxy_app(keys_dir: Path, idp: Any, upstream: str) -> Served:
    proxy = {"upstream": upstream, "read_timeout": 2.0, "connect_timeout": 2.0, "pool_size": 4}
    return Served(create_app(parse_settings(settings_data(keys_dir, idp, proxy=proxy))))


@pytest.fixture
def idp() -> Iterator[Any]:
    server = TestIssuer().start()
    yield server.add_issuer("/idp")
    server.stop()


def test_slow_slurmrestd_is_504_and_nothing_else_waits(keys_dir: Path, idp: Any) -> None:
    restd = Slurmrestd()
    served = proxy_app(keys_dir, idp, restd.url)
    auth = {"Authorization": f"Bearer {user_token(idp)}"}
    try:
        slow, slow_out = in_thread(lambda: served.get("/slurm/v0.0.44/job/slow", headers=auth))
        assert restd.arrived.wait(BOUND), "the proxied request never reached slurmrestd"
        # While it hangs: health, a token exchange and another proxied request answer.
        assert served.get("/healthz").status_code == 200
        assert served.exchange(user_token(idp, "bob")).status_code == 200
        fast = served.get("/slurm/v0.0.44/jobs", headers=auth)
        assert fast.status_code == 200 and fast.json() == {"jobs": []}
        assert slow.is_alive(), "the slow request ended before the others were tried"
        slow.join(BOUND)
        assert not slow.is_alive(), "the proxy waited past read_timeout"
        r = slow_out[0]
        assert isinstance(r, requests.Response), r
        assert r.status_code == 504 and r.json()["error"] == "upstream_timeout", r.text
        restd.release.set()
        # The pool is not poisoned by the abandoned connection.
        assert served.get("/slurm/v0.0.44/jobs", headers=auth).status_code == 200
    finally:
        served.close()
        restd.close()


def test_slurmrestd_down_is_502_and_the_rest_answers(keys_dir: Path, idp: Any) -> None:
    served = proxy_app(keys_dir, idp, f"http://127.0.0.1:{free_port()}")
    auth = {"Authorization": f"Bearer {user_token(idp)}"}
    try:
        threads = [
            in_thread(lambda: served.get("/slurm/v0.0.44/jobs", headers=auth)) for _ in range(6)
        ]
        assert served.get("/healthz").status_code == 200
        assert served.exchange(user_token(idp, "bob")).status_code == 200
        for t, out in threads:
            t.join(BOUND)
            assert not t.is_alive()
            assert out[0].status_code == 502, out[0].text
            assert out[0].json()["error"] == "upstream_unavailable"
    finally:
        served.close()


# ================================================================ key files at start


def _serve(config: Path, *, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*(prefix or []), CLI, "serve", "--config", str(config), "--port", str(free_port())]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_JWT_BRIDGE")}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL
    )


def _config(path: Path, keys_dir: Path) -> Path:
    path.write_text(
        f'[keys]\ndir = "{keys_dir}"\n[audit]\ndestination = "none"\n[browser]\nenabled = false\n'
    )
    path.chmod(0o644)
    return path


def _active_pem(keys_dir: Path) -> Path:
    ring = KeyRing.load(keys_dir)
    assert ring.active is not None
    return keys_dir / f"rs256-{ring.active.kid}.pem"


def _break(keys_dir: Path, how: str) -> str:
    """Break the keys directory ``how``; return a fragment the one-line error must contain."""
    pem = _active_pem(keys_dir)
    if how == "dir_missing":
        shutil.rmtree(keys_dir)
        return "keys directory does not exist"
    if how == "active_key_missing":
        pem.unlink()
        return f"{pem.name}: key file is missing"
    if how == "active_key_corrupt":
        pem.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
        return f"{pem.name}: not a PEM private key"
    if how == "active_key_group_readable":
        pem.chmod(0o640)
        return f"{pem.name}: mode 0640 lets group/other access a private key"
    if how == "active_key_of_another_kid":
        other = _active_pem(keys_dir).with_name("other.pem")
        init_keys(keys_dir.parent / "other")
        shutil.copy(_active_pem(keys_dir.parent / "other"), other)
        other.replace(pem)
        return "key does not match its kid"
    if how == "ring_json_garbage":
        (keys_dir / "ring.json").write_text("{not json")
        return "ring.json: unreadable key ring metadata"
    if how == "ring_json_two_active":
        ring = json.loads((keys_dir / "ring.json").read_text())
        for entry in ring["keys"]:
            entry["state"] = "active"
        (keys_dir / "ring.json").write_text(json.dumps(ring))
        return "more than one active or next key"
    if how == "hs256_too_short":
        hs = keys_dir / "jwt_hs256.key"
        hs.write_bytes(b"short")
        hs.chmod(0o600)
        return "HS256 key has 5 bytes"
    if how == "hs256_world_readable":
        (keys_dir / "jwt_hs256.key").chmod(0o644)
        return "jwt_hs256.key: mode 0644"
    raise AssertionError(how)


BREAKAGES = [
    "dir_missing",
    "active_key_missing",
    "active_key_corrupt",
    "active_key_group_readable",
    "active_key_of_another_kid",
    "ring_json_garbage",
    "ring_json_two_active",
    "hs256_too_short",
    "hs256_world_readable",
]


def assert_one_line_refusal(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "", proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("slurm-jwt-bridge: error: "), lines[0]
    assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize("how", BREAKAGES)
def test_serve_refuses_to_start_with_one_line(tmp_path: Path, how: str) -> None:
    keys_dir = tmp_path / "keys"
    init_keys(keys_dir)
    fragment = _break(keys_dir, how)
    assert_one_line_refusal(_serve(_config(tmp_path / "bridge.toml", keys_dir)), fragment)


def test_serve_prod_refuses_before_gunicorn_starts(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    init_keys(keys_dir)
    fragment = _break(keys_dir, "active_key_corrupt")
    config = _config(tmp_path / "bridge.toml", keys_dir)
    argv = [CLI, "serve", "--prod", "--workers", "1", "--config", str(config)]
    proc = subprocess.run(
        [*argv, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert_one_line_refusal(proc, fragment)


def test_serve_refuses_an_unreadable_key_file(tmp_path: Path) -> None:
    """Mode 000. Root reads any file through CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so as root
    the service runs with those two capabilities dropped (setpriv), like an unprivileged
    account (the packaged interpreter lives under /root, so runuser -u nobody cannot run it)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: root would read a mode 000 file")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
    keys_dir = tmp_path / "keys"
    init_keys(keys_dir)
    pem = _active_pem(keys_dir)
    pem.chmod(0)
    assert stat.S_IMODE(pem.stat().st_mode) == 0
    proc = _serve(_config(tmp_path / "bridge.toml", keys_dir), prefix=prefix)
    assert_one_line_refusal(proc, f"{pem.name}: cannot read key file: Permission denied")


# ================================================================ key files at runtime


@pytest.mark.parametrize(
    "how",
    [
        "active_key_corrupt",
        "active_key_missing",
        "active_key_group_readable_rewritten",
        "active_key_chmod_only",
        "ring_json_garbage",
        "hs256_too_short",
    ],
)
def test_failed_reload_keeps_the_last_good_ring(
    tmp_path: Path, keys_dir: Path, idp: Any, how: str
) -> None:
    served = Served(create_app(parse_settings(settings_data(keys_dir, idp))))
    try:
        before = KeyRing.load(keys_dir)
        assert before.active is not None
        public = before.active.private_key.public_key()
        jwks_before = served.get("/.well-known/jwks.json")
        assert jwks_before.status_code == 200
        assert served.get("/readyz").json()["checks"]["keys"]["reload_error"] is None
        backup = tmp_path / "backup"
        shutil.copytree(keys_dir, backup)

        if how == "active_key_group_readable_rewritten":
            # chmod alone does not change mtime/size; a rewrite with the wrong mode does.
            pem = _active_pem(keys_dir)
            data = pem.read_bytes()
            pem.unlink()
            pem.write_bytes(data)
            pem.chmod(0o644)
            fragment = "lets group/other access a private key"
        elif how == "active_key_chmod_only":
            # Only the inode's ctime changes: the reload must notice it all the same.
            _active_pem(keys_dir).chmod(0o640)
            fragment = "mode 0640 lets group/other access a private key"
        else:
            fragment = _break(keys_dir, how).split(": ", 1)[-1]

        jwks = served.get("/.well-known/jwks.json")
        assert jwks.status_code == 200 and jwks.content == jwks_before.content
        r = served.exchange(user_token(idp))
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        assert jwt.get_unverified_header(token)["kid"] == before.active.kid
        assert jwt.decode(token, public, algorithms=["RS256"])["sun"] == "alice"
        # Still minting with the last good ring, but not ready: the ring on disk is not the
        # one in service, so an orchestrator must not route to (or roll out) this state.
        ready = served.get("/readyz")
        assert ready.status_code == 503, ready.json()
        assert "slurm_jwt_bridge_key_reload_failures_total" in served.get("/metrics").text
        error = ready.json()["checks"]["keys"]["reload_error"]
        assert error and fragment in error, (fragment, error)
        assert ready.json()["checks"]["keys"]["active_kid"] == before.active.kid

        # Repaired, then rotated: the service follows again and the error clears.
        shutil.rmtree(keys_dir)
        shutil.copytree(backup, keys_dir)
        rotate_keys(keys_dir, 3600, 300)
        after = KeyRing.load(keys_dir)
        assert after.active is not None and after.active.kid != before.active.kid
        r = served.exchange(user_token(idp, "bob"))
        assert r.status_code == 200
        assert jwt.get_unverified_header(r.json()["access_token"])["kid"] == after.active.kid
        ready = served.get("/readyz").json()
        assert ready["checks"]["keys"]["reload_error"] is None
        kids = {k["kid"] for k in served.get("/.well-known/jwks.json").json()["keys"]}
        assert after.active.kid in kids and before.active.kid in kids  # retired, still published
    finally:
        served.close()
