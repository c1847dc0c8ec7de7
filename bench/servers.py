"""The servers a benchmark runs: the bridge under gunicorn, npm oidc-provider, the local test
issuer (upstream tokens), and a real Slurm cluster (tests/helpers/slurm.py).

Each is started pinned to the layout's server cores and stopped by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import ROOT, Layout, Procs, descendants, free_port, pin, rss_kib, wait_http

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AUDIENCE = "https://bridge.test"
TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"


# ---------------------------------------------------------------- upstream tokens


class Upstream:
    """The local test issuer (tests/helpers/test_issuer.py) serving discovery and JWKS over HTTP,
    and minting RS256 access tokens shaped like oidc-provider's (iss, sub, aud, client_id, scope,
    preferred_username, groups, jti)."""

    def __init__(self) -> None:
        from tests.helpers.test_issuer import TestIssuer

        self.server = TestIssuer().start()
        self.handle = self.server.add_issuer("/realms/bench")

    @property
    def issuer(self) -> str:
        return self.handle.issuer

    def claims(self, user: str, n: int = 0) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.issuer,
            "sub": f"{user}-{n}" if n else user,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 3600,
            "jti": secrets.token_urlsafe(16),
            "client_id": "portal",
            "scope": "openid profile email groups",
            "preferred_username": user,
            "email": f"{user}@example.org",
            "groups": ["hpc-users"],
        }

    def tokens(self, users: list[str]) -> list[str]:
        return [self.handle.mint(self.claims(u)) for u in users]

    def many_tokens(self, users: list[str], count: int) -> list[str]:
        """``count`` distinct tokens (users in turn), signed on every core in parallel."""
        from cryptography.hazmat.primitives import serialization

        pem = self.handle.current.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        kid = self.handle.kid
        jobs = [
            [
                self.claims(users[i % len(users)], i + 1)
                for i in range(start, min(count, start + 2000))
            ]
            for start in range(0, count, 2000)
        ]
        with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
            parts = pool.map(_sign_many, [(pem, kid, j) for j in jobs])
            return [t for part in parts for t in part]

    def stop(self) -> None:
        self.server.stop()


def _sign_many(args: tuple[bytes, str, list[dict[str, Any]]]) -> list[str]:
    import jwt

    pem, kid, claims = args
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem, password=None)
    return [jwt.encode(c, key, algorithm="RS256", headers={"kid": kid}) for c in claims]


def exchange_body(token: str, alg: str | None = None) -> str:
    from urllib.parse import urlencode

    form = {"grant_type": TE, "subject_token": token, "subject_token_type": AT}
    if alg:
        form["alg"] = alg
    return urlencode(form)


# ---------------------------------------------------------------- the bridge


@dataclass
class BridgeConfig:
    workers: int
    threads: int
    audit: str = "file"  # "file" | "none"
    proxy_upstream: str = ""
    proxy_auth_style: str = "bearer"
    proxy_auth_request: bool = False
    local_accounts: bool = False  # [mapping] require_local_account
    extra: str = ""
    server: str = "gunicorn"  # serve --prod --server NAME: gunicorn | granian
    # [rate_limit] on (memory, default per-address limit, per-subject raised) behind one
    # trusted proxy hop (proxy_fix = 1): see scenarios._rate_limited_series
    rate_limits: bool = False

    def describe(self) -> str:
        return (
            f"{self.server}, {self.workers} worker(s) x {self.threads} thread(s), "
            f"audit {self.audit}" + (", rate limits on" if self.rate_limits else "")
        )


@dataclass
class Bridge:
    url: str
    proc: subprocess.Popen
    config_path: Path
    log_path: Path
    cfg: BridgeConfig
    procs: Procs
    _workers: list[int] = field(default_factory=list)

    def pids(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]

    def worker_pids(self) -> list[int]:
        return descendants(self.proc.pid)

    def worker_rss_kib(self) -> list[int]:
        return [r for r in (rss_kib(p) for p in self.worker_pids()) if r is not None]

    def stop(self) -> None:
        self.procs.stop(self.proc, timeout=15)


def bridge_toml(
    workdir: Path, port: int, keys_dir: Path, upstream: Upstream | None, cfg: BridgeConfig
) -> str:
    audit = f"file:{workdir / 'audit.log'}" if cfg.audit == "file" else "none"
    text = f"""
[server]
host = "127.0.0.1"
port = {port}
proxy_fix = {1 if cfg.rate_limits else 0}

[keys]
dir = {json.dumps(str(keys_dir))}

[audit]
destination = {json.dumps(audit)}

[browser]
enabled = false

[rate_limit]
enabled = {json.dumps(cfg.rate_limits)}
per_subject = "100000/minute"

[mapping]
require_local_account = {json.dumps(cfg.local_accounts)}
"""
    if upstream is not None:
        text += f"""
[[issuers]]
name = "idp"
kind = "oidc"
issuer = {json.dumps(upstream.issuer)}
audiences = [{json.dumps(AUDIENCE)}]

[[mapping.rules]]
claim = "preferred_username"
"""
    if cfg.proxy_upstream:
        text += f"""
