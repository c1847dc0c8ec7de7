"""Browser login end to end: Debian Chromium, a real OpenID provider (npm oidc-provider), the
bridge as its own process, and real Slurm 26.05 (slurmrestd + slurmctld) judging the tokens.

One provider and one bridge serve the whole module; every test gets a fresh browser context
(its own cookies), so each login starts from nothing. What is proven:
- alice logs in at the provider, sees her token and the export line, the countdown runs (JS),
  the token works at slurmrestd 26.05 and a job submitted with it runs as alice; the session
  cookie is HttpOnly, SameSite=Lax and under 4 KB;
- the copy button puts the token on the clipboard;
- "new token" mints a token of the asked lifetime; a form POST without/with a wrong CSRF field
  is refused (400) while the same POST with the page's CSRF field works;
- a tampered ``state``, an ``error`` from the provider, an unmapped user (carol) and a user
  mapped to root (mallory) each end on a readable error page with a 4xx status;
- logout ends the bridge session and the provider's session;
- with two login issuers, /login shows a chooser and the chosen issuer is the one used.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
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
from tests.helpers.slurm_rest import BridgeCluster, get_jobs, run_whoami_job, submit_body

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = [pytest.mark.browser, pytest.mark.oidc, pytest.mark.slurm]

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"

CLIENT_ID = "bridge-web"
CLIENT_SECRET = "bridge-web-secret"
# The chooser bridge: two login issuers (the same provider, two clients).
CAMPUS_ID, PARTNER_ID = "bridge-web-campus", "bridge-web-partner"
COOKIE = "sjb_session"
COUNTDOWN_RE = re.compile(r"^\d+ min \d+ s left$")


Site = SiteOf[OidcProvider]


def _issuer_toml(
    name: str, prov: OidcProvider, client_id: str, secret: str, display_name: str
) -> str:
    audiences = [client_id, prov.resource]
    return login_issuer_toml(
        name, "oidc", prov.issuer, client_id, secret, audiences, display_name=display_name
    )


@pytest.fixture(scope="module")
def site(slurm_2605: BridgeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_node()
    work = tmp_path_factory.mktemp("browser-login")
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(reserved_port())
        chooser_port = stack.enter_context(reserved_port())
        url, chooser_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{chooser_port}"
        prov = start_oidc_provider(
            work / "op",
            clients=[
                web_client(CLIENT_ID, CLIENT_SECRET, url),
                web_client(CAMPUS_ID, "campus-secret", chooser_url),
                web_client(PARTNER_ID, "partner-secret", chooser_url),
            ],
        )
        stack.callback(prov.stop)
        one = _issuer_toml("op", prov, CLIENT_ID, CLIENT_SECRET, "Test IdP")
        proxy = f"[proxy]\nupstream = {toml_str(slurm_2605.cluster.restd_url)}\n"
        bridge = start_bridge_at(
            work / "bridge", port, bridge_toml(port, slurm_2605.keys_dir, one + proxy)
        )
        stack.callback(bridge.stop)
        two = _issuer_toml("campus", prov, CAMPUS_ID, "campus-secret", "Campus login")
        two += _issuer_toml("partner", prov, PARTNER_ID, "partner-secret", "Partner login")
        chooser = start_bridge_at(
            work / "chooser", chooser_port, bridge_toml(chooser_port, slurm_2605.keys_dir, two)
        )
        stack.callback(chooser.stop)
        yield Site(prov, bridge, slurm_2605, chooser)


def _login(page: Page, site: Site, user: str = "alice") -> str:
    """From the start page through the provider back to the token page; returns the token."""
    page.goto(site.url + "/")
    _wait_for(page, "#login", site.bridge)
    page.click("#login")
    idp_sign_in(page, user)
    _wait_for(page, "#token", site.bridge)
    assert page.url == site.url + "/", page.url
    return page.input_value("#token")


def _logout(page: Page, site: Site) -> None:
    """The page's logout button, then the provider's confirmation (RP-initiated logout)."""
    page.click("#logout")
    page.wait_for_load_state()
    if page.url.startswith(site.prov.base_url):
        page.click("button[name=logout][value=yes]")
    page.wait_for_url(site.url + "/")


def _wait_for(page: Page, selector: str, server: BridgeServer) -> None:
    """Wait for ``selector``; on timeout fail with where the browser is and the bridge's log."""
    try:
        page.wait_for_selector(selector, timeout=TIMEOUT_MS)
    except Exception as exc:
        raise AssertionError(
            f"{selector} did not appear ({type(exc).__name__}); the browser is at {page.url}:\n"
            f"{page.content()[:2000]}\n--- bridge log ---\n{server.log_tail()}"
        ) from None


