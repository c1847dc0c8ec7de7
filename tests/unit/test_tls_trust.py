"""Outbound HTTPS trust: the system store by default, a per-issuer ``ca_file`` or ``--ca-file``.

The identity provider is the local test issuer served over TLS with a certificate from a CA made
here (for 127.0.0.1 and localhost). Each fetcher is tried three ways: the CA in no store (refused),
the CA in ``ca_file`` (accepted), and the CA in the system store the code reads (accepted) -- once
through ``SSL_CERT_FILE`` and once, in a private mount namespace, by putting a bundle that holds
it in place of OpenSSL's default file, as ``update-ca-certificates`` would, with no variable set.
Each time certifi's bundle alone is shown to refuse the same server.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import certifi
import pytest
from click.testing import CliRunner

from slurm_jwt_bridge.cli import main
from slurm_jwt_bridge.device_login import LoginError, device_login
from slurm_jwt_bridge.errors import BridgeError
from slurm_jwt_bridge.jwks_file import JwksError, fetch_jwks
from slurm_jwt_bridge.keycloak_setup import SetupError, SetupOptions, config_blocks, realm_issuer
from slurm_jwt_bridge.outbound import TrustError, requests_verify, trust
from slurm_jwt_bridge.settings import (
    IntrospectionSettings,
    IssuerSettings,
    SettingsError,
    load_settings,
    parse_settings,
)
from slurm_jwt_bridge.upstream import UpstreamVerifier

try:
    from tests.helpers.test_issuer import IssuerHandle, TestIssuer
    from tests.helpers.tls import TestCA
except ModuleNotFoundError:  # tests/ itself is on sys.path (its conftest.py), the repo root not
    from helpers.test_issuer import IssuerHandle, TestIssuer
    from helpers.tls import TestCA

REPO = Path(__file__).resolve().parents[2]
CERT_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture(autouse=True)
def no_trust_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CERT_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


@pytest.fixture
def idp(ca: TestCA) -> Iterator[TestIssuer]:
    server = TestIssuer(tls=ca.server_context()).start()
    yield server
    server.stop()


@pytest.fixture
def kc(idp: TestIssuer) -> IssuerHandle:
    return idp.add_issuer("/realms/hpc", jwks_path="/realms/hpc/protocol/openid-connect/certs")


def opaque(kc: IssuerHandle) -> str:
    """An opaque token the issuer answers for at its introspection endpoint."""
    now = int(time.time())
    kc.introspection["opaque-token"] = {
        "active": True,
        "iss": kc.issuer,
        "sub": "user-2",
        "azp": "portal",
        "typ": "Bearer",
        "exp": now + 120,
        "iat": now,
        "preferred_username": "alice",
    }
    return "opaque-token"


def issuer_cfg(kc: IssuerHandle, **kw: Any) -> IssuerSettings:
    values: dict[str, Any] = {
        "name": "kc",
        "kind": "keycloak",
        "issuer": kc.issuer,
        "allowed_clients": ("portal",),
    }
    values.update(kw)
    return IssuerSettings(**values)


def handshake(ctx: ssl.SSLContext, port: int) -> str:
    """ "ok", or why ``ctx`` refuses the server on ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                return "ok"
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_message


def certifi_refuses(idp: TestIssuer) -> None:
    port = int(idp.base_url.rsplit(":", 1)[1])
    why = handshake(ssl.create_default_context(cafile=certifi.where()), port)
    assert why == "unable to get local issuer certificate", why


# ---------------------------------------------------------------- (a) refused by default


