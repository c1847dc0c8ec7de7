"""What the browser and device-login integration tests share: Debian's Chromium driven by
Playwright, oidc-provider's sign-in form, a bridge on a port picked before the provider starts.

    with chromium() as browser:                      # skips locally / fails in CI without it
        page = browser.new_context().new_page()
        page.goto(f"{bridge_url}/login")
        idp_sign_in(page, "alice")                   # oidc-provider's devInteractions form

The bridge's callback URL has to be registered at the provider (``web_client``) before the
provider starts, and the provider's issuer URL has to be in the bridge's config: so pick the
bridge port first (``reserved_port``: held until the bridge has bound it, so no other test
process can take it meanwhile), start the provider, then the bridge with ``start_bridge_at``
(``tests.helpers.bridge.start_bridge`` picks its own port and passes it as ``--port``).
Never ``playwright install``: the tests use /usr/bin/chromium.

Each such test module runs one ``Site``: a provider, a bridge (sometimes a second one) and the
Slurm cluster judging the tokens. ``bridge_toml`` writes the bridge's configuration: what the
sites share (loopback server, keys, audit on stdout, the ``[browser]`` table, the mapping of
``preferred_username`` for members of hpc-users) around the sections a module adds;
``login_issuer_toml`` writes one ``[[issuers]]`` entry of a login client.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from tests.conftest import skip_or_fail
from tests.helpers.bridge import BridgeServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from tests.helpers.slurm_rest import BridgeCluster

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
# Browser actions wait at most this long (ms): everything here is local.
TIMEOUT_MS = 15_000


def require_node() -> None:
    """The test OpenID provider is a node program (tests/oidc-provider)."""
    if shutil.which("node") is None:
        skip_or_fail("node is not installed (the test OpenID provider needs it)")


def require_chromium() -> None:
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} is missing (Debian package chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_or_fail("the Python package playwright is not installed")


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Debian Chromium; closed (and Playwright's driver stopped) on exit."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def web_client(client_id: str, secret: str, bridge_url: str) -> dict[str, Any]:
    """oidc-provider metadata of a confidential login client for the bridge at ``bridge_url``."""
    return {
        "client_id": client_id,
        "client_secret": secret,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [f"{bridge_url}/auth/callback"],
        "post_logout_redirect_uris": [f"{bridge_url}/"],
        "token_endpoint_auth_method": "client_secret_basic",
    }


def idp_sign_in(page: Page, username: str) -> None:
    """Fill oidc-provider's devInteractions sign-in form (any password) and submit it."""
    page.wait_for_selector("input[name=login]", timeout=TIMEOUT_MS)
    page.fill("input[name=login]", username)
    page.fill("input[name=password]", "anything")
    page.click("button[type=submit]")


def toml_str(value: str) -> str:
    """A TOML basic string (JSON's escaping is valid TOML for these values)."""
    return json.dumps(value)