def _no_stack_trace(body: str) -> None:
    assert "Traceback" not in body, body[:2000]
    assert 'File "' not in body, body[:2000]


def _last_audit(server: BridgeServer, event: str) -> dict:
    lines = [a for a in server.audit_lines() if a.get("event") == event]
    assert lines, f"no {event!r} audit line in the bridge log:\n{server.log_tail()}"
    return lines[-1]


# ------------------------------------------------------------------ 1. login, token, Slurm


def test_login_token_page_and_slurm_accepts_token(site: Site, context: BrowserContext) -> None:
    page = context.new_page()
    token = _login(page, site, "alice")

    assert page.inner_text("#user") == "alice"
    claims = jwt_claims(token)
    assert claims["sun"] == "alice"
    assert page.input_value("#export") == f"export SLURM_JWT={token}"
    help_text = page.inner_text("#without-munge")
    assert "Slurm commands without munge" in help_text and "--exec -- squeue" in help_text
    assert token not in help_text

    # The countdown is rewritten by token.js every second: JavaScript runs on the page.
    first = page.inner_text("#countdown")
    page.wait_for_timeout(1500)
    second = page.inner_text("#countdown")
    assert COUNTDOWN_RE.match(first) and COUNTDOWN_RE.match(second), (first, second)
    assert first != second

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "token-page.png"), full_page=True)

    cookie = next(c for c in context.cookies(site.url) if c["name"] == COOKIE)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["secure"] is False  # [browser] secure_cookies = false (plain http here)
    assert len(cookie["name"]) + len(cookie["value"]) < 4096, len(cookie["value"])

    # Real slurmrestd 26.05 accepts the token for alice, and a job submitted with it runs as her.
    cluster = site.slurm.cluster
    r = get_jobs(cluster, token, "alice")
    assert r.status_code == 200, f"{r.status_code} {r.text[:500]}"
    state, who = run_whoami_job(cluster, token, "alice")
    assert (state, who) == ("COMPLETED", "alice")

    audit = _last_audit(site.bridge, "login")
    assert audit["outcome"] == "minted" and audit["user"] == "alice" and audit["door"] == "browser"


# ------------------------------------------------------------------ 2. copy button


def test_copy_button_puts_token_on_clipboard(
    site: Site, browser: Browser, record_property: pytest.RecordProperty
) -> None:
    from playwright.sync_api import expect

    ctx = browser.new_context()
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.url)
        page = ctx.new_page()
        token = _login(page, site, "alice")
        page.click("#copy")
        # (a locator wait: string predicates would need eval, which the page's CSP forbids)
        expect(page.locator("#copied")).to_have_text("Copied.", timeout=TIMEOUT_MS)
        try:
            clip = page.evaluate("navigator.clipboard.readText()")
        except Exception as exc:  # no clipboard in this headless browser: the DOM path
            path = f"dom ({type(exc).__name__})"
            assert page.inner_text("#copied") == "Copied."
            assert page.input_value("#token") == token
        else:
            path = "clipboard"
            assert clip == token
        record_property("clipboard_path", path)
        print(f"copy button checked via: {path}")
    finally:
        ctx.close()


# ------------------------------------------------------------------ 3. new token, CSRF


