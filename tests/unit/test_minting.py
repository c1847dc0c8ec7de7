import base64
import json
import pwd
from pathlib import Path

import jwt
import pytest

from slurm_jwt_bridge.errors import BridgeError
from slurm_jwt_bridge.keys import KeyRing
from slurm_jwt_bridge.minting import mint_slurm_token
from slurm_jwt_bridge.policy import check_account, resolve_lifetime, username_problem
from slurm_jwt_bridge.settings import PolicySettings, TokenSettings


def segments(token: str) -> tuple[bytes, bytes]:
    h, p, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return base64.urlsafe_b64decode(pad(h)), base64.urlsafe_b64decode(pad(p))


def test_rs256_header_and_claim_bytes(keys_dir: Path) -> None:
    ring = KeyRing.load(keys_dir)
    t = mint_slurm_token(ring, "alice", 1800, "RS256", include_jti=False, now=1_700_000_000)
    header, payload = segments(t.token)
    assert header == b'{"alg":"RS256","kid":"' + ring.active.kid.encode() + b'","typ":"JWT"}'
    assert payload == b'{"exp":1700001800,"iat":1700000000,"sun":"alice"}'
    pub = ring.active.private_key.public_key()
    claims = jwt.decode(t.token, pub, algorithms=["RS256"], options={"verify_exp": False})
    assert claims["sun"] == "alice"


def test_hs256_header_and_claims(keys_dir: Path) -> None:
    ring = KeyRing.load(keys_dir)
    t = mint_slurm_token(ring, "alice", 600, "HS256", now=1_700_000_000)
    header, payload = segments(t.token)
    assert header == b'{"alg":"HS256","typ":"JWT"}'
    claims = json.loads(payload)
    assert list(claims) == ["exp", "iat", "sun", "jti"]
    assert claims["exp"] - claims["iat"] == 600
    assert all(isinstance(claims[k], int) for k in ("exp", "iat"))
    jwt.decode(t.token, ring.hs256, algorithms=["HS256"], options={"verify_exp": False})


def test_not_after_caps_exp(keys_dir: Path) -> None:
    ring = KeyRing.load(keys_dir)
    t = mint_slurm_token(ring, "alice", 1800, "RS256", now=1000, not_after=1500)
    assert t.exp == 1500


def test_unknown_alg_and_missing_hs256(keys_dir: Path) -> None:
    ring = KeyRing.load(keys_dir)
    with pytest.raises(BridgeError, match="alg must be RS256 or HS256"):
        mint_slurm_token(ring, "alice", 60, "none")
    (keys_dir / "jwt_hs256.key").unlink()
    with pytest.raises(BridgeError, match="HS256 is not available"):
        mint_slurm_token(KeyRing.load(keys_dir), "alice", 60, "HS256")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-alice",
        "al ice",
        "alice\n",
        "alice\x00",
        "\uff41lice",  # fullwidth a
        "a/b",
        "x" * 33,
        "0",
        "1000",
        "..",
        "alice$",
        "al:ice",
        "ROOT\u200b",
    ],
)
def test_bad_usernames_are_refused(name: str) -> None:
    assert username_problem(name)
    with pytest.raises(BridgeError) as info:
        check_account(name, PolicySettings())
    assert info.value.error == "access_denied"
    assert "\n" not in info.value.reason and "\x00" not in info.value.reason


@pytest.mark.parametrize("name", ["alice", "a.b-c_d", "_svc", "user1", "Ada"])
def test_good_usernames(name: str) -> None:
    assert username_problem(name) is None


def system_account() -> str:
    for entry in pwd.getpwall():
        if 0 < entry.pw_uid < 1000 and username_problem(entry.pw_name) is None:
            return entry.pw_name
    pytest.fail("no system account on this host")


def test_deny_rules() -> None:
    policy = PolicySettings(slurm_user="slurm", deny_users=("mallory",), min_uid=1000)
    cases = {
        "root": "denied_root",
        "slurm": "denied_slurm_user",
        "mallory": "denied_user",
        system_account(): "denied_system_account",
    }
    for name, metric in cases.items():
        with pytest.raises(BridgeError) as info:
            check_account(name, policy)
        assert info.value.metric == metric, name
        assert info.value.status == 403


def test_allow_users_is_the_only_way_past_the_protections() -> None:
    sysacct = system_account()
    policy = PolicySettings(allow_users=("root", sysacct, "slurm"), deny_users=())
    assert check_account("root", policy).uid == 0
    assert check_account(sysacct, policy).uid is not None
    assert check_account("slurm", policy)
    # deny beats allow
    both = PolicySettings(allow_users=("root",), deny_users=("root",))
    with pytest.raises(BridgeError, match="deny_users"):
        check_account("root", both)


def test_unknown_user_passes_unless_local_account_required() -> None:
    assert check_account("nosuchuser-xyz", PolicySettings()).uid is None
    with pytest.raises(BridgeError) as info:
        check_account("nosuchuser-xyz", PolicySettings(), require_local_account=True)
    assert info.value.metric == "no_local_account"


def test_lifetimes() -> None:
    t = TokenSettings(default_lifetime=1800, max_lifetime=3600)
    assert resolve_lifetime(None, t) == 1800
    assert resolve_lifetime(3600, t) == 3600
    assert resolve_lifetime(None, t, cap=600) == 600
    for bad, msg in [
        (3601, "exceeds the maximum of 3600"),
        (59, "below the minimum"),
        (True, "integer"),
    ]:
        with pytest.raises(BridgeError, match=msg):
            resolve_lifetime(bad, t)
    with pytest.raises(BridgeError, match="exceeds the maximum of 600"):
        resolve_lifetime(900, t, cap=600)