def toml_list(values: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(toml_str(v) for v in values) + "]"


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A free 127.0.0.1 port, held until the block ends.

    The holding socket is bound with SO_REUSEADDR but never listens: other processes' bind to
    port 0 cannot get the port, while a server that also sets SO_REUSEADDR (werkzeug, which
    ``serve`` runs) can still bind and listen on it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def start_bridge_at(
    workdir: Path, port: int, config_toml: str, env: dict[str, str] | None = None
) -> BridgeServer:
    """``slurm-jwt-bridge serve`` on a port chosen beforehand; stopped by the caller."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / f"bridge-{port}.toml"
    cfg.write_text(config_toml)
    server = BridgeServer(cfg, port, workdir / f"bridge-{port}.log", env or {})
    try:
        server.wait_ready()
        # /healthz answered; make sure it was this process (not another test's bridge).
        banner = f"Running on http://127.0.0.1:{port}"
        deadline = time.monotonic() + 5
        while banner not in server.log_tail(200):
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bridge did not bind port {port}:\n{server.log_tail()}")
            time.sleep(0.05)
    except Exception:
        server.stop()
        raise
    return server


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (slurmrestd does the verifying in these tests)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# ---------------------------------------------------------------- a site: provider, bridge, Slurm

Provider = TypeVar("Provider")
# Browser login and the device page map the ID token's user name for members of hpc-users.
HPC_USERS_RULE = """
[[mapping.rules]]
claim = "preferred_username"
require_groups = ["hpc-users"]
"""


@dataclass
class Site(Generic[Provider]):
    """A test module's identity provider, its bridge and the cluster judging the tokens;
    ``chooser``: a second bridge where a module needs one (two login issuers)."""

    prov: Provider
    bridge: BridgeServer
    slurm: BridgeCluster
    chooser: BridgeServer | None = None

    @property
    def url(self) -> str:
        return self.bridge.url


def bridge_toml(
    port: int,
    keys_dir: Path | str,
    sections: str,
    *,
    browser: str | None = "session_lifetime = 3600",
    public_url: bool = True,
) -> str:
    """A bridge on 127.0.0.1:``port`` (``public_url`` its own http URL), signing with
    ``keys_dir``, auditing to stdout; ``browser``: more keys of the ``[browser]`` table, which
    turns browser login on with plain-http cookies (None: browser login off); then
    ``sections`` (issuers, ``[cli_login]``, ...) and ``HPC_USERS_RULE``."""
    url = f'public_url = "http://127.0.0.1:{port}"\n' if public_url else ""
    table = (
        "enabled = false\n"
        if browser is None
        else f"enabled = true\nsecure_cookies = false\n{browser}\n"
    )
    return f"""
[server]
host = "127.0.0.1"
port = {port}
{url}
[keys]
dir = {toml_str(str(keys_dir))}

[audit]
destination = "stdout"

[browser]
{table}
{sections}
{HPC_USERS_RULE}"""


def login_issuer_toml(
    name: str,
    kind: str,
    issuer: str,
    client_id: str,
    client_secret: str,
    audiences: list[str],
    *,
    scopes: tuple[str, ...] = ("openid", "profile", "email", "groups"),
    display_name: str | None = None,
) -> str:
    """One ``[[issuers]]`` entry with a login client, accepting access and ID tokens."""
    shown = f"display_name = {toml_str(display_name)}\n" if display_name else ""
    return f"""
[[issuers]]
name = {toml_str(name)}
kind = {toml_str(kind)}
issuer = {toml_str(issuer)}
audiences = {toml_list(audiences)}
token_use = ["access", "id"]
client_id = {toml_str(client_id)}
client_secret = {toml_str(client_secret)}
scopes = {toml_list(list(scopes))}
{shown}"""


@contextlib.contextmanager
def redis_replicas(workdir: Path) -> Iterator[tuple[str, list[int], contextlib.ExitStack]]:
    """A real redis-server and two ports held for two bridge replicas: yields the redis URL,
    the ports and the stack that stops everything started with ``start_replicas``."""
    from tests.helpers.redis import RedisServer

    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed")
    redis = RedisServer(workdir / "redis")
    with contextlib.ExitStack() as stack:
        stack.callback(redis.stop)
        ports = [stack.enter_context(reserved_port()) for _ in range(2)]
        yield redis.url, ports, stack


def start_replicas(
    stack: contextlib.ExitStack, workdir: Path, configs: dict[int, str]
) -> list[BridgeServer]:
    """``serve --prod --workers 2`` (gunicorn) on each port with its configuration, stopped by
    ``stack``; returns once every replica answers."""
    servers = []
    for port, config in configs.items():
        path = workdir / f"bridge-{port}.toml"
        path.write_text(config)
        server = BridgeServer(
            path, port, workdir / f"bridge-{port}.log", {}, ("--prod", "--workers", "2")
        )
        stack.callback(server.stop)
        servers.append(server)
    for server in servers:
        server.wait_ready(timeout=90)  # two gunicorn masters, four workers booting
    return servers