def test_new_token_lifetime_and_csrf(site: Site, context: BrowserContext) -> None:
    page = context.new_page()
    old = _login(page, site, "alice")

    page.fill("#lifetime", "120")
    with page.expect_navigation():
        page.click("#mint")
    new = page.input_value("#token")
    assert new != old
    claims = jwt_claims(new)
    assert claims["sun"] == "alice"
    assert claims["exp"] - claims["iat"] == 120
    assert get_jobs(site.slurm.cluster, new, "alice").status_code == 200

    # The same form POST without the CSRF field, or with a wrong one, is refused...
    r = page.request.post(site.url + "/token", form={"lifetime": "300"}, max_redirects=0)
    assert r.status == 400, r.text()[:500]
    assert "CSRF" in r.text()
    r = page.request.post(
        site.url + "/token", form={"lifetime": "300", "csrf": "forged"}, max_redirects=0
    )
    assert r.status == 400
    assert page.input_value("#token") == new
    # ...while the page's own CSRF field makes it work (same cookie, same request otherwise).
    csrf = page.get_attribute("form input[name=csrf]", "value")
    r = page.request.post(
        site.url + "/token", form={"lifetime": "300", "csrf": csrf or ""}, max_redirects=0
    )
    assert r.status == 302, r.text()[:500]

    # Without the browser: the session cookie alone does not make a POST acceptable.
    cookie = next(c for c in context.cookies(site.url) if c["name"] == COOKIE)
    r2 = requests.post(
        site.url + "/token",
        data={"lifetime": "120"},
        cookies={COOKIE: cookie["value"]},
        allow_redirects=False,
        timeout=10,
    )
    assert r2.status_code == 400


# ------------------------------------------------------------------ 4. state tampering


def test_tampered_state_is_refused(site: Site, context: BrowserContext) -> None:
    page = context.new_page()
    _login(page, site, "alice")  # the browser now has a session at the provider
    # Start a new login and follow its redirects by hand (with the browser's cookies) until
    # the provider sends the browser back to the bridge's callback: capture that URL. (Playwright
    # routes do not see the redirect hops a navigation takes, so the browser cannot hold it.)
    callback = site.url + "/auth/callback?"
    captured: list[str] = []
    url = site.url + "/login"
    for _ in range(10):
        r = page.request.get(url, max_redirects=0)
        assert r.status in (302, 303), f"{url}: {r.status} {r.text()[:300]}"
        url = urllib.parse.urljoin(url, r.headers["location"])
        if url.startswith(callback):
            captured.append(url)
            break
    assert captured, "the provider never redirected to the bridge's callback"

    real = urllib.parse.urlsplit(captured[0])
    query = dict(urllib.parse.parse_qsl(real.query))
    assert query.get("code") and query.get("state"), query
    query["state"] = "tampered"
    tampered = real._replace(query=urllib.parse.urlencode(query)).geturl()

    resp = page.goto(tampered)
    assert resp is not None
    assert 400 <= resp.status < 500, resp.status
    assert page.is_visible("#reason")
    assert page.locator("#token").count() == 0
    assert page.inner_text("#reason").strip()
    _no_stack_trace(page.content())

    # Control: the untouched callback URL (same code, real state) still logs alice in.
    resp = page.goto(captured[0])
    assert resp is not None and resp.status == 200
    assert page.inner_text("#user") == "alice"


# ------------------------------------------------------------------ 5. IdP error


def test_idp_error_parameter_gives_readable_page(site: Site, context: BrowserContext) -> None:
    page = context.new_page()
    resp = page.goto(
        site.url + "/auth/callback?error=access_denied&error_description=The+user+said+no"
    )
    assert resp is not None
    assert 400 <= resp.status < 500, resp.status
    reason = page.inner_text("#reason")
    assert "access_denied" in reason and "The user said no" in reason
    assert page.locator("#token").count() == 0
    _no_stack_trace(page.content())


# ------------------------------------------------------------------ 6. unmapped / root


@pytest.mark.parametrize(
    ("user", "expected"),
    [("carol", "no mapping rule matched"), ("mallory", "root")],
)
def test_unmapped_and_root_users_are_refused(
    site: Site, context: BrowserContext, user: str, expected: str
) -> None:
    page = context.new_page()
    page.goto(site.url + "/login")
    with page.expect_response(lambda r: "/auth/callback" in r.url) as info:
        idp_sign_in(page, user)
    assert info.value.status == 403
    page.wait_for_selector("#reason")
    reason = page.inner_text("#reason")
    assert expected in reason, reason
    assert page.locator("#token").count() == 0
    _no_stack_trace(page.content())
    # Nothing was stored: the start page still offers the login.
    page.goto(site.url + "/")
    assert page.locator("#login").count() == 1
    assert page.locator("#token").count() == 0


