"""Terminal login through the bridge's own device page, end to end, where the identity provider
offers no device grant (the shape of Amazon Cognito): the real oidc-provider with its device
flow off (discovery has no device_authorization_endpoint), the real ``slurm-jwt-bridge login``,
Debian Chromium, real slurmrestd 26.05, and two gunicorn replicas over a real redis-server.

What is proven:
- the CLI prints the bridge's /device URL and a code; Chromium logs in through the browser door,
  types the code, sees it with the terminal's address and allows; the CLI prints a token that
  slurmrestd 26.05 accepts, and a job submitted with it runs as alice (audit: door "device");
- Deny in the browser fails the CLI with a clear message and no token;
- a wrong code is refused on the page; the terminal keeps waiting;
- two replicas share pending codes through Redis: started at one, allowed at the other, the
  token fetched at the first; a second fetch is refused (single use); polling too fast at either
  gets slow_down.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from tests.helpers.bridge import BridgeServer
from tests.helpers.browser import (
    TIMEOUT_MS,
    bridge_toml,
    idp_sign_in,
    jwt_claims,
    login_issuer_toml,
    redis_replicas,
    require_node,
    reserved_port,
    start_bridge_at,
    start_replicas,
    toml_str,
    web_client,
)
from tests.helpers.browser import Site as SiteOf
from tests.helpers.oidc import OidcProvider, start_oidc_provider
from tests.helpers.slurm_rest import BridgeCluster, get_jobs, run_whoami_job
from tests.integration.test_browser_login import _wait_for
from tests.integration.test_device_and_service import LOGIN_TIMEOUT, _login_command

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = [pytest.mark.browser, pytest.mark.oidc, pytest.mark.slurm]

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CLIENT_ID, CLIENT_SECRET = "bridge-web-device", "bridge-web-device-secret"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
COOKIE = "sjb_session"


Site = SiteOf[OidcProvider]


def _config(
    port: int, prov: OidcProvider, keys_dir: Path, browser_extra: str = "", poll_interval: int = 1
) -> str:
    issuer = login_issuer_toml(
        "op", "oidc", prov.issuer, CLIENT_ID, CLIENT_SECRET, [CLIENT_ID, prov.resource]
    )
    cli = '[cli_login]\nissuer = "op"\nclient_id = "bridge-cli"\n'
    browser = f"session_lifetime = 3600\ndevice_poll_interval = {poll_interval}\n{browser_extra}"
    return bridge_toml(port, keys_dir, issuer + cli, browser=browser)


@pytest.fixture(scope="module")
def site(slurm_2605: BridgeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_node()
    work = tmp_path_factory.mktemp("device-page")
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(reserved_port())
        url = f"http://127.0.0.1:{port}"
        prov = start_oidc_provider(
            work / "op", clients=[web_client(CLIENT_ID, CLIENT_SECRET, url)], device_flow=False
        )
        stack.callback(prov.stop)
        meta = requests.get(prov.issuer + "/.well-known/openid-configuration", timeout=10).json()
        assert "device_authorization_endpoint" not in meta  # the Cognito shape
        bridge = start_bridge_at(work / "bridge", port, _config(port, prov, slurm_2605.keys_dir))
        stack.callback(bridge.stop)
        yield Site(prov, bridge, slurm_2605)


def _device_audit(server: BridgeServer, outcome: str) -> list[dict]:
    return [
        a
        for a in server.audit_lines()
        if a.get("event") == "device" and a.get("outcome") == outcome
    ]


def test_cognito_shaped_login_through_the_device_page_runs_a_job(
    site: Site, browser: Browser
) -> None:
    ctx = browser.new_context()
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        with _login_command(site.bridge.url) as cmd:
            where, code = cmd.prompt()
            assert where == f"{site.bridge.url}/device?code={code}", where
            assert re.fullmatch(r"[B-Z]{4}-[B-Z]{4}", code), code

            page = ctx.new_page()
            page.goto(site.bridge.url + "/device")  # the bare page: the person types the code
            _wait_for(page, "#login", site.bridge)
            page.click("#login")
            idp_sign_in(page, "alice")
            _wait_for(page, "#code", site.bridge)  # back at /device after the login
            assert page.inner_text("#user") == "alice"
            page.fill("#code", "BBBB-BBBB")  # a wrong code first: refused, nothing approved
            page.click("#next")
            _wait_for(page, "#reason", site.bridge)
            assert "No login is waiting" in page.inner_text("#reason")
            page.goto(site.bridge.url + "/device")
            page.fill("#code", code.lower())
            page.click("#next")
            _wait_for(page, "#allow", site.bridge)
            assert page.inner_text("#device-code") == code
            assert page.inner_text("#device-addr") == "127.0.0.1"
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "device-confirm.png"), full_page=True)
            page.click("#allow")
            _wait_for(page, "#result", site.bridge)
            assert page.inner_text("#result") == "Terminal allowed"
            out = cmd.finish(LOGIN_TIMEOUT)
    finally:
        ctx.close()

    assert out.startswith("SLURM_JWT=") and out.count("\n") == 1, out[:40]
    token = out.strip().split("=", 1)[1]
    assert jwt_claims(token)["sun"] == "alice"
    cluster = site.slurm.cluster
    r = get_jobs(cluster, token, "alice")
    assert r.status_code == 200, f"{r.status_code} {r.text[:500]}"
    assert run_whoami_job(cluster, token, "alice") == ("COMPLETED", "alice")
    minted = [a for a in site.bridge.audit_lines() if a.get("event") == "device"]
    assert any(a["outcome"] == "minted" and a["door"] == "device" for a in minted), minted
    assert any(a["outcome"] == "approved" and a["user"] == "alice" for a in minted)
    assert token not in site.bridge.log_tail(2000)


def test_deny_in_the_browser_fails_the_cli_clearly(site: Site, browser: Browser) -> None:
    ctx = browser.new_context()
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        with _login_command(site.bridge.url) as cmd:
            where, code = cmd.prompt()
            page = ctx.new_page()
            page.goto(where)  # verification_uri_complete: still shows the code and asks
            _wait_for(page, "#login", site.bridge)
            page.click("#login")
            idp_sign_in(page, "alice")
            _wait_for(page, "#deny", site.bridge)
            assert page.inner_text("#device-code") == code
            page.click("#deny")
            _wait_for(page, "#result", site.bridge)
            assert page.inner_text("#result") == "Terminal denied"
            cmd.proc.wait(LOGIN_TIMEOUT)
            cmd._pump.join(5)
            assert cmd.proc.returncode == 1
            assert cmd.proc.stdout is not None and cmd.proc.stdout.read() == ""
            err = "".join(cmd.stderr)
            assert "login denied: the code was denied in the browser" in err, err
            assert "Traceback" not in err
    finally:
        ctx.close()
    assert _device_audit(site.bridge, "denied")


# ------------------------------------------------------------------ replicas over Redis


def _login_session(prov: OidcProvider, url: str) -> requests.Session:
    s = requests.Session()
    r = s.get(url + "/login", allow_redirects=False, timeout=10)
    callback = prov._drive_interactions(s, r, "alice", stop_prefix=url + "/auth/callback")
    r = s.get(callback, allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text[:500]
    return s


def _start(url: str) -> dict:
    r = requests.post(url + "/oauth/device_authorization", data={"client_id": "t"}, timeout=10)
    assert r.status_code == 200, r.text[:500]
    return r.json()


def _poll(url: str, device_code: str) -> requests.Response:
    data = {"grant_type": DEVICE_GRANT, "device_code": device_code}
    return requests.post(url + "/oauth/token", data=data, timeout=10)


# Seconds between polls at the replicas: the server counts whole seconds, so an interval of
# one could let an immediate poll through as on time; three leaves room for a slow machine.
REPLICA_POLL_INTERVAL = 3


def test_two_replicas_share_pending_codes_through_redis(tmp_path: Path, site: Site) -> None:
    with redis_replicas(tmp_path) as (redis_url, (port_a, port_b), stack):
        url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
        prov = start_oidc_provider(
            tmp_path / "op",
            clients=[web_client(CLIENT_ID, CLIENT_SECRET, url_a)],
            device_flow=False,
        )
        stack.callback(prov.stop)
        extra = f"session_storage_uri = {toml_str(redis_url)}\n"
        configs = {
            p: _config(p, prov, site.slurm.keys_dir, extra, REPLICA_POLL_INTERVAL)
            for p in (port_a, port_b)
        }
        start_replicas(stack, tmp_path, configs)

        s = _login_session(prov, url_a)
        dev = _start(url_b)  # the terminal talks to replica B
        assert dev["interval"] == REPLICA_POLL_INTERVAL
        # too fast, at either replica: the pending code's poll time is shared
        assert _poll(url_b, dev["device_code"]).json()["error"] == "slow_down"
        assert _poll(url_a, dev["device_code"]).json()["error"] == "slow_down"
        page = s.get(url_a + "/device", params={"code": dev["user_code"]}, timeout=10)
        assert page.status_code == 200 and dev["user_code"] in page.text, page.text[:1000]
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf
        r = s.post(
            url_a + "/device",
            data={"csrf": csrf.group(1), "code": dev["user_code"], "decision": "allow"},
            timeout=10,
        )
        assert r.status_code == 200 and "Terminal allowed" in r.text, r.text[:500]
        # approving again at the other replica: refused
        page_b = s.get(url_b + "/device", params={"code": dev["user_code"]}, timeout=10)
        assert page_b.status_code == 409, page_b.text[:500]

        time.sleep(dev["interval"] + 10.5)  # the interval grew by 5 s twice (slow_down)
        r = _poll(url_b, dev["device_code"])
        assert r.status_code == 200, r.text[:500]
        token = r.json()["access_token"]
        assert jwt_claims(token)["sun"] == "alice"
        r = _poll(url_a, dev["device_code"])  # single use, whichever replica is asked
        assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")
        r = get_jobs(site.slurm.cluster, token, "alice")
        assert r.status_code == 200, f"{r.status_code} {r.text[:300]}"