[proxy]
upstream = {json.dumps(cfg.proxy_upstream)}
auth_style = {json.dumps(cfg.proxy_auth_style)}
auth_request = {json.dumps(cfg.proxy_auth_request)}
"""
    return text + cfg.extra


def start_bridge(
    workdir: Path,
    keys_dir: Path,
    upstream: Upstream | None,
    cfg: BridgeConfig,
    layout: Layout,
    procs: Procs,
) -> Bridge:
    """``slurm-jwt-bridge serve --prod --server S --workers N`` (gunicorn with gunicorn_conf.py,
    or granian with granian_serve.py) with GUNICORN_THREADS, pinned to the layout's server
    cores; waits until every worker answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    name = f"bridge-{cfg.server}-{cfg.workers}x{cfg.threads}-{cfg.audit}-{port}"
    config_path = workdir / f"{name}.toml"
    config_path.write_text(bridge_toml(workdir, port, keys_dir, upstream, cfg))
    metrics_dir = workdir / f"{name}-metrics"
    metrics_dir.mkdir(exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if k != "SLURM_JWT_BRIDGE_CONFIG"},
        "GUNICORN_THREADS": str(cfg.threads),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    exe = Path(sys.executable).parent / "slurm-jwt-bridge"
    argv = [
        *layout.server_prefix(),
        str(exe),
        "serve",
        "--config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--prod",
        "--server",
        cfg.server,
        "--workers",
        str(cfg.workers),
    ]
    log = workdir / f"{name}.log"
    proc = procs.start(name, argv, log, env=env)
    bridge = Bridge(f"http://127.0.0.1:{port}", proc, config_path, log, cfg, procs)
    try:
        wait_http(bridge.url + "/healthz", 60, proc)
        deadline = time.monotonic() + 30
        while len(bridge.worker_pids()) < cfg.workers and time.monotonic() < deadline:
            time.sleep(0.1)
    except Exception:
        bridge.stop()
        raise RuntimeError(f"bridge did not start; log:\n{log.read_text()[-3000:]}") from None
    return bridge


def granian_installed() -> bool:
    """Whether ``serve --prod --server granian`` can run (the ``granian`` extra)."""
    import importlib.util

    return importlib.util.find_spec("granian") is not None


# ---------------------------------------------------------------- npm oidc-provider


@dataclass
class OidcProvider:
    url: str
    issuer: str
    token_endpoint: str
    proc: subprocess.Popen
    procs: Procs

    def pids(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]

    def stop(self) -> None:
        self.procs.stop(self.proc)


