"""Run a real Keycloak server (org.keycloak:keycloak-quarkus-dist, pinned) for integration tests.

    home = ensure_keycloak()                  # cached distribution, fetched with Maven when absent
    kc = start_keycloak(tmp_path)             # realms tests/keycloak/*.json imported at start
    try:
        cc = kc.client_credentials("svc-portal")["access_token"]
        alice = kc.login_tokens("alice")     # authorization code + PKCE at Keycloak's login form
    finally:
        kc.stop()                             # by pid

The distribution is fetched with ``mvn dependency:copy`` (Maven Central), unpacked under
/var/cache/slurm-jwt-bridge/keycloak-<version> (env SLURM_JWT_BRIDGE_KEYCLOAK_HOME overrides) and
prepared once under a lock: one ``start-dev`` there builds Keycloak's optimized server image
(Quarkus augmentation) for the options below and creates the H2 database schema with a bootstrap
admin in the master realm; that database is kept as a snapshot. Each server then runs from its own
home directory (``bin``/``conf`` copied, ``lib``/``themes``/``providers`` linked to the cache)
with a fresh copy of the snapshot, so servers never share state.

Server: ``kc.sh start-dev`` on 127.0.0.1 with a free HTTP port and a free management port
(health at ``/health/ready``), the realms of tests/keycloak imported with ``--import-realm``.
Users of the realm ``hpc`` log in with the password ``<username lower-cased>-password``; the
confidential clients' secrets are ``<client id>-secret``. Keycloak sets its login cookies
``Secure`` even on http; a browser treats 127.0.0.1 as a secure origin, ``requests`` does not,
so the HTTP flows here clear the flag on the session's cookies before posting.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import requests

try:
    from tests.helpers.oidc import OidcError, _fail, _forms, _pkce
    from tests.helpers.ports import free_port
    from tests.helpers.slurm import CACHE_ROOT, _flock
except ModuleNotFoundError:  # run as a script (scripts/install-system-deps.sh)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.helpers.oidc import OidcError, _fail, _forms, _pkce
    from tests.helpers.ports import free_port
    from tests.helpers.slurm import CACHE_ROOT, _flock

KEYCLOAK_VERSION = "26.7.3"
ARTIFACT = f"org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:zip"
HOME_ENV = "SLURM_JWT_BRIDGE_KEYCLOAK_HOME"
REALM_DIR = Path(__file__).resolve().parents[1] / "keycloak"
REALM = "hpc"
OTHER_REALM = "other"
# The audience the realm's mapper puts in access tokens: the bridge's browser client.
BRIDGE_AUDIENCE = "slurm-jwt-bridge"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "keycloak-admin-password"  # test-only master admin of the cached database
# Build-time options: start-dev rebuilds the server image when they differ from the cached one.
BUILD_OPTIONS = ("--health-enabled=true",)
COMPLETE_MARKER = ".slurm-jwt-bridge-complete"
SNAPSHOT = "h2-snapshot"
# Readiness waits are generous: on a loaded 2-core machine a start takes minutes.
START_TIMEOUT = 900.0
REDIRECT_URI = "http://127.0.0.1/cb"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


class KeycloakStartError(RuntimeError):
    """Keycloak could not be fetched, prepared or started; the message carries the log tail."""


def keycloak_home() -> Path:
    default = CACHE_ROOT / f"keycloak-{KEYCLOAK_VERSION}"
    return Path(os.environ.get(HOME_ENV) or default).absolute()


def java_env() -> dict[str, str]:
    """The environment for kc.sh: a bounded heap, no inherited JAVA_OPTS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KC_", "JAVA_OPTS"))}
    env["JAVA_OPTS_KC_HEAP"] = "-Xms64m -Xmx512m"
    return env


def _complete(home: Path) -> bool:
    return (home / COMPLETE_MARKER).is_file() and (home / SNAPSHOT / "keycloakdb.mv.db").is_file()


def _run(cmd: list[str], log: Path, cwd: Path | None = None, timeout: float = 1800) -> None:
    with open(log, "ab") as fh:
        proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise KeycloakStartError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")


