"""Terminal login (device grant), service accounts and delegation, end to end: a real OpenID
provider (npm oidc-provider), the bridge as its own process, the real ``slurm-jwt-bridge login``
command, Chromium playing the user, and real Slurm 26.05 judging every minted token.

One provider and one bridge serve the whole module. What is proven:
- ``slurm-jwt-bridge login`` prints where to log in and the code on stderr; once the user
  confirms the code and signs in (Chromium), it prints ``SLURM_JWT=<token>`` (``--export``:
  ``export SLURM_JWT=<token>``) and slurmrestd 26.05 accepts that token for alice;
- a listed service's client-credentials token becomes a token for its configured local account,
  which slurmrestd accepts; an unlisted service gets unauthorized_client and no token;
- a listed delegation actor exchanges alice's token for a Slurm token for alice; an unlisted
  actor gets unauthorized_client; requested_subject "root" is refused (403) even for the
  listed actor, while requested_subject "alice" works.
"""

from __future__ import annotations

import contextlib
import queue
import re
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import requests

from tests.helpers.browser import (
    TIMEOUT_MS,
    bridge_toml,
    chromium,
    idp_sign_in,
    jwt_claims,
    require_node,
    reserved_port,
    start_bridge_at,
    toml_list,
    toml_str,
)
from tests.helpers.browser import Site as SiteOf
from tests.helpers.oidc import OidcProvider, start_oidc_provider
from tests.helpers.slurm import ensure_test_users
from tests.helpers.slurm_rest import BridgeCluster, bridge_env, bridge_executable, get_jobs

pytestmark = [pytest.mark.oidc, pytest.mark.slurm]

SERVICE_ACCOUNT = "svcportal"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT_RE = r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"
LOGIN_TIMEOUT = 60.0


Site = SiteOf[OidcProvider]


def _config(prov: OidcProvider, keys_dir: Path, port: int) -> str:
    sections = f"""
[[issuers]]
name = "op"
kind = "oidc"
issuer = {toml_str(prov.issuer)}
audiences = {toml_list([prov.resource])}
token_use = ["access"]

[cli_login]
issuer = "op"
client_id = "bridge-cli"
scopes = ["openid", "profile", "email", "groups"]
resource = {toml_str(prov.resource)}

[[service_accounts]]
issuer = "op"
client_id = "svc-portal"
account = "{SERVICE_ACCOUNT}"

[[delegation.actors]]
issuer = "op"
client_id = "svc-portal"
allow_requested_subject = true
subject_regex = "[a-z]+"
"""
    return bridge_toml(port, keys_dir, sections, browser=None, public_url=False)