def test_untrusted_ca_is_refused_by_every_fetcher(idp: TestIssuer, kc: IssuerHandle) -> None:
    v = UpstreamVerifier([issuer_cfg(kc)])
    with pytest.raises(BridgeError) as info:
        v.verify(kc.mint(kc.keycloak_claims(azp="portal", username="alice")))
    assert info.value.metric == "jwks_unavailable"
    assert "CERTIFICATE_VERIFY_FAILED" in v.health()["kc"]["last_error"]
    with pytest.raises(JwksError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch_jwks(kc.jwks_uri)
    with pytest.raises(SetupError, match="cannot reach"):
        realm_issuer(idp.base_url, "hpc")


# ---------------------------------------------------------------- (b) accepted with ca_file


def test_issuer_ca_file_is_trusted(idp: TestIssuer, kc: IssuerHandle, ca: TestCA) -> None:
    certifi_refuses(idp)
    v = UpstreamVerifier([issuer_cfg(kc, ca_file=str(ca.ca_file))])
    verified = v.verify(kc.mint(kc.keycloak_claims(azp="portal", username="alice")))
    assert verified.subject and verified.client_id == "portal"
    assert v.discovery("kc")["issuer"] == kc.issuer


def test_issuer_ca_file_replaces_the_system_store(
    idp: TestIssuer, kc: IssuerHandle, ca: TestCA, tmp_path: Path
) -> None:
    """A ca_file naming another CA refuses this server even when the system store trusts it."""
    other = TestCA(tmp_path / "other", name="another CA")
    os.environ["SSL_CERT_FILE"] = str(ca.bundle_with(certifi.where(), tmp_path / "b.pem"))
    v = UpstreamVerifier([issuer_cfg(kc, ca_file=str(other.ca_file))])
    with pytest.raises(BridgeError):
        v.verify(kc.mint(kc.keycloak_claims(azp="portal", username="alice")))
    assert "CERTIFICATE_VERIFY_FAILED" in v.health()["kc"]["last_error"]


def test_introspection_trusts_the_issuer_ca_file(
    idp: TestIssuer, kc: IssuerHandle, ca: TestCA
) -> None:
    intro = IntrospectionSettings("bridge", "bridge-secret")
    token = opaque(kc)
    refused = UpstreamVerifier([issuer_cfg(kc, introspection=intro)])
    with pytest.raises(BridgeError) as info:
        refused.verify(token)
    assert info.value.metric == "introspection_unavailable"  # python-keycloak: "Can't connect"
    trusted = UpstreamVerifier([issuer_cfg(kc, introspection=intro, ca_file=str(ca.ca_file))])
    assert trusted.verify(token).client_id == "portal"


def test_cli_ca_file_flags(idp: TestIssuer, kc: IssuerHandle, ca: TestCA, tmp_path: Path) -> None:
    assert fetch_jwks(kc.jwks_uri, ca_file=str(ca.ca_file))["keys"]
    assert realm_issuer(idp.base_url, "hpc", ca_file=str(ca.ca_file)) == kc.issuer
    out = tmp_path / "jwks.json"
    runner = CliRunner()
    r = runner.invoke(main, ["jwks", "sync", "--url", kc.jwks_uri, "--out", str(out)])
    assert r.exit_code == 1 and "CERTIFICATE_VERIFY_FAILED" in r.output, r.output
    r = runner.invoke(
        main,
        ["jwks", "sync", "--url", kc.jwks_uri, "--out", str(out), "--ca-file", str(ca.ca_file)],
    )
    assert r.exit_code == 3, r.output  # changed
    assert json.loads(out.read_text())["keys"]


# ---------------------------------------------------------------- (c) the system store


def test_ca_in_the_system_store_via_ssl_cert_file(
    idp: TestIssuer, kc: IssuerHandle, ca: TestCA, tmp_path: Path
) -> None:
    certifi_refuses(idp)
    os.environ["SSL_CERT_FILE"] = str(ca.bundle_with(certifi.where(), tmp_path / "bundle.pem"))
    v = UpstreamVerifier([issuer_cfg(kc)])
    assert v.verify(kc.mint(kc.keycloak_claims(azp="portal", username="alice")))
    assert fetch_jwks(kc.jwks_uri)["keys"]
    assert realm_issuer(idp.base_url, "hpc") == kc.issuer
    assert requests_verify() == os.environ["SSL_CERT_FILE"]


SYSTEM_STORE_PROBE = textwrap.dedent(
    """
    import json, sys
    from slurm_jwt_bridge.jwks_file import fetch_jwks
    from slurm_jwt_bridge.keycloak_setup import realm_issuer
    from slurm_jwt_bridge.settings import IntrospectionSettings, IssuerSettings
    from slurm_jwt_bridge.upstream import UpstreamVerifier

    base, issuer, jwks_uri, token, opaque = sys.argv[1:]
    out = {}
    s = IssuerSettings(name="kc", kind="keycloak", issuer=issuer, allowed_clients=("portal",),
                       introspection=IntrospectionSettings("bridge", "bridge-secret"))
    for what, call in (
        ("verify", lambda: UpstreamVerifier([s]).verify(token).subject),
        ("introspect", lambda: UpstreamVerifier([s]).verify(opaque).client_id),
        ("fetch_jwks", lambda: len(fetch_jwks(jwks_uri)["keys"])),
        ("keycloak_setup", lambda: realm_issuer(base, "hpc")),
    ):
        try:
            out[what] = ["ok", call()]
        except Exception as exc:
            out[what] = ["refused", str(exc)[:300]]
    print(json.dumps(out))
    """
)


def in_private_store(bundle: Path, *args: str) -> dict[str, Any]:
    """Run the probe where OpenSSL's default CA file is ``bundle`` (a private mount namespace:
    nothing outside this process tree sees it), with no certificate variable set."""
    default_file = os.path.realpath(ssl.get_default_verify_paths().openssl_cafile)
    unshare = shutil.which("unshare")
    if unshare is None or not os.path.isfile(default_file):
        reason = f"no unshare or no OpenSSL default CA file ({default_file})"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k not in CERT_ENV}
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    cmd = [unshare, "--map-root-user", "--mount", "sh", "-c", script, "sh", str(bundle)]
    cmd += [default_file, sys.executable, "-c", SYSTEM_STORE_PROBE, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    if r.returncode != 0 and "mount" in r.stderr and os.environ.get("CI") is None:
        pytest.skip(f"no private mount namespace here: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_ca_in_the_distributions_store_without_variables(
    idp: TestIssuer, kc: IssuerHandle, ca: TestCA, tmp_path: Path
) -> None:
    certifi_refuses(idp)
    token = kc.mint(kc.keycloak_claims(azp="portal", username="alice"))
    opaque_token = opaque(kc)
    args = (idp.base_url, kc.issuer, kc.jwks_uri, token, opaque_token)
    system = Path(os.path.realpath(ssl.get_default_verify_paths().openssl_cafile))

    without = in_private_store(system, *args)  # the store as shipped: the test CA is not in it
    assert {k: v[0] for k, v in without.items()} == dict.fromkeys(without, "refused"), without

    store = ca.bundle_with(system, tmp_path / "ca-certificates.crt")
    got = in_private_store(store, *args)
    assert got == {
        "verify": ["ok", got["verify"][1]],
        "introspect": ["ok", "portal"],
        "fetch_jwks": ["ok", 1],
        "keycloak_setup": ["ok", kc.issuer],
    }, got


# ---------------------------------------------------------------- (d) a bad ca_file at start


def write_config(tmp_path: Path, kc_issuer: str, ca_line: str) -> Path:
    cfg = tmp_path / "etc" / "bridge.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(
        textwrap.dedent(
            f"""
            [[issuers]]
            name = "kc"
            kind = "keycloak"
            issuer = "{kc_issuer}"
            allowed_clients = ["portal"]
            {ca_line}
            """
        )
    )
    return cfg