def start_oidc_provider(workdir: Path, layout: Layout, procs: Procs) -> OidcProvider:
    """tests/oidc-provider/server.mjs (npm oidc-provider, RS256 JWT access tokens for
    client_credentials), its per-request log line going to a file (not through a Python pipe,
    which would cost the benchmark's own CPU)."""
    from tests.helpers.oidc import DEFAULT_ACCOUNTS, DEFAULT_CLIENTS, SERVER_DIR, SERVER_JS

    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    config = {
        "port": port,
        "host": "127.0.0.1",
        "issuer": issuer,
        "style": "plain",
        "realm": "hpc",
        "clients": DEFAULT_CLIENTS,
        "accounts": DEFAULT_ACCOUNTS,
        "resource": AUDIENCE,
        "ttl": {},
    }
    cfg_path = workdir / f"oidc-provider-{port}.json"
    cfg_path.write_text(json.dumps(config))
    log = workdir / f"oidc-provider-{port}.log"
    proc = procs.start(
        "oidc-provider",
        [*layout.server_prefix(), "node", str(SERVER_JS), str(cfg_path)],
        log,
        cwd=SERVER_DIR,
    )
    deadline = time.monotonic() + 30
    while "READY " not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            procs.stop(proc)
            raise RuntimeError(f"oidc-provider did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return OidcProvider(f"http://127.0.0.1:{port}", issuer, "/token", proc, procs)


# ---------------------------------------------------------------- Keycloak


class KeycloakProcess(OidcProvider):
    """kc.sh forwards SIGTERM to its JVM and waits; the JVM may need longer than 10 s."""

    def stop(self) -> None:
        jvm = descendants(self.proc.pid)
        self.procs.stop(self.proc, timeout=120)
        for pid in jvm:  # only if kc.sh had to be killed before its JVM ended
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def start_keycloak(workdir: Path, layout: Layout, procs: Procs) -> OidcProvider:
    """A real Keycloak (tests/helpers/keycloak.py: the cached pinned distribution, a fresh
    database, the test realms), ``kc.sh start-dev`` pinned like the other servers; the JVM is
    kc.sh's child and inherits the pinning."""
    from tests.helpers.keycloak import (
        KeycloakStartError,
        ensure_keycloak,
        kc_command,
        session_home,
    )

    home = session_home(ensure_keycloak(), workdir)
    port, mport = free_port(), free_port()
    argv, env = kc_command(home, port, mport)
    log = workdir / "keycloak.log"
    proc = procs.start("keycloak", [*layout.server_prefix(), *argv], log, cwd=home, env=env)
    try:
        wait_http(f"http://127.0.0.1:{mport}/health/ready", timeout=900, proc=proc)
    except RuntimeError as exc:
        procs.stop(proc, timeout=60)
        raise KeycloakStartError(f"{exc}\n{log.read_text(errors='replace')[-3000:]}") from None
    issuer = f"http://127.0.0.1:{port}/realms/hpc"
    return KeycloakProcess(
        f"http://127.0.0.1:{port}",
        issuer,
        "/realms/hpc/protocol/openid-connect/token",
        proc,
        procs,
    )


# ---------------------------------------------------------------- nginx


def start_nginx(workdir: Path, http_conf: str, port: int, layout: Layout) -> Any:
    """Debian's nginx (tests/helpers/nginx.py) pinned to the layout's server cores."""
    from tests.helpers.nginx import start_nginx as start

    return start(workdir, http_conf, port, prefix_cmd=layout.server_prefix())


def plain_proxy_conf(port: int, restd_url: str) -> str:
    """nginx as a plain reverse proxy to slurmrestd: keep-alive upstream, an access log line per
    request like the bridge's, no token work at all."""
    from urllib.parse import urlsplit

    up = urlsplit(restd_url)
    return f"""
    upstream restd {{ server {up.hostname}:{up.port}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://restd;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


# ---------------------------------------------------------------- oauth2-proxy


@dataclass
class OAuth2Proxy:
    url: str
    proc: subprocess.Popen
    procs: Procs

    def stop(self) -> None:
        self.procs.stop(self.proc)


def oauth2_proxy_argv(binary: Path, port: int, issuer: str, upstream_url: str) -> list[str]:
    """oauth2-proxy as a site would put it in front of slurmrestd for API clients: bearer JWTs
    from ``issuer`` (audience AUDIENCE) are verified (signature, iss, aud, exp; discovery and JWKS
    fetched from the issuer) and the request, its Authorization header included, goes on to
    slurmrestd; anything else is refused with 403 (no login redirect). No cookies are kept for
    such requests; the cookie secret is required by its configuration and unused here."""
    return [
        str(binary),
        f"--http-address=127.0.0.1:{port}",
        "--provider=oidc",
        f"--oidc-issuer-url={issuer}",
        f"--client-id={AUDIENCE}",
        "--client-secret=unused-no-login-flow",
        f"--cookie-secret={secrets.token_hex(16)}",
        "--email-domain=*",
        "--insecure-oidc-allow-unverified-email=true",
        "--skip-jwt-bearer-tokens=true",
        "--bearer-token-login-fallback=false",
        "--pass-authorization-header=true",
        f"--upstream={upstream_url.rstrip('/')}/",
        "--request-logging=true",
        "--auth-logging=false",
    ]


def start_oauth2_proxy(
    workdir: Path, issuer: str, upstream_url: str, layout: Layout, procs: Procs
) -> OAuth2Proxy:
    """oauth2-proxy (bench/oauth2-proxy, built and cached by tests/helpers/gobuild.py) pinned to
    the layout's server cores, its request log (one line per request, like the bridge's and
    nginx's) going to a file."""
    from tests.helpers.gobuild import build_program

    binary = build_program("bench/oauth2-proxy")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / f"oauth2-proxy-{port}.log"
    argv = [*layout.server_prefix(), *oauth2_proxy_argv(binary, port, issuer, upstream_url)]
    proc = procs.start("oauth2-proxy", argv, log)
    proxy = OAuth2Proxy(f"http://127.0.0.1:{port}", proc, procs)
    try:
        wait_http(proxy.url + "/ping", 30, proc)
    except Exception:
        proxy.stop()
        raise RuntimeError(f"oauth2-proxy did not start; log:\n{log.read_text()[-3000:]}") from None
    return proxy


# ---------------------------------------------------------------- Slurm


def start_slurm(
    version: str, workdir: Path, layout: Layout, upstream: Upstream | None = None
) -> Any:
    """A real cluster trusting a fresh bridge keys dir (tests/helpers/slurm_rest.py), its daemons
    pinned to the layout's server cores. Returns a BridgeCluster (stop() stops it by pid).

    With ``upstream`` (Slurm 23.02+ only) the cluster also trusts that identity provider
    directly, the setup sites build without the bridge: its keys in the jwks= file and
    ``userclaimfield=preferred_username``."""
    from tests.helpers.slurm_rest import start_bridge_cluster

    if upstream is None:
        bc = start_bridge_cluster(version, workdir)
    else:
        bc = start_bridge_cluster(
            version,
            workdir,
            extra_jwks_keys=upstream.handle.jwks()["keys"],
            auth_alt_parameters=("userclaimfield=preferred_username",),
        )
    pin(slurm_pids(bc), layout.server_cpus)
    return bc


def slurm_pids(bc: Any) -> list[int]:
    pids = list(bc.cluster._pids.values())
    return [p for p in pids if os.path.exists(f"/proc/{p}")]


def restd_pids(bc: Any) -> list[int]:
    """slurmrestd and slurmctld: the processes a GET /jobs costs CPU in."""
    return [bc.cluster._pids[n] for n in ("slurmrestd", "slurmctld") if n in bc.cluster._pids]