# ------------------------------------------------------------------ 7. logout


def test_logout_clears_session(site: Site, context: BrowserContext) -> None:
    page = context.new_page()
    _login(page, site, "alice")
    _logout(page, site)
    assert page.locator("#login").count() == 1
    assert page.locator("#token").count() == 0

    page.goto(site.url + "/")
    assert page.locator("#token").count() == 0
    r = page.request.get(site.url + "/")
    assert 'id="token"' not in r.text()
    # The provider's session ended too: logging in again asks for the account.
    page.click("#login")
    page.wait_for_selector("input[name=login]")


# ------------------------------------------------------------------ 8. chooser


def test_two_login_issuers_show_chooser(site: Site, context: BrowserContext) -> None:
    url = site.chooser.url
    page = context.new_page()
    page.goto(url + "/")
    page.click("#login")
    page.wait_for_url(url + "/login")
    choices = page.locator("ul.choices a")
    assert choices.all_inner_texts() == ["Campus login", "Partner login"]
    assert page.locator("#token").count() == 0

    with page.expect_request(lambda r: r.url.startswith(site.prov.issuer + "/auth?")) as req:
        page.click("text=Partner login")
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(req.value.url).query))
    assert params["client_id"] == PARTNER_ID
    assert params["code_challenge_method"] == "S256"
    idp_sign_in(page, "bob")
    page.wait_for_url(url + "/")
    assert page.inner_text("#user") == "bob"
    audit = _last_audit(site.chooser, "login")
    assert audit["outcome"] == "minted" and audit["issuer"] == "partner"


# ------------------------------------------------------------------ 9. sessions end for real


def _cookie(context: BrowserContext, url: str) -> str:
    return next(c for c in context.cookies(url) if c["name"] == COOKIE)["value"]


def _proxied_jobs(site: Site, cookie: str) -> requests.Response:
    return requests.get(
        f"{site.url}/slurm/{site.slurm.cluster.api_version}/jobs",
        cookies={COOKIE: cookie},
        timeout=30,
    )


def _remint_refused(page: Page, url: str, reason: str) -> None:
    """The new-token button ends on a readable 401 page offering a new login; the session ends."""
    with page.expect_response(lambda r: r.url == url + "/token") as info:
        page.click("#mint")
    assert info.value.status == 401, info.value.status
    page.wait_for_selector("#reason")
    assert reason in page.inner_text("#reason")
    assert page.locator("#token").count() == 0
    assert page.locator("#login").count() == 1
    _no_stack_trace(page.content())
    page.goto(url + "/")
    assert page.locator("#token").count() == 0


def _revocations(prov: OidcProvider) -> int:
    return sum(1 for line in prov.lines if line.startswith("POST /token/revocation 200"))


def test_logout_ends_the_session_and_a_replayed_cookie_gets_nothing(
    site: Site, context: BrowserContext
) -> None:
    page = context.new_page()
    first = _login(page, site, "alice")
    with page.expect_navigation():
        page.click("#mint")
    assert page.input_value("#token") != first
    saved = _cookie(context, site.url)
    csrf = page.get_attribute("form input[name=csrf]", "value") or ""
    # Control: the cookie works on the proxy (real slurmrestd answers for alice).
    r = _proxied_jobs(site, saved)
    assert r.status_code == 200, r.text[:500]

    revoked = _revocations(site.prov)
    _logout(page, site)
    assert page.locator("#login").count() == 1

    # Replaying the saved cookie (and the page's CSRF value) gets no token and no proxying.
    r = requests.get(site.url + "/", cookies={COOKIE: saved}, timeout=10)
    assert 'id="token"' not in r.text
    r = requests.post(
        site.url + "/token",
        data={"lifetime": "300", "csrf": csrf},
        cookies={COOKIE: saved},
        timeout=10,
    )
    assert 'id="token"' not in r.text, r.text[:500]
    r = _proxied_jobs(site, saved)
    assert r.status_code == 401, r.text[:500]
    remints = [a for a in site.bridge.audit_lines() if a.get("event") == "remint"]
    assert remints[-1]["outcome"] == "minted"  # the one before logout, none after
    # The refresh token was revoked at the provider (it advertises revocation_endpoint).
    assert _revocations(site.prov) == revoked + 1, "\n".join(site.prov.lines[-20:])


