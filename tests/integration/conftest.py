"""Fixtures for integration tests against real Slurm daemons trusting the bridge's keys.

``slurm_2205`` / ``slurm_2411`` / ``slurm_2605`` (session): a keys dir made by the real CLI
(``keys init``), its JWKS exported by the CLI (``jwks export``), and a running cluster whose
jwt_key holds the bridge's HS256 key bytes and whose jwks file is that export. All can run at
once (own keys dir, ports, ClusterName). Tests that change keys or the controller (rotation) use
``make_slurm`` instead, which starts a fresh cluster for the test alone (~0.2 s) and stops it
afterwards; ``make_slurm_module`` does the same for every test of one module.

Without root or the Slurm packages the fixtures skip locally and fail in CI (``skip_or_fail``).
Helpers (CLI runner, REST calls, job submission) are in tests/helpers/slurm_rest.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

try:
    from tests.helpers import slurm as slurm_helper
    from tests.helpers.bridge import BridgeServer, start_bridge
    from tests.helpers.browser import TIMEOUT_MS, chromium
    from tests.helpers.keycloak import KeycloakServer, KeycloakStartError, start_keycloak
    from tests.helpers.oidc import OidcProvider, start_oidc_provider
    from tests.helpers.slurm_rest import (
        VERSIONS,
        BridgeCluster,
        bridge,
        jwks_serving_config,
        proxy_bridge_config,
        start_bridge_cluster,
    )
except ModuleNotFoundError:  # tests/ itself is on sys.path (its conftest.py), the repo root not
    from helpers import slurm as slurm_helper  # type: ignore[no-redef]
    from helpers.bridge import BridgeServer, start_bridge  # type: ignore[no-redef]
    from helpers.browser import TIMEOUT_MS, chromium  # type: ignore[no-redef]
    from helpers.keycloak import (  # type: ignore[no-redef]
        KeycloakServer,
        KeycloakStartError,
        start_keycloak,
    )
    from helpers.oidc import OidcProvider, start_oidc_provider  # type: ignore[no-redef]
    from helpers.slurm_rest import (  # type: ignore[no-redef]
        VERSIONS,
        BridgeCluster,
        bridge,
        jwks_serving_config,
        proxy_bridge_config,
        start_bridge_cluster,
    )

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext

__all__ = ["BridgeCluster", "BridgeServer", "bridge"]

HOST_SLURM_FILES = (
    "/usr/sbin/slurmctld",
    "/usr/sbin/slurmd",
    "/usr/sbin/slurmrestd",
    "/usr/sbin/munged",
    "/usr/bin/scontrol",
)


def _top_conftest(config: pytest.Config) -> ModuleType:
    """tests/conftest.py as pytest loaded it (all conftest.py here are modules named
    "conftest", so it cannot simply be imported by name)."""
    path = Path(__file__).resolve().parent.parent / "conftest.py"
    mod = config.pluginmanager.get_plugin(str(path))
    if mod is None:  # loaded under another path spelling: load our own copy
        spec = importlib.util.spec_from_file_location("_sjb_tests_conftest", path)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return mod


def _skip_or_fail(config: pytest.Config, reason: str) -> None:
    _top_conftest(config).skip_or_fail(reason)


def _require_slurm(config: pytest.Config, version: str) -> None:
    """Skip (fail in CI) unless this machine can run the real cluster of ``version``."""
    if os.geteuid() != 0:
        _skip_or_fail(config, "real Slurm clusters need root (daemons, chroot, useradd)")
    if version == "22.05":
        missing = [f for f in HOST_SLURM_FILES if not Path(f).exists()]
        if missing:
            _skip_or_fail(
                config,
                f"Slurm 22.05 packages missing ({', '.join(missing)}): "
                "run scripts/install-system-deps.sh",
            )
        return
    suite = slurm_helper.CHROOT_SUITES[version]
    root = slurm_helper.chroot_path(suite)
    if not slurm_helper._chroot_complete(root) and shutil.which("debootstrap") is None:
        _skip_or_fail(config, f"no {suite} chroot at {root} and no debootstrap to build it")
    try:
        slurm_helper.ensure_chroot(suite)
    except Exception as exc:  # network, disk: the environment, not the code under test
        _skip_or_fail(config, f"cannot build the Slurm {version} {suite} chroot: {exc}")


def _start(
    config: pytest.Config, version: str, workdir: Path, auth_alt_parameters: tuple[str, ...] = ()
) -> BridgeCluster:
    _require_slurm(config, version)
    return start_bridge_cluster(version, workdir, auth_alt_parameters=auth_alt_parameters)


def _session_cluster_fixture(version: str, where: str) -> Any:
    """The session fixture ``slurm_<version digits>``: one cluster shared by the session."""

    def cluster(
        pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[BridgeCluster]:
        bc = _start(pytestconfig, version, tmp_path_factory.mktemp(f"slurm{version}"))
        try:
            yield bc
        finally:
            bc.stop()

    cluster.__doc__ = f"Slurm {version} ({where}) trusting its own bridge keys dir."
    name = f"slurm_{version.replace('.', '')}"
    return pytest.fixture(scope="session", name=name)(cluster)


slurm_2205 = _session_cluster_fixture("22.05", "host packages")
slurm_2411 = _session_cluster_fixture("24.11", "trixie chroot")
slurm_2605 = _session_cluster_fixture("26.05", "sid chroot")


@pytest.fixture(scope="module")
def idp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The npm oidc-provider (tests/oidc-provider), one per test module that asks for it."""
    if shutil.which("node") is None:
        _skip_or_fail(request.config, "node is not installed (the test OpenID provider needs it)")
    label = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    prov: OidcProvider = start_oidc_provider(tmp_path_factory.mktemp(f"{label}-op"))
    try:
        yield prov
    finally:
        prov.stop()