def test_ca_file_is_relative_to_the_config_file(tmp_path: Path, ca: TestCA) -> None:
    (tmp_path / "etc" / "pki").mkdir(parents=True)
    shutil.copy(ca.ca_file, tmp_path / "etc" / "pki" / "idp-ca.pem")
    cfg = write_config(tmp_path, "https://sso.example.org/realms/hpc", 'ca_file = "pki/idp-ca.pem"')
    s = load_settings(cfg)
    assert s.issuers[0].ca_file == str(tmp_path / "etc" / "pki" / "idp-ca.pem")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "CA file not found"),
        (b"not a certificate\n", "holds no PEM CA certificate"),
        ("directory", "cannot read CA file"),
    ],
)
def test_bad_ca_file_is_refused_at_start_in_one_line(
    tmp_path: Path, content: bytes | str | None, expected: str
) -> None:
    path = tmp_path / "etc" / "ca.pem"
    path.parent.mkdir(parents=True)
    if content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    cfg = write_config(tmp_path, "https://sso.example.org/realms/hpc", 'ca_file = "ca.pem"')
    with pytest.raises(SettingsError) as info:
        load_settings(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("issuers[0].ca_file: ") and expected in message, message
    r = CliRunner().invoke(main, ["config", "check", "--config", str(cfg)])
    assert r.exit_code == 1 and expected in r.output and "Traceback" not in r.output


def test_unreadable_ca_file_is_refused(tmp_path: Path, ca: TestCA) -> None:
    if os.geteuid() == 0:
        with pytest.raises(TrustError, match="cannot read CA file: Is a directory"):
            trust(tmp_path)  # root reads any file: the nearest check is a directory
        return
    ca.ca_file.chmod(0)
    with pytest.raises(TrustError, match="cannot read CA file"):
        trust(ca.ca_file)


def test_bad_cli_ca_file_is_one_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        main,
        [
            "jwks",
            "sync",
            "--url",
            "https://127.0.0.1:9/jwks",
            "--out",
            str(tmp_path / "j.json"),
            "--ca-file",
            str(tmp_path / "missing.pem"),
        ],
    )
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "missing.pem" in r.output


