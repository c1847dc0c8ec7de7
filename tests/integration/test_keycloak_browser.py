"""Browser login and terminal login against a real Keycloak, with Debian Chromium playing the
user at Keycloak's own pages, the bridge as its own process and real Slurm 26.05.

What is proven:
- alice logs in at Keycloak's login page (authorization code with PKCE S256); the bridge's
  token page shows her Slurm token, which slurmrestd 26.05 accepts, and a job runs as alice;
- logout revokes the bridge's refresh token and goes through Keycloak's
  ``end_session_endpoint`` (RP-initiated logout): the bridge session and Keycloak's end, the
  next login asks for the password again;
- ``slurm-jwt-bridge login`` (device grant at Keycloak): the user opens the printed URL in
  Chromium, signs in, grants access, and the command prints a token slurmrestd accepts.
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.helpers.browser import Site as SiteOf
from tests.helpers.browser import (
    bridge_toml,
    jwt_claims,
    login_issuer_toml,
    reserved_port,
    start_bridge_at,
)
from tests.helpers.keycloak import BRIDGE_AUDIENCE, KeycloakServer
from tests.helpers.slurm import ensure_test_users
from tests.helpers.slurm_rest import BridgeCluster, get_jobs, run_whoami_job
from tests.integration.test_device_and_service import JWT_RE, _login_command

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = [pytest.mark.browser, pytest.mark.keycloak, pytest.mark.slurm]

# Keycloak's pages answer slowly on a loaded machine; this bounds each browser action (ms).
BROWSER_TIMEOUT_MS = 120_000

Site = SiteOf[KeycloakServer]


def _config(kc: KeycloakServer, keys_dir: str, port: int) -> str:
    issuer = login_issuer_toml(
        "kc",
        "keycloak",
        kc.issuer(),
        BRIDGE_AUDIENCE,
        f"{BRIDGE_AUDIENCE}-secret",
        [BRIDGE_AUDIENCE],
        scopes=("openid", "profile", "email"),
        display_name="Keycloak",
    )
    cli = '[cli_login]\nissuer = "kc"\nclient_id = "bridge-cli"\nscopes = ["openid"]\n'
    # Browser login maps the ID token, which carries groups but (by default) no roles.
    return bridge_toml(port, keys_dir, issuer + cli, browser="", public_url=False)


def _register_bridge_url(kc: KeycloakServer, url: str) -> None:
    """Add this bridge's exact callback and post-logout URIs to the realm's browser client."""
    admin = kc.admin()
    internal = admin.get_client_id(BRIDGE_AUDIENCE)
    client = admin.get_client(internal)
    attrs = client.get("attributes") or {}
    logout = [u for u in attrs.get("post.logout.redirect.uris", "").split("##") if u]
    admin.update_client(
        internal,
        {
            "redirectUris": [*client["redirectUris"], f"{url}/auth/callback"],
            "attributes": {**attrs, "post.logout.redirect.uris": "##".join([*logout, f"{url}/"])},
        },
    )


@pytest.fixture(scope="module")
def site(
    keycloak: KeycloakServer, slurm_2605: BridgeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    ensure_test_users(["alice"], chroot=slurm_2605.cluster.chroot)
    work = tmp_path_factory.mktemp("kc-browser")
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(reserved_port())
        url = f"http://127.0.0.1:{port}"
        _register_bridge_url(keycloak, url)
        bridge = start_bridge_at(work, port, _config(keycloak, str(slurm_2605.keys_dir), port))
        stack.callback(bridge.stop)
        yield Site(keycloak, bridge, slurm_2605)


def _keycloak_sign_in(page: Page, user: str) -> None:
    """Keycloak's own login page (theme keycloak.v2)."""
    page.wait_for_selector("#kc-form-login")
    page.fill("#username", user)
    page.fill("#password", f"{user}-password")
    page.click("#kc-login")


def _wait(page: Page, selector: str, site: Site) -> None:
    try:
        page.wait_for_selector(selector)
    except Exception as exc:
        raise AssertionError(
            f"{selector} did not appear ({type(exc).__name__}); the browser is at {page.url}:\n"
            f"{page.inner_text('body')[:1500]}\n--- bridge log ---\n{site.bridge.log_tail()}"
        ) from None


def test_browser_login_at_keycloak_and_logout(site: Site, context: BrowserContext) -> None:
    page = context.new_page()
    page.goto(site.url + "/")
    with page.expect_request(lambda r: r.url.startswith(site.prov.issuer() + "/protocol/")) as req:
        page.click("#login")
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(req.value.url).query))
    assert params["client_id"] == BRIDGE_AUDIENCE
    assert params["code_challenge_method"] == "S256"
    assert params["redirect_uri"] == site.url + "/auth/callback"
    _keycloak_sign_in(page, "alice")
    _wait(page, "#token", site)
    token = page.input_value("#token")
    assert page.inner_text("#user") == "alice"
    assert jwt_claims(token)["sun"] == "alice"
    state, who = run_whoami_job(site.slurm.cluster, token, "alice")
    assert (state, who) == ("COMPLETED", "alice")

    # RP-initiated logout at Keycloak's end_session_endpoint, back to the bridge.
    with page.expect_request(
        lambda r: r.url.startswith(site.prov.endpoint("end_session_endpoint"))
    ) as req:
        page.click("#logout")
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(req.value.url).query))
    assert params["post_logout_redirect_uri"] == site.url + "/"
    # Keycloak asks to confirm the logout while its session lives (no id_token_hint is sent);
    # the bridge may already have ended that session by revoking its refresh token.
    for _ in range(600):
        if page.url == site.url + "/":
            break
        if page.locator("#kc-logout").count():
            page.click("#kc-logout")
        page.wait_for_timeout(200)
    page.wait_for_url(site.url + "/")
    assert page.locator("#token").count() == 0
    # Keycloak's session ended too: the next login asks for the password again.
    page.click("#login")
    page.wait_for_selector("#kc-form-login")


def test_terminal_login_with_keycloak_device_page(site: Site, browser: Browser) -> None:
    with _login_command(site.url) as cmd:
        where = cmd.wait_line("To log in, open ", timeout=300)
        code = cmd.wait_line("and check that the code shown is: ", timeout=60)
        assert where == f"{site.prov.issuer()}/device?user_code={code}"

        ctx = browser.new_context()
        ctx.set_default_timeout(BROWSER_TIMEOUT_MS)
        page = ctx.new_page()
        page.goto(where)  # the code is in the link: Keycloak goes straight to its login
        _keycloak_sign_in(page, "alice")
        page.wait_for_selector("#kc-login[name=accept]")  # "Grant Access to ..."
        page.click("#kc-login[name=accept]")
        page.wait_for_selector("text=Device Login Successful")
        ctx.close()

        out = cmd.finish(timeout=300)
    m = re.fullmatch(rf"SLURM_JWT=({JWT_RE})\n", out)
    assert m, f"stdout was {out!r}"
    token = m.group(1)
    assert jwt_claims(token)["sun"] == "alice"
    r = get_jobs(site.slurm.cluster, token, "alice")
    assert r.status_code == 200, f"slurmrestd: {r.status_code} {r.text[:500]}"