def test_session_ended_at_the_provider_stops_the_next_remint(
    site: Site, context: BrowserContext
) -> None:
    page = context.new_page()
    _login(page, site, "alice")
    # alice logs out at the provider itself (not through the bridge): the provider ends her
    # session and revokes the grant the bridge's refresh token belongs to.
    idp = context.new_page()
    idp.goto(site.prov.endpoint("end_session_endpoint"))
    idp.click("button[name=logout][value=yes]")
    idp.wait_for_load_state()

    _remint_refused(page, site.url, "identity provider")
    audit = _last_audit(site.bridge, "remint")
    assert audit["outcome"] == "refused"


def test_cross_site_writes_through_the_proxy_need_origin_and_header(
    site: Site, context: BrowserContext
) -> None:
    page = context.new_page()
    _login(page, site, "alice")
    cookie = _cookie(context, site.url)
    version = site.slurm.cluster.api_version
    base = f"{site.url}/slurm/{version}"
    body = submit_body(version, "#!/bin/bash\ntrue\n", "/dev/null", "sjb-csrf")
    seen_before = len(site.bridge.audit_lines())

    # From another origin of the same site (another port of 127.0.0.1): a plain fetch, which
    # SameSite=Lax lets carry the cookie, is refused before anything reaches slurmrestd.
    sibling = context.new_page()
    sibling.goto(site.prov.base_url + "/.well-known/openid-configuration")
    status = sibling.evaluate(
        """async ([url, body]) => {
             try {
               const r = await fetch(url, {method: "POST", credentials: "include",
                 headers: {"Content-Type": "text/plain"}, body: body});
               return r.status;
             } catch (e) { return "blocked:" + e; }
           }""",
        [f"{base}/job/submit", json.dumps(body)],
    )
    for method in ("POST", "PUT", "DELETE"):
        for headers in (
            {"Origin": site.prov.base_url},
            {"Origin": site.prov.base_url, "X-Requested-With": "fetch"},
            {"Origin": site.url},  # same origin, but a plain form could send it: no header
        ):
            r = requests.request(
                method,
                f"{base}/job/submit" if method == "POST" else f"{base}/job/999999",
                data=json.dumps(body),
                headers={"Content-Type": "text/plain", **headers},
                cookies={COOKIE: cookie},
                timeout=30,
            )
            assert r.status_code == 403, (method, headers, r.status_code, r.text[:300])
    # Nothing was minted for the proxy by those refused calls (the fetch included).
    proxy_mints = [
        a
        for a in site.bridge.audit_lines()[seen_before:]
        if a.get("door") == "proxy" and a.get("outcome") == "minted"
    ]
    assert proxy_mints == [], (status, proxy_mints)

    # The bridge's own origin with the custom header: forwarded, slurmrestd takes the job.
    same = {"Origin": site.url, "X-Requested-With": "fetch"}
    r = requests.post(
        f"{base}/job/submit", json=body, headers=same, cookies={COOKIE: cookie}, timeout=30
    )
    assert r.status_code == 200, r.text[:500]
    job_id = int(r.json()["job_id"])
    r = requests.delete(f"{base}/job/{job_id}", headers=same, cookies={COOKIE: cookie}, timeout=30)
    assert r.status_code == 200, r.text[:500]
    r = requests.put(f"{base}/job/{job_id}", headers=same, cookies={COOKIE: cookie}, timeout=30)
    assert r.status_code != 403 and "cross-site" not in r.text, r.text[:500]