@pytest.fixture(scope="session")
def keycloak(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KeycloakServer]:
    """A real Keycloak (tests/helpers/keycloak.py) with the realms of tests/keycloak; one per
    session: a start takes tens of seconds (minutes on a loaded machine)."""
    missing = [tool for tool in ("java", "mvn", "unzip") if shutil.which(tool) is None]
    if missing:
        _skip_or_fail(pytestconfig, f"Keycloak needs {', '.join(missing)} (OpenJDK 17 and Maven)")
    try:
        server = start_keycloak(tmp_path_factory.mktemp("keycloak"))
    except KeycloakStartError as exc:
        if "dependency:copy" in str(exc):  # Maven Central unreachable: the environment
            _skip_or_fail(pytestconfig, f"cannot fetch Keycloak: {str(exc)[:500]}")
        raise
    # Not a test result: what a start cost, for whoever watches the run.
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(
            f"\nKeycloak ready after {server.ready_after:.1f} s, "
            f"RSS {server.rss_kib() / 1024:.0f} MiB (pid {server.pid})",
            file=sys.stderr,
        )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def alice(idp: Any) -> str:
    """alice's access token from the provider: a JWT with aud = the resource."""
    return idp.login_tokens("alice")["access_token"]


@pytest.fixture(scope="module")
def proxies(
    idp: Any,
    slurm_2605: BridgeCluster,
    slurm_2205: BridgeCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, BridgeServer]]:
    """One bridge per session cluster, proxying to its slurmrestd with the default settings
    (tests/helpers/slurm_rest.py proxy_bridge_config), keyed by Slurm version."""
    work = tmp_path_factory.mktemp("proxy-bridges")
    servers: dict[str, BridgeServer] = {}
    try:
        for bc in (slurm_2605, slurm_2205):
            servers[bc.version] = start_bridge(
                work / bc.version,
                proxy_bridge_config(idp, bc.keys_dir, bc.cluster.restd_url),
            )
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(params=VERSIONS)
def slurm(request: pytest.FixtureRequest) -> BridgeCluster:
    """The session cluster of each version in turn: a test using it runs once per version.

    Do not rotate keys or restart daemons through it; use ``make_slurm`` for that.
    """
    return request.getfixturevalue(f"slurm_{request.param.replace('.', '')}")


@contextlib.contextmanager
def _cluster_factory(config: pytest.Config, base: Path) -> Iterator[Callable[..., BridgeCluster]]:
    started: list[BridgeCluster] = []

    def make(version: str, auth_alt_parameters: tuple[str, ...] = ()) -> BridgeCluster:
        workdir = base / f"slurm{version}-{len(started)}"
        bc = _start(config, version, workdir, auth_alt_parameters)
        started.append(bc)
        return bc

    try:
        yield make
    finally:
        for bc in started:
            bc.stop()


@pytest.fixture
def make_slurm(
    pytestconfig: pytest.Config, tmp_path: Path
) -> Iterator[Callable[..., BridgeCluster]]:
    """Factory: a fresh cluster + keys dir of the given version, owned by this test alone
    (``auth_alt_parameters``: more AuthAltParameters, e.g. ``("use_jwt_client_ids_only",)``)."""
    with _cluster_factory(pytestconfig, tmp_path) as make:
        yield make


@pytest.fixture(scope="module")
def make_slurm_module(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., BridgeCluster]]:
    """``make_slurm`` whose clusters serve every test of one module."""
    with _cluster_factory(pytestconfig, tmp_path_factory.mktemp("module-slurm")) as make:
        yield make


@pytest.fixture
def serve_bridge(tmp_path: Path) -> Iterator[Callable[[Path], BridgeServer]]:
    """Factory: ``slurm-jwt-bridge serve`` publishing a keys dir's JWKS (tests/helpers/bridge.py);
    stopped by pid after the test."""
    with contextlib.ExitStack() as stack:

        def serve(keys_dir: Path) -> BridgeServer:
            server = start_bridge(tmp_path / "serve", jwks_serving_config(keys_dir))
            stack.callback(server.stop)
            return server

        yield serve


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium (tests/helpers/browser.py), one per test module."""
    with chromium() as b:
        yield b


@pytest.fixture
def context(request: pytest.FixtureRequest, browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser context (its own cookies) for one test; each action waits at most the
    module's ``BROWSER_TIMEOUT_MS`` (default tests/helpers/browser.py ``TIMEOUT_MS``)."""
    ctx = browser.new_context()
    ctx.set_default_timeout(getattr(request.module, "BROWSER_TIMEOUT_MS", TIMEOUT_MS))
    try:
        yield ctx
    finally:
        ctx.close()