def test_login_trusts_the_system_store_or_ca_file(
    idp: TestIssuer, ca: TestCA, tmp_path: Path
) -> None:
    """The test issuer is no bridge (404): reaching it at all is what trust decides."""
    with pytest.raises(LoginError, match=r"cannot reach .*ConnectError"):
        device_login(idp.base_url, prompt=lambda line: None)
    with pytest.raises(LoginError, match="HTTP 404"):
        device_login(idp.base_url, prompt=lambda line: None, ca_file=str(ca.ca_file))
    os.environ["SSL_CERT_FILE"] = str(ca.bundle_with(certifi.where(), tmp_path / "bundle.pem"))
    with pytest.raises(LoginError, match="HTTP 404"):
        device_login(idp.base_url, prompt=lambda line: None)
    r = CliRunner().invoke(
        main, ["login", "--url", idp.base_url, "--ca-file", str(tmp_path / "missing.pem")]
    )
    assert r.exit_code == 1 and "missing.pem: CA file not found" in r.output, r.output


def test_keycloak_setup_ca_file_reaches_keycloak(
    idp: TestIssuer, ca: TestCA, tmp_path: Path
) -> None:
    """The admin sign-in goes through python-keycloak (requests): refused by default, then the
    test issuer (no admin API) answers the token request with 404 once the CA is trusted."""
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    args = ["keycloak", "setup", "--server", idp.base_url, "--realm", "hpc"]
    args += ["--public-url", "https://bridge.example.org", "--admin-client-id", "admin"]
    args += ["--admin-client-secret-file", str(secret)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and f"cannot reach {idp.base_url}" in r.output, r.output
    r = CliRunner().invoke(main, [*args, "--ca-file", str(ca.ca_file)])
    assert r.exit_code == 1 and "refused (HTTP 404)" in r.output, r.output


def test_keycloak_setup_blocks_carry_the_ca_file(tmp_path: Path, ca: TestCA) -> None:
    options = SetupOptions(
        server="https://sso.example.org",
        realm="hpc",
        public_url="https://bridge.example.org/",
        ca_file=str(ca.ca_file),
    )
    text = config_blocks(options, "https://sso.example.org/realms/hpc", "secret")
    doc = tomllib.loads(text)
    doc.update(keys={"dir": str(tmp_path / "keys")})
    (iss,) = parse_settings(doc).issuers
    assert iss.ca_file == str(ca.ca_file)
    without = config_blocks(
        replace(options, ca_file=None), "https://sso.example.org/realms/hpc", "s"
    )
    assert "ca_file" not in without