@contextlib.contextmanager
def _redirect_to(url: str) -> Iterator[str]:
    """Another site (``localhost``, not the bridge's 127.0.0.1) answering 302 to ``url``."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", url)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/mailed-link"
    finally:
        server.shutdown()
        server.server_close()


def test_cross_site_gets_through_the_proxy_are_refused(site: Site, context: BrowserContext) -> None:
    """slurmrestd has GETs that change state: a GET the browser sends with the session cookie
    from anywhere but the bridge's own pages is refused before a token is minted for it."""
    page = context.new_page()
    _login(page, site, "alice")
    url = f"{site.url}/slurm/{site.slurm.cluster.api_version}/jobs"
    seen_before = len(site.bridge.audit_lines())

    # A sibling origin (another port of 127.0.0.1: same site, so the Lax cookie rides along)
    sibling = context.new_page()
    sibling.goto(site.prov.base_url + "/.well-known/openid-configuration")
    sibling.evaluate(
        "async (url) => { await fetch(url, {credentials: 'include', mode: 'no-cors'}); }", url
    )
    # A link opened from outside the browser, redirected here by another site: Chromium sends
    # Sec-Fetch-Site: none and no Referer, and the Lax cookie goes with the top-level GET
    with _redirect_to(url) as mailed:
        answer = context.new_page().goto(mailed)
        assert answer is not None and answer.status == 403, answer and answer.text()[:300]
    refused = [
        a
        for a in site.bridge.audit_lines()[seen_before:]
        if a.get("outcome") == "refused" and "cross-site" in a.get("reason", "")
    ]
    assert len(refused) == 2 and {a["user"] for a in refused} == {"alice"}, refused
    assert not [
        a
        for a in site.bridge.audit_lines()[seen_before:]
        if a.get("door") == "proxy" and a.get("outcome") == "minted"
    ]
    # A script on the bridge's own page: forwarded, slurmrestd answers
    status = page.evaluate("async (url) => (await fetch(url)).status", url)
    assert status == 200, status


# ------------------------------------------------------------------ 10. replicas over Redis


def test_two_gunicorn_instances_share_sessions_through_redis(tmp_path: Path, site: Site) -> None:
    """Log in at one instance, use and end the session at the other (a real redis-server)."""
    with redis_replicas(tmp_path) as (redis_url, (port_a, port_b), stack):
        url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
        client = web_client("bridge-web-replicas", "replicas-secret", url_a)
        prov = start_oidc_provider(tmp_path / "op", clients=[client])
        stack.callback(prov.stop)
        one = _issuer_toml("op", prov, client["client_id"], "replicas-secret", "IdP")
        shared = f"session_lifetime = 3600\nsession_storage_uri = {toml_str(redis_url)}"
        configs = {
            port: bridge_toml(port, site.slurm.keys_dir, one, browser=shared)
            for port in (port_a, port_b)
        }
        start_replicas(stack, tmp_path, configs)

        s = requests.Session()
        r = s.get(url_a + "/login", allow_redirects=False, timeout=10)
        callback = prov._drive_interactions(s, r, "alice", stop_prefix=url_a + "/auth/callback")
        r = s.get(callback, allow_redirects=False, timeout=10)
        assert r.status_code == 302, r.text[:500]
        page_b = s.get(url_b + "/", timeout=10).text
        assert 'id="user">alice<' in page_b, page_b[:1000]
        csrf = re.search(r'name="csrf" value="([^"]+)"', page_b)
        assert csrf
        r = s.post(url_b + "/token", data={"lifetime": "300", "csrf": csrf.group(1)}, timeout=10)
        token_b = re.search(r'id="token"[^>]*>([^<]+)<', r.text)
        assert token_b, r.text[:1000]
        token_a = re.search(r'id="token"[^>]*>([^<]+)<', s.get(url_a + "/", timeout=10).text)
        assert token_a and token_a.group(1) == token_b.group(1)
        saved = s.cookies.get(COOKIE)
        r = s.post(url_b + "/logout", data={"csrf": csrf.group(1)}, allow_redirects=False)
        assert r.status_code in (302, 303)
        r = requests.get(url_a + "/", cookies={COOKIE: saved}, timeout=10)
        assert 'id="token"' not in r.text


# ------------------------------------------------------------------ 11. short-lived ID tokens

# Seconds: the provider's ID and access token lifetime in these tests. Just above the 60 s a
# Slurm token must at least live (policy.MIN_LIFETIME): a login with less is refused.
SHORT_TTL = 70
RT_ID, NORT_ID = "bridge-web-refresh", "bridge-web-norefresh"


@dataclass
class ShortSite:
    prov: OidcProvider
    bridge: BridgeServer