@pytest.fixture(scope="module")
def site(slurm_2605: BridgeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_node()
    # The service account is a real local account, on the host (the bridge's policy looks it
    # up) and in the chroot whose slurmctld resolves it.
    ensure_test_users([SERVICE_ACCOUNT], chroot=slurm_2605.cluster.chroot)
    work = tmp_path_factory.mktemp("device-service")
    with contextlib.ExitStack() as stack:
        prov = start_oidc_provider(work / "op")
        stack.callback(prov.stop)
        port = stack.enter_context(reserved_port())
        server = start_bridge_at(work / "bridge", port, _config(prov, slurm_2605.keys_dir, port))
        stack.callback(server.stop)
        yield Site(prov, server, slurm_2605)


def _exchange(site: Site, **form: str) -> requests.Response:
    data = {"grant_type": TOKEN_EXCHANGE, **form}
    return requests.post(site.url + "/oauth/token", data=data, timeout=30)


def _assert_accepted(site: Site, token: str, user: str) -> None:
    assert jwt_claims(token)["sun"] == user
    r = get_jobs(site.slurm.cluster, token, user)
    assert r.status_code == 200, f"slurmrestd: {r.status_code} {r.text[:500]}"


def _refused(r: requests.Response, status: int, error: str) -> None:
    assert r.status_code == status, f"{r.status_code} {r.text[:500]}"
    body = r.json()
    assert body["error"] == error, body
    assert "access_token" not in body


# ------------------------------------------------------------------ device grant


class _LoginCommand:
    """``slurm-jwt-bridge login`` as a child process; stderr is read line by line."""

    def __init__(self, url: str, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [bridge_executable(), "login", "--url", url, "--interval", "1", *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=bridge_env(),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        assert self.proc.stderr is not None
        self._pump = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._pump.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.stderr.append(line)
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, prefix: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no stderr line {prefix!r}; got {''.join(self.stderr)!r}")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    raise AssertionError(
                        f"login exited {self.proc.returncode} before {prefix!r}: "
                        f"{''.join(self.stderr)!r}"
                    ) from None
                continue
            if line.startswith(prefix):
                return line[len(prefix) :]

    def prompt(self) -> tuple[str, str]:
        """(the URL to open, the code to check) as printed on stderr."""
        where = self.wait_line("To log in, open ")
        code = self.wait_line("and check that the code shown is: ")
        return where, code

    def finish(self, timeout: float = LOGIN_TIMEOUT) -> str:
        """Wait for the command; returns its stdout (it must exit 0)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"login still running after {timeout}s: {self.stderr}") from None
        self._pump.join(5)
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}: {''.join(self.stderr)}"
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by its Popen handle
            self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def _login_command(url: str, *extra: str) -> Iterator[_LoginCommand]:
    cmd = _LoginCommand(url, *extra)
    try:
        yield cmd
    finally:
        cmd.stop()


def _user_code(where: str) -> str:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(where).query))["user_code"]


@pytest.mark.browser
def test_device_login_in_chromium_token_accepted_by_slurm(site: Site) -> None:
    with _login_command(site.url) as cmd, chromium() as browser:
        where, code = cmd.prompt()
        assert where.startswith(site.prov.issuer + "/device?user_code=")
        assert _user_code(where) == code

        ctx = browser.new_context()
        ctx.set_default_timeout(TIMEOUT_MS)
        page = ctx.new_page()
        # verification_uri_complete auto-submits the code (JS), then the provider asks to
        # confirm that the code it shows is the one on the device.
        page.goto(where)
        page.wait_for_selector("form[id='op.deviceConfirmForm']", state="attached")
        assert page.inner_text("code").strip() == code
        page.click("button[form='op.deviceConfirmForm']:not([name=abort])")  # "Continue"
        idp_sign_in(page, "alice")
        page.wait_for_selector("text=Sign-in Success")
        ctx.close()

        out = cmd.finish()
    m = re.fullmatch(rf"SLURM_JWT=({JWT_RE})\n", out)
    assert m, f"stdout was {out!r}"
    assert any("token for alice" in line for line in cmd.stderr), cmd.stderr
    _assert_accepted(site, m.group(1), "alice")


def test_device_login_export_prints_export_line(site: Site) -> None:
    with _login_command(site.url, "--export") as cmd:
        _where, code = cmd.prompt()
        # The user's side over plain HTTP this time (the browser is proven above).
        site.prov.device_login(code, "alice")
        out = cmd.finish()
    m = re.fullmatch(rf"export SLURM_JWT=({JWT_RE})\n", out)
    assert m, f"stdout was {out!r}"
    _assert_accepted(site, m.group(1), "alice")


# ------------------------------------------------------------------ client credentials


def test_service_client_credentials_maps_to_service_account(site: Site) -> None:
    cc = site.prov.client_credentials("svc-portal", "svc-portal-secret")["access_token"]
    r = _exchange(site, subject_token=cc, subject_token_type=ACCESS_TOKEN)
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert body["slurm_user"] == SERVICE_ACCOUNT
    _assert_accepted(site, body["access_token"], SERVICE_ACCOUNT)


def test_unlisted_service_is_refused(site: Site) -> None:
    cc = site.prov.client_credentials("svc-unknown", "svc-unknown-secret")["access_token"]
    r = _exchange(site, subject_token=cc, subject_token_type=ACCESS_TOKEN)
    _refused(r, 400, "unauthorized_client")
    assert "svc-unknown" in r.json()["error_description"]


# ------------------------------------------------------------------ delegation


@pytest.fixture(scope="module")
def alice_access_token(site: Site) -> str:
    return site.prov.login_tokens("alice")["access_token"]


def _actor(site: Site, client: str) -> str:
    return site.prov.client_credentials(client, f"{client}-secret")["access_token"]


def test_listed_actor_exchanges_users_token(site: Site, alice_access_token: str) -> None:
    r = _exchange(
        site,
        subject_token=alice_access_token,
        subject_token_type=ACCESS_TOKEN,
        actor_token=_actor(site, "svc-portal"),
        actor_token_type=ACCESS_TOKEN,
    )
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert body["slurm_user"] == "alice"
    _assert_accepted(site, body["access_token"], "alice")
    audit = [a for a in site.bridge.audit_lines() if a.get("event") == "exchange"][-1]
    assert audit["outcome"] == "minted"
    assert (audit["kind"], audit["actor"], audit["user"]) == ("delegated", "op:svc-portal", "alice")


def test_unlisted_actor_is_refused(site: Site, alice_access_token: str) -> None:
    r = _exchange(
        site,
        subject_token=alice_access_token,
        subject_token_type=ACCESS_TOKEN,
        actor_token=_actor(site, "svc-batch"),
        actor_token_type=ACCESS_TOKEN,
    )
    _refused(r, 400, "unauthorized_client")


def test_requested_subject_root_is_refused_alice_allowed(site: Site) -> None:
    actor = _actor(site, "svc-portal")
    r = _exchange(site, requested_subject="root", actor_token=actor, actor_token_type=ACCESS_TOKEN)
    _refused(r, 403, "access_denied")
    assert "root" in r.json()["error_description"]

    r = _exchange(site, requested_subject="alice", actor_token=actor, actor_token_type=ACCESS_TOKEN)
    assert r.status_code == 200, r.text[:500]
    assert r.json()["slurm_user"] == "alice"
    _assert_accepted(site, r.json()["access_token"], "alice")


# ------------------------------------------------------------------ login --exec

# Run inside the command as `sh -c ARGV_SCAN sh FILE`: fails (exit 9) if the token is in any
# process's argv, else keeps the token in FILE (printf is a shell builtin) and exits 7.
ARGV_SCAN = (
    'for f in /proc/[0-9]*/cmdline; do { c=$(tr "\\000" " " < "$f"); } 2>/dev/null || continue; '
    'case "$c" in *"$SLURM_JWT"*) echo "token in $f" >&2; exit 9;; esac; done; '
    'umask 077; printf %s "$SLURM_JWT" > "$1"; exit 7'
)


def _login_exec(site: Site, *command: str) -> tuple[int, str, str]:
    """``slurm-jwt-bridge login --exec -- COMMAND...`` with alice confirming the code (HTTP);
    returns (exit status, stdout, stderr)."""
    with _login_command(site.url, "--exec", "--", *command) as cmd:
        _where, code = cmd.prompt()
        site.prov.device_login(code, "alice")
        try:
            cmd.proc.wait(timeout=LOGIN_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"login --exec still running: {cmd.stderr}") from None
        cmd._pump.join(5)
        assert cmd.proc.stdout is not None
        return cmd.proc.returncode, cmd.proc.stdout.read(), "".join(cmd.stderr)


def test_login_exec_runs_squeue_without_munge(site: Site) -> None:
    cluster = site.slurm.cluster
    nomunge = cluster.without_munge_argv("alice")
    status, out, err = _login_exec(site, *nomunge, "squeue", "-o", "%i %u")
    assert status == 0, f"exit {status}: {err}"
    assert out.splitlines()[0].split() == ["JOBID", "USER"], out
    assert "token for alice" in err
    # The same command, same namespace, without the bridge: munge is out of reach.
    proc = cluster.run_without_munge(["squeue"], user="alice", token=None)
    assert proc.returncode != 0 and "Munge encode failed" in proc.stderr, proc.stderr


def test_login_exec_sbatch_job_runs_as_alice_without_munge(site: Site, tmp_path: Path) -> None:
    cluster = site.slurm.cluster
    out = f"/tmp/sjb-login-exec-{tmp_path.name}.out"
    argv = ["sbatch", "--parsable", "-o", out, "--wrap", "id -un"]
    status, stdout, err = _login_exec(site, *cluster.without_munge_argv("alice"), *argv)
    assert status == 0, f"exit {status}: {err}"
    job_id = int(stdout.strip())
    try:
        assert cluster.wait_job(job_id) == "COMPLETED"
        assert cluster.host_path(out).read_text().strip() == "alice"
    finally:
        cluster.host_path(out).unlink(missing_ok=True)


def test_login_exec_passes_exit_status_and_keeps_token_off_argv(site: Site, tmp_path: Path) -> None:
    kept = tmp_path / "token"
    status, out, err = _login_exec(site, "/bin/sh", "-c", ARGV_SCAN, "sh", str(kept))
    assert status == 7, f"exit {status}: {err}"  # 9 would mean the token was in some argv
    token = kept.read_text()
    assert re.fullmatch(JWT_RE, token), token[:20]
    assert out == "" and token not in err  # the token is printed nowhere
    _assert_accepted(site, token, "alice")