def ensure_keycloak() -> Path:
    """The cached, prepared Keycloak home; fetched and prepared under a lock when absent."""
    home = keycloak_home()
    if _complete(home):
        return home
    for tool in ("mvn", "java", "unzip"):
        if shutil.which(tool) is None:
            raise KeycloakStartError(f"{tool} is not installed (needed to fetch Keycloak)")
    home.parent.mkdir(parents=True, exist_ok=True)
    with _flock(home.parent / f".{home.name}.lock"):
        if _complete(home):
            return home
        build = home.parent / f".{home.name}.build-{os.getpid()}"
        log = home.parent / f".{home.name}.build.log"
        log.write_text("")
        for stale in [home, *home.parent.glob(f".{home.name}.build-*")]:
            if stale.exists():
                shutil.rmtree(stale)
        build.mkdir()
        _run(
            ["mvn", "-B", "-q", "dependency:copy", f"-Dartifact={ARTIFACT}", "-DoutputDirectory=."],
            log,
            cwd=build,
        )
        zip_path = build / f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.zip"
        _run(["unzip", "-q", str(zip_path), "-d", str(build)], log)
        zip_path.unlink()
        unpacked = build / f"keycloak-{KEYCLOAK_VERSION}"
        # The first start-dev builds the server image and creates the database; keep both.
        server = _launch(unpacked, free_port(), free_port(), log, import_realms=False)
        try:
            server.wait_ready()
        finally:
            server.stop()
        (unpacked / "data" / "h2").rename(unpacked / SNAPSHOT)
        shutil.rmtree(unpacked / "data")
        (unpacked / COMPLETE_MARKER).write_text(KEYCLOAK_VERSION + "\n")
        unpacked.rename(home)
        shutil.rmtree(build)
    return home


def session_home(cache: Path, workdir: Path) -> Path:
    """A home of the server's own: its kc.sh resolves kc.home.dir to this directory."""
    home = workdir / "keycloak-home"
    home.mkdir(parents=True)
    shutil.copytree(cache / "bin", home / "bin", symlinks=True)
    shutil.copytree(cache / "conf", home / "conf")
    for shared in ("lib", "themes", "providers"):
        (home / shared).symlink_to(cache / shared)
    shutil.copytree(cache / SNAPSHOT, home / "data" / "h2")
    (home / "data" / "import").mkdir()
    for realm in sorted(REALM_DIR.glob("*.json")):
        shutil.copy(realm, home / "data" / "import" / realm.name)
    return home