@pytest.fixture(scope="module")
def short_site(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShortSite]:
    """A provider issuing ID tokens for SHORT_TTL seconds, one client with refresh tokens and
    one without, both login issuers of one bridge."""
    work = tmp_path_factory.mktemp("browser-short")
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(reserved_port())
        url = f"http://127.0.0.1:{port}"
        norefresh = web_client(NORT_ID, "nort-secret", url)
        norefresh["grant_types"] = ["authorization_code"]
        prov = start_oidc_provider(
            work / "op",
            clients=[web_client(RT_ID, "rt-secret", url), norefresh],
            ttl={"IdToken": SHORT_TTL, "AccessToken": SHORT_TTL},
        )
        stack.callback(prov.stop)
        issuers = _issuer_toml("rt", prov, RT_ID, "rt-secret", "With refresh")
        issuers += _issuer_toml("nort", prov, NORT_ID, "nort-secret", "Without refresh")
        bridge = start_bridge_at(
            work / "bridge", port, bridge_toml(port, site.slurm.keys_dir, issuers)
        )
        stack.callback(bridge.stop)
        yield ShortSite(prov, bridge)


def _short_login(page: Page, short: ShortSite, issuer: str) -> dict:
    page.goto(f"{short.bridge.url}/login?issuer={issuer}")
    idp_sign_in(page, "alice")
    _wait_for(page, "#token", short.bridge)
    return jwt_claims(page.input_value("#token"))


@dataclass
class ShortLogin:
    page: Page
    first: dict  # the claims of the token the login page showed


@pytest.fixture(scope="module")
def short_logins(short_site: ShortSite, browser: Browser) -> Iterator[dict[str, ShortLogin]]:
    """One login at each short-lived issuer, both made before either test waits, so the two
    tests share one wait for the ID tokens to expire."""
    logins: dict[str, ShortLogin] = {}
    with contextlib.ExitStack() as stack:
        for issuer in ("rt", "nort"):
            ctx = browser.new_context()
            stack.callback(ctx.close)
            ctx.set_default_timeout(TIMEOUT_MS)
            page = ctx.new_page()
            logins[issuer] = ShortLogin(page, _short_login(page, short_site, issuer))
        yield logins


@pytest.fixture(scope="module", autouse=True)
def _short_logins_first(request: pytest.FixtureRequest) -> None:
    """Make the short-lived logins before the module's first test, so the wait for their ID tokens
    to expire runs beside the other tests. Their failure is not every test's: the two tests that
    use them meet it again (pytest keeps a module fixture's error)."""
    with contextlib.suppress(Exception):
        request.getfixturevalue("short_logins")


def _wait_past(exp: int) -> None:
    while time.time() <= exp + 1:
        time.sleep(0.2)


def test_short_id_token_with_refresh_token_remints_through_a_refresh(
    short_site: ShortSite, short_logins: dict[str, ShortLogin], site: Site
) -> None:
    login = short_logins["rt"]
    page, first = login.page, login.first
    # The Slurm token never outlives the ID token it came from (issued just before it).
    assert first["exp"] - first["iat"] <= SHORT_TTL, first
    _wait_past(first["exp"])
    refreshes = sum(1 for line in short_site.prov.lines if line.startswith("POST /token 200"))

    page.fill("#lifetime", "300")
    before = int(time.time())
    with page.expect_navigation():
        page.click("#mint")
    _wait_for(page, "#token", short_site.bridge)
    new = jwt_claims(page.input_value("#token"))
    assert new["sun"] == "alice"
    assert before <= new["iat"] and new["exp"] - new["iat"] <= SHORT_TTL, new
    after = sum(1 for line in short_site.prov.lines if line.startswith("POST /token 200"))
    assert after == refreshes + 1, "\n".join(short_site.prov.lines[-20:])
    assert get_jobs(site.slurm.cluster, page.input_value("#token"), "alice").status_code == 200
    audit = _last_audit(short_site.bridge, "remint")
    assert audit["outcome"] == "minted" and audit["user"] == "alice"


def test_short_id_token_without_refresh_token_asks_for_a_new_login(
    short_site: ShortSite, short_logins: dict[str, ShortLogin]
) -> None:
    login = short_logins["nort"]
    assert login.first["exp"] - login.first["iat"] <= SHORT_TTL, login.first
    _wait_past(login.first["exp"])
    _remint_refused(login.page, short_site.bridge.url, "log in again")
