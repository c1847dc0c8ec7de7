"""``keycloak setup`` without a server: option checks, the printed blocks, conflict detection.
(tests/integration/test_keycloak_setup.py runs it against a real Keycloak; the two files need
different names, pytest collects both directories in one session.)"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurm_jwt_bridge.cli import main
from slurm_jwt_bridge.keycloak_setup import (
    SetupError,
    SetupOptions,
    _differences,
    config_blocks,
    desired_clients,
    parse_service_account,
)
from slurm_jwt_bridge.settings import parse_settings

OPTS = SetupOptions(
    server="https://sso.example.org",
    realm="hpc",
    public_url="https://bridge.example.org/",
    service_accounts=(("svc-a", "alice"), ("svc-b", "bob")),
)


def test_service_account_option() -> None:
    assert parse_service_account(" svc-a = nightly ") == ("svc-a", "nightly")
    for bad in ("svc-a", "=nightly", "svc-a=", ""):
        with pytest.raises(SetupError, match="NAME=ACCOUNT"):
            parse_service_account(bad)


def test_blocks_load_with_the_settings_parser(keys_dir: Path) -> None:
    text = config_blocks(OPTS, "https://sso.example.org/realms/hpc", 'se"cr\\et')
    doc = tomllib.loads(text)
    doc.update(keys={"dir": str(keys_dir)}, mapping={"rules": [{"claim": "preferred_username"}]})
    s = parse_settings(doc)
    (iss,) = s.issuers
    assert (iss.kind, iss.client_id, iss.client_secret) == (
        "keycloak",
        "slurm-jwt-bridge",
        'se"cr\\et',
    )
    assert iss.audiences == ("slurm-jwt-bridge",) and iss.token_use == ("access", "id")
    assert (s.cli_login.issuer, s.cli_login.client_id) == ("keycloak", "slurm-jwt-bridge-cli")
    assert [(a.client_id, a.account) for a in s.service_accounts] == [
        ("svc-a", "alice"),
        ("svc-b", "bob"),
    ]


def test_browser_client_has_exact_uris_and_pkce() -> None:
    web = desired_clients(OPTS)["slurm-jwt-bridge"]
    assert web["redirectUris"] == ["https://bridge.example.org/auth/callback"]
    assert web["attributes"]["post.logout.redirect.uris"] == "https://bridge.example.org/"
    assert web["attributes"]["pkce.code.challenge.method"] == "S256"
    assert desired_clients(OPTS)["slurm-jwt-bridge-cli"]["publicClient"] is True


def test_differences_name_each_conflicting_field() -> None:
    want = desired_clients(OPTS)["slurm-jwt-bridge"]
    have = {
        **want,
        "publicClient": True,
        "redirectUris": ["https://bridge.example.org/*"],
        "attributes": {"post.logout.redirect.uris": "+"},
        "name": "renamed by the site",
    }
    diffs = _differences(want, have)
    assert any(d.startswith("publicClient=True") for d in diffs)
    assert any(d.startswith("redirectUris=") for d in diffs)
    assert any("pkce.code.challenge.method" in d for d in diffs)
    assert any("post.logout.redirect.uris" in d for d in diffs)
    assert not any("name" in d.split("=")[0] for d in diffs)
    assert _differences(want, dict(want)) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "either --admin-user"),
        (["--admin-user", "a", "--admin-client-id", "c"], "either --admin-user"),
        (["--admin-user", "a"], "--admin-user needs --admin-password-file"),
        (["--admin-client-id", "c"], "--admin-client-id needs --admin-client-secret-file"),
    ],
)
def test_admin_options_are_checked(args: list[str], message: str) -> None:
    base = [
        "keycloak",
        "setup",
        "--server",
        "https://sso",
        "--realm",
        "r",
        "--public-url",
        "https://b",
    ]
    r = CliRunner().invoke(main, [*base, *args])
    assert r.exit_code == 1
    assert message in r.output


def test_empty_password_file_and_bad_url(tmp_path: Path) -> None:
    empty = tmp_path / "pw"
    empty.write_text("\n")
    common = ["keycloak", "setup", "--realm", "r", "--admin-user", "a"]
    pw = str(empty)
    r = CliRunner().invoke(
        main,
        [
            *common,
            "--server",
            "https://sso",
            "--public-url",
            "https://b",
            "--admin-password-file",
            pw,
        ],
    )
    assert r.exit_code == 1 and "is empty" in r.output
    empty.write_text("s3cret-password")
    r = CliRunner().invoke(
        main,
        [
            *common,
            "--server",
            "sso.example.org",
            "--public-url",
            "https://b",
            "--admin-password-file",
            pw,
        ],
    )
    assert r.exit_code == 1 and "--server must be an http(s) URL" in r.output
    assert "s3cret-password" not in r.output


def test_unreachable_server_names_no_secret(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret-password")
    r = CliRunner().invoke(
        main,
        [
            *("keycloak", "setup", "--server", "http://127.0.0.1:9", "--realm", "r"),
            *("--public-url", "https://b", "--admin-user", "a", "--admin-password-file", str(pw)),
        ],
    )
    assert r.exit_code == 1
    assert "cannot reach http://127.0.0.1:9" in r.output
    assert "s3cret-password" not in r.output