class KeycloakServer:
    """One ``kc.sh start-dev`` process (its own process group), stopped by pid."""

    def __init__(self, home: Path, port: int, management_port: int, log_path: Path) -> None:
        self.home = home
        self.port = port
        self.management_port = management_port
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.started = time.monotonic()
        self.ready_after: float | None = None
        self._discovery: dict[str, dict] = {}

    # ------------------------------------------------------------------ process
    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        assert self.proc is not None
        url = f"http://127.0.0.1:{self.management_port}/health/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise KeycloakStartError(
                    f"Keycloak exited {self.proc.returncode} before ready:\n{self.log_tail()}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=5).status_code == 200:
                    self.ready_after = time.monotonic() - self.started
                    return
            time.sleep(0.5)
        raise KeycloakStartError(f"Keycloak not ready after {timeout:.0f}s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _tree(self) -> list[int]:
        """kc.sh and the JVM it runs as its child."""
        pids, i = [self.pid], 0
        while i < len(pids):
            for task in Path(f"/proc/{pids[i]}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    pids += [int(c) for c in task.read_text().split()]
            i += 1
        return pids

    def rss_kib(self) -> int:
        """Resident memory of kc.sh and its JVM in KiB (from /proc)."""
        total = 0
        for pid in self._tree():
            with contextlib.suppress(OSError):
                m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
                total += int(m.group(1)) if m else 0
        return total

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # Our own child (and its process group, which it leads), by pid.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> KeycloakServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ realm endpoints
    def issuer(self, realm: str = REALM) -> str:
        return f"{self.base_url}/realms/{realm}"

    def endpoint(self, name: str, realm: str = REALM) -> str:
        if realm not in self._discovery:
            r = requests.get(self.issuer(realm) + "/.well-known/openid-configuration", timeout=30)
            if r.status_code != 200:
                raise _fail("discovery", r)
            self._discovery[realm] = r.json()
        return self._discovery[realm][name]

    def admin(self) -> Any:
        """python-keycloak's KeycloakAdmin as the master realm's admin, working on ``hpc``."""
        from keycloak import KeycloakAdmin

        return KeycloakAdmin(
            server_url=self.base_url + "/",
            username=ADMIN_USER,
            password=ADMIN_PASSWORD,
            realm_name=REALM,
            user_realm_name="master",
            timeout=60,
        )

    def token(self, client_id: str, data: dict[str, str], realm: str = REALM) -> dict:
        """POST the token endpoint as a client (secret ``<id>-secret``, or public with ``""``)."""
        r = self.token_response(client_id, data, realm)
        if r.status_code != 200:
            raise _fail(f"token ({data.get('grant_type')})", r)
        return r.json()

    def token_response(
        self, client_id: str, data: dict[str, str], realm: str = REALM, secret: str | None = None
    ) -> requests.Response:
        secret = f"{client_id}-secret" if secret is None else secret
        auth = (client_id, secret) if secret else None
        form = dict(data) if secret else {**data, "client_id": client_id}
        return requests.post(
            self.endpoint("token_endpoint", realm), data=form, auth=auth, timeout=60
        )

    # ------------------------------------------------------------------ grants
    def client_credentials(self, client_id: str, realm: str = REALM) -> dict:
        return self.token(client_id, {"grant_type": "client_credentials"}, realm)

    def login_tokens(
        self,
        username: str,
        client_id: str = BRIDGE_AUDIENCE,
        redirect_uri: str | None = None,
        scope: str = "openid",
    ) -> dict:
        """Authorization code + PKCE (S256) through Keycloak's login form over plain HTTP."""
        redirect_uri = redirect_uri or (
            "http://127.0.0.1/auth/callback" if client_id == BRIDGE_AUDIENCE else REDIRECT_URI
        )
        location = self.authorize(username, client_id, redirect_uri, scope)
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        data = {
            "grant_type": "authorization_code",
            "code": q["code"],
            "redirect_uri": redirect_uri,
            "code_verifier": self._verifier,
        }
        return self.token(client_id, data)

    def authorize(self, username: str, client_id: str, redirect_uri: str, scope: str) -> str:
        """Sign ``username`` in at the login form; returns the redirect to the client."""
        verifier, challenge = _pkce()
        self._verifier = verifier
        state = secrets.token_urlsafe(16)
        params = {
            "client_id": client_id,
            "response_type": "code",
            "scope": scope,
            "redirect_uri": redirect_uri,
            "state": state,
            "nonce": secrets.token_urlsafe(16),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        s = requests.Session()
        r = s.get(self.endpoint("authorization_endpoint"), params=params, timeout=60)
        if r.status_code != 200:
            raise _fail("authorization", r)
        form = next((f for f in _forms(r.text) if f["id"] == "kc-form-login"), None)
        if form is None:
            raise OidcError(f"no login form at {r.url.split('?')[0]}")
        for cookie in s.cookies:
            cookie.secure = False
        password = f"{username.lower()}-password"
        r = s.post(
            form["action"].replace("&amp;", "&"),
            data={"username": username, "password": password, "credentialId": ""},
            allow_redirects=False,
            timeout=60,
        )
        location = r.headers.get("Location", "")
        if r.status_code != 302 or not location.startswith(redirect_uri):
            text = re.sub(r"<script.*?</script>|<[^>]+>", " ", r.text, flags=re.S)
            raise OidcError(f"login of {username} refused: {' '.join(text.split())[-300:]}")
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        if q.get("state") != state:
            raise OidcError(f"state mismatch in redirect {q.get('state')!r}")
        return location

    def exchange(self, client_id: str, subject_token: str, **extra: str) -> requests.Response:
        """Keycloak's standard token exchange (V2) requested by ``client_id``."""
        data = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            **extra,
        }
        return self.token_response(client_id, data)

    def device_authorization(self, client_id: str = "bridge-cli", realm: str = REALM) -> dict:
        r = requests.post(
            self.endpoint("device_authorization_endpoint", realm),
            data={"client_id": client_id, "scope": "openid"},
            timeout=60,
        )
        if r.status_code != 200:
            raise _fail("device_authorization", r)
        return r.json()


def kc_command(
    home: Path, port: int, management_port: int, import_realms: bool = True
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of ``kc.sh start-dev`` in ``home`` on 127.0.0.1."""
    cmd = [
        str(home / "bin" / "kc.sh"),
        "start-dev",
        *BUILD_OPTIONS,
        "--http-host=127.0.0.1",
        f"--http-port={port}",
        f"--http-management-port={management_port}",
    ]
    if import_realms:
        cmd.append("--import-realm")
    env = java_env()
    env["KC_BOOTSTRAP_ADMIN_USERNAME"] = ADMIN_USER
    env["KC_BOOTSTRAP_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    return cmd, env


def _launch(
    home: Path, port: int, management_port: int, log: Path, import_realms: bool = True
) -> KeycloakServer:
    server = KeycloakServer(home, port, management_port, log)
    cmd, env = kc_command(home, port, management_port, import_realms)
    with open(log, "ab") as fh:
        server.proc = subprocess.Popen(
            cmd,
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return server


def start_keycloak(workdir: Path) -> KeycloakServer:
    """A fresh Keycloak (cached distribution, fresh database, our realms); caller stops it."""
    cache = ensure_keycloak()
    workdir.mkdir(parents=True, exist_ok=True)
    home = session_home(cache, workdir)
    server = _launch(home, free_port(), free_port(), workdir / "keycloak.log")
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    if "Updating the configuration" in server.log_tail(400):
        server.stop()
        raise KeycloakStartError(
            "Keycloak rebuilt its server image at start: BUILD_OPTIONS differ from the cache's"
        )
    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fetch and prepare the cached Keycloak distribution.")
    p.add_argument("--ensure", action="store_true", help="fetch/prepare it when absent")
    args = p.parse_args(argv)
    if args.ensure:
        print(f"Keycloak {KEYCLOAK_VERSION} ready at {ensure_keycloak()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
