"""Slurm 26.05 identity claims (uid, gid, id) from NSS or from upstream claims, and the policy
that applies to the uid whichever source states it.

Real parts: the host's NSS (compared with the real ``id`` program), the Flask app with real HTTP
issuers (tests/helpers/test_issuer.py), the installed console script for ``mint``.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.accounts import PosixIdentity, identity_from_claims, identity_from_nss
from slurm_jwt_bridge.errors import BridgeError
from slurm_jwt_bridge.keys import KeyRing
from slurm_jwt_bridge.minting import mint_slurm_token
from slurm_jwt_bridge.policy import AccountCheck, check_account, check_identity
from slurm_jwt_bridge.settings import (
    IdentityClaimNames,
    PolicySettings,
    SettingsError,
    parse_settings,
)
from tests.conftest import skip_or_fail
from tests.helpers.test_issuer import TestIssuer

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
# Not an account on this host (the claims source is for bridges that cannot see the accounts).
REMOTE_USER = "ldapuser-sjb"
REMOTE_UID = 23456


def local_user() -> pwd.struct_passwd:
    """A real local account with uid >= 1000 (created as the Slurm tests do when missing)."""
    for entry in pwd.getpwall():
        if 1000 <= entry.pw_uid < 60000:
            return entry
    if os.geteuid() == 0:
        from tests.helpers.slurm import ensure_test_users

        ensure_test_users(["alice"])
        return pwd.getpwnam("alice")
    skip_or_fail("no local account with uid >= 1000, and not root to create one")
    raise AssertionError("unreachable")


def id_program(name: str) -> tuple[int, int, list[int]]:
    """(uid, gid, all group ids) as the real ``id`` program reports them."""

    def run(flag: str) -> str:
        return subprocess.run(["id", flag, name], capture_output=True, text=True, check=True).stdout

    return int(run("-u")), int(run("-g")), [int(g) for g in run("-G").split()]


def payload_pairs(token: str) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = json.loads(
        jwt.api_jws.decode_complete(token, options={"verify_signature": False})["payload"],
        object_pairs_hook=list,
    )
    return pairs


# ---------------------------------------------------------------- NSS


def test_nss_identity_equals_the_id_program() -> None:
    pw = local_user()
    ident = identity_from_nss(pw.pw_name)
    uid, gid, groups = id_program(pw.pw_name)
    assert (ident.uid, ident.gid) == (uid, gid) == (pw.pw_uid, pw.pw_gid)
    assert sorted(ident.all_gids) == sorted(set(groups))
    assert (ident.dir, ident.shell, ident.gecos) == (pw.pw_dir, pw.pw_shell, pw.pw_gecos)
    claims = ident.slurm_claims()
    assert list(claims) == ["uid", "gid", "id"]
    assert list(claims["id"])[:4] == ["name", "gecos", "dir", "shell"]
    assert ("groups" in claims["id"]) != ("gids" in claims["id"])


def test_nss_identity_for_an_unknown_user_is_refused() -> None:
    with pytest.raises(BridgeError) as info:
        identity_from_nss("nosuchuser-xyz")
    assert info.value.metric == "no_identity" and "no passwd entry" in info.value.reason


# ---------------------------------------------------------------- the token's bytes


def ident(**kw: Any) -> PosixIdentity:
    base: dict[str, Any] = {
        "name": "alice",
        "uid": 2345,
        "gid": 2345,
        "gecos": "Alice",
        "dir": "/home/alice",
        "shell": "/bin/bash",
        "gids": (2345, 3000),
    }
    base.update(kw)
    return PosixIdentity(**base)


@pytest.mark.parametrize("alg", ["RS256", "HS256"])
def test_claim_order_and_types(keys_dir: Path, alg: str) -> None:
    ring = KeyRing.load(keys_dir)
    t = mint_slurm_token(ring, "alice", 600, alg, now=1_700_000_000, identity=ident())
    pairs = payload_pairs(t.token)
    assert [k for k, _ in pairs] == ["exp", "iat", "sun", "uid", "gid", "id", "jti"]
    values = dict(pairs)
    assert type(values["uid"]) is int and type(values["gid"]) is int
    assert [k for k, _ in values["id"]] == ["name", "gecos", "dir", "shell", "gids"]
    assert dict(values["id"]) == {
        "name": "alice",
        "gecos": "Alice",
        "dir": "/home/alice",
        "shell": "/bin/bash",
        "gids": [2345, 3000],
    }
    groups = ident(gids=None, groups=(("alice", 2345), ("hpc", 3000)))
    t = mint_slurm_token(ring, "alice", 600, alg, include_jti=False, identity=groups)
    id_claim = dict(dict(payload_pairs(t.token))["id"])
    assert dict(id_claim["groups"]) == {"alice": 2345, "hpc": 3000} and "gids" not in id_claim


def test_identity_must_name_the_token_user(keys_dir: Path) -> None:
    with pytest.raises(ValueError, match="identity for 'alice' in a token for 'bob'"):
        mint_slurm_token(KeyRing.load(keys_dir), "bob", 600, identity=ident())
    with pytest.raises(ValueError, match="exactly one of groups and gids"):
        ident(groups=(("a", 1),))


def test_identity_survives_a_session_round_trip() -> None:
    for i in (ident(), ident(gids=None, groups=(("alice", 2345),))):
        assert PosixIdentity.from_dict(json.loads(json.dumps(i.to_dict()))) == i


# ---------------------------------------------------------------- reading upstream claims

NAMES = IdentityClaimNames(gids="gids", gecos="cn")
GOOD = {
    "uidNumber": 23456,
    "gidNumber": 23456,
    "homeDirectory": "/home/u",
    "loginShell": "/bin/bash",
    "cn": "U Ser",
    "gids": [23456, 5000, 5000],
}


def test_claims_identity() -> None:
    got = identity_from_claims("u", GOOD, NAMES)
    assert (got.uid, got.gid, got.gids, got.gecos) == (23456, 23456, (23456, 5000), "U Ser")
    only = identity_from_claims("u", GOOD, IdentityClaimNames())
    assert only.gids == (23456,) and only.gecos == ""
    assert only.slurm_claims()["id"]["gecos"] == "u"  # Slurm 26.05 refuses an empty gecos
    grouped = identity_from_claims(
        "u", {**GOOD, "grp": {"u": 23456, "hpc": 5000}}, IdentityClaimNames(groups="grp")
    )
    assert grouped.groups == (("u", 23456), ("hpc", 5000)) and grouped.gids is None
    nested = identity_from_claims(
        "u",
        {**GOOD, "posix": {"uid": 7000}, "custom:gid": 7000},
        IdentityClaimNames(uid="posix.uid", gid="custom:gid"),
    )
    assert (nested.uid, nested.gid) == (7000, 7000)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"uidNumber": "23456"}, "'uidNumber' (uid) must be a JSON integer, got a string"),
        ({"uidNumber": -1}, "must not be negative, got -1"),
        ({"uidNumber": 2**32 - 1}, "must be at most 4294967294"),
        ({"uidNumber": 23456.0}, "must be a JSON integer, got float"),
        ({"uidNumber": True}, "must be a JSON integer, got bool"),
        ({"uidNumber": None}, "'uidNumber' (uid) is missing"),
        ({"gidNumber": "x"}, "'gidNumber' (gid) must be a JSON integer"),
        ({"homeDirectory": None}, "'homeDirectory' (home) is missing"),
        ({"homeDirectory": "home/u"}, "must be an absolute path"),
        ({"loginShell": "/bin/sh\n"}, "must be one line"),
        ({"loginShell": 5}, "must be a string, got int"),
        ({"cn": None}, "'cn' (gecos) is missing"),
        ({"cn": "a:b"}, "without ':'"),
        ({"gids": "5000"}, "must be a list of integers, got a string"),
        ({"gids": [5000, "5001"]}, "'gids' (gids) must be a JSON integer"),
        ({"gids": [5000, -2]}, "must not be negative"),
        ({"gids": list(range(1025))}, "more than 1024"),
    ],
)
def test_bad_identity_claims_are_refused(change: dict[str, Any], message: str) -> None:
    claims = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(BridgeError) as info:
        identity_from_claims("u", claims, NAMES)
    assert message in info.value.reason and info.value.reason.startswith("user 'u': ")
    assert info.value.metric == "invalid_identity_claim" and info.value.status == 403


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        (["hpc"], "must be an object group name -> gid, got list"),
        ({"hpc": "5000"}, "must be a JSON integer"),
        ({"bad name": 5000}, "not a POSIX group name"),
    ],
)
def test_bad_group_maps_are_refused(groups: Any, message: str) -> None:
    with pytest.raises(BridgeError, match=message):
        identity_from_claims("u", {**GOOD, "grp": groups}, IdentityClaimNames(groups="grp"))


# ---------------------------------------------------------------- policy by uid


def claimed(uid: int, gids: tuple[int, ...] = ()) -> PosixIdentity:
    return ident(name=REMOTE_USER, uid=uid, gid=uid, gids=(uid, *gids))


def remote() -> AccountCheck:
    return AccountCheck(REMOTE_USER, None)


def test_claimed_uid_policy() -> None:
    policy = PolicySettings(slurm_user="root", min_uid=1000)
    check_identity(claimed(REMOTE_UID), remote(), policy)
    cases = {
        0: "denied_root",
        999: "denied_system_account",
        65534: "denied_system_account",
    }
    for uid, metric in cases.items():
        with pytest.raises(BridgeError) as info:
            check_identity(claimed(uid), remote(), policy)
        assert info.value.metric == metric, uid
        assert "(identity claim)" in info.value.reason
    with pytest.raises(BridgeError) as info:
        check_identity(claimed(REMOTE_UID, (0,)), remote(), policy)
    assert "gid 0" in info.value.reason
    # allow_users names an account on purpose: it may carry such a uid
    check_identity(claimed(999), remote(), PolicySettings(allow_users=(REMOTE_USER,)))


def test_claimed_uid_of_the_slurm_user_or_a_denied_account() -> None:
    pw = local_user()
    as_slurm = PolicySettings(slurm_user=pw.pw_name)
    with pytest.raises(BridgeError) as info:
        check_identity(claimed(pw.pw_uid), remote(), as_slurm)
    assert info.value.metric == "denied_slurm_user" and "uid of the SlurmUser" in info.value.reason
    denied = PolicySettings(deny_users=(pw.pw_name,), allow_users=(REMOTE_USER,))
    with pytest.raises(BridgeError) as info:
        check_identity(claimed(pw.pw_uid), remote(), denied)
    assert info.value.metric == "denied_user" and pw.pw_name in info.value.reason


def test_claimed_uid_must_match_the_hosts_passwd() -> None:
    pw = local_user()
    account = check_account(pw.pw_name, PolicySettings())
    check_identity(identity_from_nss(pw.pw_name), account, PolicySettings())
    other = ident(name=pw.pw_name, uid=pw.pw_uid + 1, gid=pw.pw_gid, gids=(pw.pw_gid,))
    with pytest.raises(BridgeError) as info:
        check_identity(other, account, PolicySettings())
    assert info.value.metric == "identity_mismatch"


def test_nss_alias_of_the_slurm_user_or_a_denied_account_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second passwd entry sharing the SlurmUser's (or a denied account's) uid is the same
    account: check_uid refuses it like the account itself."""
    real = pwd.getpwnam

    def fake(name: str) -> Any:
        if name in ("slurmalias", "slurmsvc", "mallory"):
            return SimpleNamespace(pw_name=name, pw_uid=4321, pw_gid=4321)
        return real(name)

    monkeypatch.setattr(pwd, "getpwnam", fake)
    with pytest.raises(BridgeError) as info:
        check_account("slurmalias", PolicySettings(slurm_user="slurmsvc"))
    assert info.value.metric == "denied_slurm_user"
    with pytest.raises(BridgeError) as info:
        check_account("slurmalias", PolicySettings(slurm_user="x", deny_users=("mallory",)))
    assert info.value.metric == "denied_user"


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ({"identity_source": "ldap"}, "tokens.identity_source: must be one of nss, claims"),
        (
            {"identity_claim_names": {"uid": "x"}},
            'tokens.identity_claim_names: only read with identity_source = "claims"',
        ),
        (
            {"identity_source": "claims", "identity_claim_names": {"groups": "g", "gids": "h"}},
            "tokens.identity_claim_names.gids: set groups (an object name -> gid) or gids",
        ),
        (
            {"identity_source": "claims", "identity_claim_names": {"uid": ""}},
            "tokens.identity_claim_names.uid: is required",
        ),
        (
            {"identity_source": "claims", "identity_claim_names": {"uidnumber": "x"}},
            "tokens.identity_claim_names.uidnumber: unknown setting",
        ),
        ({"identity_claims": "yes"}, "tokens.identity_claims: must be true or false"),
    ],
)
def test_settings_errors(tokens: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_settings({"tokens": tokens})
    assert str(info.value).startswith(message), str(info.value)


# ---------------------------------------------------------------- every door


@dataclass
class Env:
    client: Any
    kc: Any
    keys_dir: Path
    audit: Path

    def exchange(self, claims: dict[str, Any], alg: str | None = None) -> Any:
        form = {"grant_type": TE, "subject_token": self.kc.mint(claims), "subject_token_type": AT}
        if alg:
            form["alg"] = alg
        return self.client.post("/oauth/token", data=form)

    def user(self, name: str = REMOTE_USER, **extra: Any) -> dict[str, Any]:
        claims = self.kc.keycloak_claims(azp="portal", username=name)
        claims.update(uidNumber=REMOTE_UID, gidNumber=REMOTE_UID, gids=[REMOTE_UID, 5000])
        claims.update(homeDirectory=f"/home/{name}", loginShell="/bin/bash")
        claims.update(extra)
        return claims

    def last_audit(self) -> dict[str, Any]:
        line: dict[str, Any] = json.loads(self.audit.read_text().splitlines()[-1])
        return line


def make_env(
    tmp_path: Path,
    keys_dir: Path,
    idp: TestIssuer,
    tokens: dict[str, Any],
    slurm_user: str | None = None,
) -> Env:
    kc = idp.add_issuer("/realms/hpc", jwks_path="/realms/hpc/protocol/openid-connect/certs")
    audit = tmp_path / "audit.log"
    data = {
        "keys": {"dir": str(keys_dir)},
        "audit": {"destination": f"file:{audit}"},
        "browser": {"enabled": False},
        "tokens": tokens,
        "policy": {"slurm_user": slurm_user or local_user().pw_name},
        "issuers": [
            {
                "name": "kc",
                "kind": "keycloak",
                "issuer": kc.issuer,
                "allowed_clients": ["portal", "svc"],
            }
        ],
        "mapping": {"require_local_account": False, "rules": [{"claim": "preferred_username"}]},
        "service_accounts": [
            {"issuer": "kc", "client_id": "svc", "account": "svcacct", "identity_claims": False}
        ],
    }
    app = create_app(parse_settings(data))
    return Env(app.test_client(), kc, keys_dir, audit)


@pytest.fixture
def claims_env(tmp_path: Path, keys_dir: Path) -> Iterator[Env]:
    idp = TestIssuer().start()
    # The SlurmUser is a real local account, so its uid can be claimed in a token.
    yield make_env(
        tmp_path,
        keys_dir,
        idp,
        {
            "identity_claims": True,
            "identity_source": "claims",
            "identity_claim_names": {"gids": "gids"},
        },
    )
    idp.stop()


def decoded(env: Env, token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


@pytest.mark.parametrize("alg", ["RS256", "HS256"])
def test_exchange_with_keycloak_uidnumber(claims_env: Env, alg: str) -> None:
    r = claims_env.exchange(claims_env.user(), alg)
    assert r.status_code == 200, r.json
    claims = decoded(claims_env, r.json["access_token"])
    assert claims["sun"] == REMOTE_USER and claims["uid"] == REMOTE_UID
    assert claims["id"] == {
        "name": REMOTE_USER,
        "gecos": REMOTE_USER,  # no gecos claim configured: the name stands in
        "dir": f"/home/{REMOTE_USER}",
        "shell": "/bin/bash",
        "gids": [REMOTE_UID, 5000],
    }
    line = claims_env.last_audit()
    assert line["outcome"] == "minted" and line["uid"] == REMOTE_UID


@pytest.mark.parametrize(
    ("extra", "metric", "message"),
    [
        ({"uidNumber": 0}, "denied_root", "has uid 0 (identity claim)"),
        ({"uidNumber": 999}, "denied_system_account", "uid 999 (identity claim) < policy.min_uid"),
        ({"uidNumber": "23456"}, "invalid_identity_claim", "must be a JSON integer, got a string"),
        ({"uidNumber": -5}, "invalid_identity_claim", "must not be negative"),
        ({"gidNumber": None}, "invalid_identity_claim", "'gidNumber' (gid) is missing"),
        ({"gids": [0]}, "denied_root", "gid 0"),
    ],
)
def test_exchange_refuses_bad_identity_claims(
    claims_env: Env, extra: dict[str, Any], metric: str, message: str
) -> None:
    claims = {k: v for k, v in claims_env.user(**extra).items() if v is not None}
    r = claims_env.exchange(claims)
    assert r.status_code == 403, r.json
    assert r.json["error"] == "access_denied" and message in r.json["error_description"]
    line = claims_env.last_audit()
    assert line["outcome"] == "refused" and message in line["reason"]
    assert "jti" not in line


def test_exchange_refuses_the_slurm_users_uid(claims_env: Env) -> None:
    slurm_uid = local_user().pw_uid  # the configured SlurmUser of claims_env
    r = claims_env.exchange(claims_env.user(uidNumber=slurm_uid))
    assert r.status_code == 403 and "uid of the SlurmUser" in r.json["error_description"]
    assert claims_env.last_audit()["outcome"] == "refused"


def test_service_account_may_turn_identity_claims_off(claims_env: Env) -> None:
    svc = claims_env.kc.keycloak_claims(azp="svc", username="", service=True)
    r = claims_env.exchange(svc)
    assert r.status_code == 200, r.json
    claims = decoded(claims_env, r.json["access_token"])
    assert claims["sun"] == "svcacct" and "uid" not in claims and "id" not in claims


def test_nss_source_through_the_token_api(tmp_path: Path, keys_dir: Path) -> None:
    """identity_source = "nss": this host's account is the authority; uid claims in the
    upstream token are not read."""
    pw = local_user()
    idp = TestIssuer().start()
    try:
        env = make_env(tmp_path, keys_dir, idp, {"identity_claims": True}, slurm_user="slurm")
        r = env.exchange(env.user(pw.pw_name, uidNumber=REMOTE_UID))
        assert r.status_code == 200, r.json
    finally:
        idp.stop()
    claims = decoded(env, r.json["access_token"])
    uid, gid, groups = id_program(pw.pw_name)
    assert (claims["uid"], claims["gid"]) == (uid, gid)
    listed = claims["id"].get("gids") or list(claims["id"]["groups"].values())
    assert sorted(set(listed)) == sorted(set(groups))
    assert env.last_audit()["uid"] == uid


def test_cli_mint_carries_the_nss_identity(tmp_path: Path, keys_dir: Path) -> None:
    pw = local_user()
    cfg = tmp_path / "nss.toml"
    cfg.write_text(
        f'[keys]\ndir = "{keys_dir}"\n[audit]\ndestination = "none"\n'
        "[tokens]\nidentity_claims = true\n"
    )
    exe = Path(sys.executable).parent / "slurm-jwt-bridge"
    out = subprocess.run(
        [str(exe), "mint", pw.pw_name, "--config", str(cfg), "--alg", "HS256"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip().split("=", 1)[1]
    claims = jwt.decode(token, KeyRing.load(keys_dir).hs256, algorithms=["HS256"])
    assert claims["id"] == identity_from_nss(pw.pw_name).slurm_claims()["id"]
    assert claims["uid"] == pw.pw_uid and claims["id"]["name"] == claims["sun"]
    assert [k for k, _ in payload_pairs(token)] == ["exp", "iat", "sun", "uid", "gid", "id", "jti"]
    refused = subprocess.run(
        [str(exe), "mint", "nosuchuser-xyz", "--config", str(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0 and refused.stdout == ""
    assert "no local account" in refused.stderr or "no passwd entry" in refused.stderr
