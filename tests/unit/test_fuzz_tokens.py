"""Generated bad upstream tokens never become Slurm tokens, through every door.

Valid tokens of four issuers (oidc, keycloak, cognito, entra; tests/helpers/test_issuer.py) are
mutated three ways and sent to ``POST /oauth/token`` (form), ``POST /api/v1/token`` (Bearer)
and the proxy (``GET /slurm/...``, Bearer, recording upstream):

- **unsigned edits**: bytes, JSON fields, encodings, segments, sizes and signatures of a valid
  token changed *without re-signing*;
- **re-signed violations**: the issuer's own key signs a token that breaks exactly one rule the
  service enforces (alg, crit, kid, iss, aud, exp, nbf, iat, sub, token use, tenant, client,
  mapped account);
- **foreign signatures**: another key, HMAC with the issuer's public key, ``alg: none``.

The oracle (what makes a 200 legitimate), stated once:

    A Slurm token may be minted only when the request carries, byte for byte, the signed part
    (``header.payload``) of one of the valid base tokens AND a signature segment that PyJWT's
    decoder (the one that checks the signature) turns into exactly that token's signature bytes.

Why that is sound: the issuers sign with RSA PKCS#1 v1.5 (RS256), which is deterministic and
not malleable, so a signature verifies for exactly one SHA-256 digest; any change to the signed
bytes, or to the signature value, makes verification fail (barring a SHA-256 collision). An
edit may still leave the token equivalent (a non-canonical last base64 character of the
signature, a whitespace the Bearer door strips): then, and only then, a 200 is allowed, and it
must be for the base token's own user. Re-signed tokens are generated so that each breaks a rule
that holds whatever else the token says (an issuer whose JWKS names ``alg`` for alg swaps, a
name that no policy admits for account violations), so none of them may mint either.

Every refusal must be a 4xx (never 5xx, never 429: rate limits are off here) with an RFC 6749
body ``{"error", "error_description"}``, nothing recorded as minted in the audit, and on the
proxy door no request reaching slurmrestd.

``SLURM_JWT_BRIDGE_FUZZ_EXAMPLES=N`` sets the examples per test (bench/fuzz.py runs >= 10 000);
the default run is small, derandomized and without an example database, so CI is stable.
``SLURM_JWT_BRIDGE_FUZZ_REPORT=FILE`` writes per-category/door/status counts as JSON.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from jwt.algorithms import get_default_algorithms
from jwt.utils import base64url_decode

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.audit import AuditLog
from slurm_jwt_bridge.keys import KeyRing, init_keys
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.issuers import TENANT, bridge_data, four_issuers
from tests.helpers.stub_http import StubServer
from tests.helpers.test_issuer import b64url, forge_hmac, public_jwk

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
OTHER_TENANT = "aaaaaaaa-0000-0000-0000-000000000002"
DOORS = ("oauth", "api", "proxy")
PROXY_PATH = "/slurm/v0.0.44/jobs"
LEEWAY = 60
FUTURE = 2 * 86400 + LEEWAY + 1

_ENV_EXAMPLES = int(os.environ.get("SLURM_JWT_BRIDGE_FUZZ_EXAMPLES", "0") or 0)
# A dedicated run (bench/fuzz.py) explores: random seed (pytest --hypothesis-seed), no shrinking
# limits; the default run is a few seconds, derandomized, without an example database.
FUZZ = settings(
    max_examples=_ENV_EXAMPLES or 300,
    deadline=None,
    derandomize=not _ENV_EXAMPLES,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)
STATS: Counter[str] = Counter()


# ---------------------------------------------------------------- the service under test


class RecordingAudit(AuditLog):
    """Counts decisions instead of writing them (the pipeline's audit is a public attribute)."""

    def __init__(self) -> None:
        super().__init__("none")
        self.outcomes: Counter[str] = Counter()
        self.lock = threading.Lock()

    def record(self, event: str, outcome: str, **fields: Any) -> dict[str, Any]:
        with self.lock:
            self.outcomes[outcome] += 1
        return super().record(event, outcome, **fields)


@dataclass(frozen=True)
class Base:
    """A valid token of one issuer and what it must map to."""

    issuer: str
    token: str
    user: str
    handle: Any
    header: dict[str, Any]
    claims: dict[str, Any]
    # The issuer's JWKS names alg: a token re-signed with another alg by the same key is refused.
    jwks_names_alg: bool

    @property
    def parts(self) -> list[str]:
        return self.token.split(".")


@dataclass
class Env:
    client: Any
    audit: RecordingAudit
    upstream: StubServer
    bases: list[Base]
    ring: KeyRing
    stranger_rsa: rsa.RSAPrivateKey
    stranger_ec: ec.EllipticCurvePrivateKey
    # Fixed at start: strategies must not depend on the clock (Hypothesis replays them).
    now: int
    signatures: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for b in self.bases:
            h, p, s = b.parts
            self.signatures[(h, p)] = base64url_decode(s)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    keys_dir = tmp_path_factory.mktemp("fuzz-tokens") / "keys"
    init_keys(keys_dir)
    with four_issuers() as idps, contextlib.closing(StubServer()) as upstream:
        oidc, kc, cognito, entra = idps.oidc, idps.kc, idps.cognito, idps.entra
        oidc.rotate()  # two published keys: a token without kid is ambiguous
        issuers = idps.issuers(
            kc={"allowed_clients": ["portal"]}, cognito={"allowed_clients": ["app1"]}
        )
        # No local account needed: the oracle must not depend on this host's passwd.
        rules = [
            {"issuer": "entra", "claim": "upn", "strip_domain": True, "lowercase": True},
            {"issuer": "cognito", "claim": "username"},
            {"issuer": "kc", "claim": "preferred_username"},
            {"issuer": "oidc", "claim": "preferred_username"},
        ]
        data = bridge_data(
            keys_dir,
            issuers,
            rules=rules,
            rate_limit={"enabled": False},
            policy={"deny_users": ["mallory"]},
            proxy={"upstream": upstream.url, "read_timeout": 5.0, "connect_timeout": 2.0},
        )
        app = create_app(parse_settings(data))
        bridge = app.extensions["slurm_jwt_bridge"]
        audit = RecordingAudit()
        bridge.pipeline.audit = audit
        far = {"exp": oidc.now() + 2 * 86400}  # valid for the whole of a long dedicated run

        def base(issuer: str, handle: Any, claims: dict[str, Any], user: str, alg: bool) -> Base:
            token = handle.mint({**claims, **far})
            header = jwt.get_unverified_header(token)
            body = jwt.decode(token, options={"verify_signature": False})
            return Base(issuer, token, user, handle, header, body, alg)

        bases = [
            base(
                "oidc",
                oidc,
                oidc.oidc_claims(sub="s-alice", aud="bridge", preferred_username="alice"),
                "alice",
                True,
            ),
            base("kc", kc, kc.keycloak_claims(azp="portal", username="bob"), "bob", True),
            base(
                "cognito",
                cognito,
                cognito.cognito_claims("access", client_id="app1", username="carol"),
                "carol",
                True,
            ),
            base(
                "entra",
                entra,
                entra.entra_claims(tid=TENANT, aud="api://bridge", username="Ada@Contoso.example"),
                "ada",
                False,
            ),
        ]
        yield Env(
            app.test_client(),
            audit,
            upstream,
            bases,
            KeyRing.load(keys_dir),
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            ec.generate_private_key(ec.SECP256R1()),
            oidc.now(),
        )
        report = os.environ.get("SLURM_JWT_BRIDGE_FUZZ_REPORT")
        if report:
            Path(report).write_text(json.dumps(dict(sorted(STATS.items())), indent=2) + "\n")


# ---------------------------------------------------------------- the oracle


def equivalent_base(env: Env, sent: str, door: str) -> Base | None:
    """The base token ``sent`` is equivalent to, if any (see the module docstring)."""
    token = sent.strip() if door in ("api", "proxy") else sent
    parts = token.split(".")
    if len(parts) != 3:
        return None
    want = env.signatures.get((parts[0], parts[1]))
    if want is None:
        return None
    try:
        if base64url_decode(parts[2]) != want:
            return None
    except (ValueError, TypeError):
        return None
    return next(b for b in env.bases if b.parts[:2] == parts[:2])


def header_safe(token: str) -> bool:
    """Can the token travel in an HTTP header value as-is?"""
    return all(32 <= ord(c) < 127 for c in token) and token.strip() != ""


def send(env: Env, token: str, door: str) -> Any:
    if door == "oauth":
        form = {"grant_type": TE, "subject_token": token, "subject_token_type": AT}
        return env.client.post("/oauth/token", data=form)
    auth = {"Authorization": f"Bearer {token}"}
    if door == "api":
        return env.client.post("/api/v1/token", headers=auth)
    return env.client.get(PROXY_PATH, headers=auth)


def check(env: Env, token: str, door: str, category: str) -> None:
    """Send ``token`` through ``door`` and hold the answer to the oracle."""
    if door != "oauth" and not header_safe(token):
        door = "oauth"
    minted_before = env.audit.outcomes["minted"]
    reached_before = len(env.upstream.seen)
    r = send(env, token, door)
    r.get_data()  # consume a streamed proxy body: that returns the upstream connection
    STATS[f"{category}|{door}|{r.status_code}"] += 1
    if currently_in_test_context():
        event(f"{category.split(':')[0]} {door} -> {r.status_code}")
    same = equivalent_base(env, token, door)
    if r.status_code == 200 and same is not None:
        STATS["equivalent_accepted"] += 1
        if door == "proxy":
            assert env.upstream.seen[-1].header("X-SLURM-USER-NAME") == same.user
        else:
            assert r.json["slurm_user"] == same.user
        return
    assert r.status_code != 200, (
        f"{category}: a token that is not byte-equivalent to a valid one was accepted via "
        f"{door}: {token[:300]!r} -> {r.get_data()[:300]!r}"
    )
    assert 400 <= r.status_code < 500 and r.status_code != 429, (
        category,
        door,
        r.status_code,
        r.get_data()[:300],
        token[:300],
    )
    body = r.get_json(silent=True)
    assert isinstance(body, dict), (category, door, r.status_code, r.get_data()[:300])
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("error_description"), str), body
    assert "access_token" not in body
    if len(token) > 120:
        assert token not in body["error_description"]
    if door != "proxy":  # the 413 of Flask's body limit included (it lacked no-store)
        assert r.headers.get("Cache-Control") == "no-store", (r.status_code, r.headers)
    assert env.audit.outcomes["minted"] == minted_before, "a refused request minted a token"
    assert len(env.upstream.seen) == reached_before, "a refused request reached slurmrestd"


# ---------------------------------------------------------------- strategies

B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ODD_CHARS = [*".=+/ \t\n\r\x00%\\\"'", "\u212a", "\uff0e", "\u200b", "\ufeff", "\u00e9", "\u2024"]
CLAIM_NAMES = [
    "iss",
    "aud",
    "sub",
    "exp",
    "nbf",
    "iat",
    "azp",
    "client_id",
    "preferred_username",
    "username",
    "upn",
    "token_use",
    "tid",
    "idtyp",
    "nonce",
    "typ",
    "sun",
]
HEADER_NAMES = ["alg", "kid", "typ", "crit", "b64", "jku", "jwk", "x5u", "x5c", "nonce", "cty"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=24),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
odd_text = st.text(
    alphabet=st.sampled_from(list(B64_CHARS) + ODD_CHARS)
    | st.characters(exclude_categories=["Cs"]),
    max_size=40,
)
bases = st.integers(min_value=0, max_value=3)
doors = st.sampled_from(DOORS)


def _decode_json(segment: str) -> Any:
    return json.loads(base64url_decode(segment))


def _encode(obj: Any, how: str) -> str:
    """A JSON segment, encoded one of several ways the verifier must treat alike or refuse."""
    if how == "compact":
        raw = json.dumps(obj, separators=(",", ":")).encode()
    elif how == "spaced":
        raw = json.dumps(obj, indent=1).encode()
    elif how == "unicode":
        raw = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    else:
        raw = json.dumps(obj).encode()
    if how == "padded":
        return base64.urlsafe_b64encode(raw).decode()
    if how == "standard":
        return base64.b64encode(raw).decode()
    return b64url(raw)


@st.composite
def unsigned_edit(draw: st.DrawFn, env: Env) -> tuple[str, str]:
    """(kind, token): a valid token changed without signing it again."""
    b = env.bases[draw(bases)]
    h, p, s = b.parts
    kind = draw(
        st.sampled_from(
            [
                "chars",
                "header_json",
                "payload_json",
                "reencode",
                "splice",
                "signature",
                "segments",
                "size",
                "deep_json",
                "not_json",
            ]
        )
    )
    if kind == "chars":
        token = b.token
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(token)))
            op = draw(st.sampled_from(["replace", "insert", "delete"]))
            ch = draw(st.sampled_from(list(B64_CHARS) + ODD_CHARS) | st.characters(codec="utf-8"))
            if op == "insert":
                token = token[:pos] + ch + token[pos:]
            elif op == "delete":
                token = token[:pos] + token[pos + 1 :]
            else:
                token = token[:pos] + ch + token[pos + 1 :]
        return kind, token
    if kind in ("header_json", "payload_json"):
        which = 0 if kind == "header_json" else 1
        obj = dict(_decode_json((h, p)[which]))
        names = HEADER_NAMES if which == 0 else CLAIM_NAMES
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from(names) | st.text(max_size=6))
            if key in obj and draw(st.booleans()):
                del obj[key]
            else:
                obj[key] = draw(json_values)
        how = draw(st.sampled_from(["compact", "spaced", "unicode", "padded", "standard"]))
        seg = _encode(obj, how)
        return kind, (f"{seg}.{p}.{s}" if which == 0 else f"{h}.{seg}.{s}")
    if kind == "reencode":
        # Same JSON, other bytes: whitespace, escapes, padding, key order, duplicate keys.
        which = draw(st.integers(0, 1))
        obj = _decode_json((h, p)[which])
        how = draw(st.sampled_from(["spaced", "unicode", "padded", "standard", "dup", "order"]))
        if how == "dup":
            key = draw(st.sampled_from(sorted(obj)))
            text = json.dumps(obj)[:-1] + f", {json.dumps(key)}: {json.dumps(obj[key])}}}"
            seg = b64url(text.encode())
        elif how == "order":
            seg = _encode(dict(reversed(list(obj.items()))), "compact")
        else:
            seg = _encode(obj, how)
        return kind, (f"{seg}.{p}.{s}" if which == 0 else f"{h}.{seg}.{s}")
    if kind == "splice":
        o = env.bases[draw(bases)]
        oh, op_, os_ = o.parts
        pick = draw(st.sampled_from(["hps", "Hps", "hPs", "hpS", "HPs", "HpS", "hPS"]))
        segs = [
            oh if pick[0] == "H" else h,
            op_ if pick[1] == "P" else p,
            os_ if pick[2] == "S" else s,
        ]
        return kind, ".".join(segs)
    if kind == "signature":
        sig = base64url_decode(s)
        how = draw(
            st.sampled_from(["empty", "truncate", "extend", "flip", "zero", "random", "padded"])
        )
        if how == "empty":
            new = b""
        elif how == "truncate":
            new = sig[: draw(st.integers(0, len(sig) - 1))]
        elif how == "extend":
            new = sig + draw(st.binary(min_size=1, max_size=8))
        elif how == "flip":
            i = draw(st.integers(0, len(sig) - 1))
            new = sig[:i] + bytes([sig[i] ^ draw(st.integers(1, 255))]) + sig[i + 1 :]
        elif how == "zero":
            new = bytes(len(sig))
        elif how == "random":
            new = draw(st.binary(min_size=len(sig), max_size=len(sig)))
        else:
            return kind, f"{h}.{p}.{base64.urlsafe_b64encode(sig).decode()}"
        return kind, f"{h}.{p}.{b64url(new)}"
    if kind == "segments":
        how = draw(
            st.sampled_from(["one", "two", "four", "five", "lead_dot", "trail_dot", "empty_mid"])
        )
        return kind, {
            "one": h,
            "two": f"{h}.{p}",
            "four": f"{h}.{p}.{s}.{s}",
            "five": f"{h}.{p}.{s}.{p}.{s}",
            "lead_dot": f".{h}.{p}.{s}",
            "trail_dot": f"{h}.{p}.{s}.",
            "empty_mid": f"{h}..{s}",
        }[how]
    if kind == "size":
        # Around the 16 KiB token limit and past the 64 KiB body limit.
        target = draw(st.sampled_from([16383, 16384, 16385, 20000, 70000]))
        claims = _decode_json(p)
        pad = max(0, (target - len(b.token)) * 3 // 4)
        claims["pad"] = "x" * pad
        return kind, f"{h}.{_encode(claims, 'compact')}.{s}"
    if kind == "deep_json":
        depth = draw(st.integers(min_value=500, max_value=5000))
        deep = b64url(("[" * depth + "]" * depth).encode())
        where = draw(st.integers(0, 1))
        return kind, (f"{deep}.{p}.{s}" if where == 0 else f"{h}.{deep}.{s}")
    raw = draw(st.binary(max_size=64))
    where = draw(st.integers(0, 1))
    return kind, (f"{b64url(raw)}.{p}.{s}" if where == 0 else f"{h}.{b64url(raw)}.{s}")


def _sign(header: dict[str, Any], claims: dict[str, Any], key: Any, alg: str) -> str:
    signing_input = f"{_encode(header, 'compact')}.{_encode(claims, 'compact')}"
    if alg.startswith("HS"):  # by hand: PyJWT refuses a PEM public key as HMAC secret
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
        signature = hmac.new(key, signing_input.encode(), digest[alg]).digest()
    else:
        algorithm = get_default_algorithms()[alg]
        signature = algorithm.sign(signing_input.encode(), algorithm.prepare_key(key))
    return f"{signing_input}.{b64url(signature)}"


def _not_number(v: Any) -> bool:
    return not (isinstance(v, int | float) and not isinstance(v, bool))


# Names no policy admits: not portable, all digits, root, the SlurmUser, a denied name, a
# system account of every Linux host (uid < 1000), nobody, look-alikes of real names.
REFUSED_NAMES = st.one_of(
    st.sampled_from(
        [
            "root",
            "slurm",
            "mallory",
            "daemon",
            "bin",
            "nobody",
            "0",
            "1000",
            ".",
            "..",
            "-alice",
            "a" * 33,
            "ali ce",
            "alice\x00",
            "alice\n",
            "\uff41lice",
            "\u0430lice",
            "al/ice",
            "alice@x",
        ]
    ),
    st.text(min_size=1, max_size=40).filter(
        lambda t: (
            not (
                t.isascii()
                and len(t) <= 32
                and all(c.isalnum() or c in "._-" for c in t)
                and t[0] != "-"
            )
        )
    ),
    st.from_regex(r"\A[0-9]{1,12}\Z"),
)


@st.composite
def resigned_violation(draw: st.DrawFn, env: Env) -> tuple[str, str]:
    """(rule, token): the issuer's own key signs a token that breaks exactly ``rule``."""
    b = env.bases[draw(bases)]
    key = b.handle.current.private_key
    header = dict(b.header)
    claims = dict(b.claims)
    now = env.now  # exp below it stays past; nbf/iat beyond FUTURE stay future for 2 days
    rules = [
        "alg_not_allowed",
        "crit",
        "kid",
        "iss",
        "exp",
        "nbf",
        "iat",
        "sub",
        "account",
        "idtyp_app",
    ]
    if b.jwks_names_alg:
        rules.append("alg_swap")
    rules += {
        "oidc": ["aud", "nonce"],
        "kc": ["azp"],
        "cognito": ["token_use", "client_id"],
        "entra": ["tid", "aud"],
    }[b.issuer]
    rule = draw(st.sampled_from(rules))
    alg = "RS256"
    if rule == "alg_not_allowed":
        bad = draw(
            st.sampled_from(["none", "None", "NONE", "HS256", "HS384", "HS512", "rs256", "RS256 "])
            | st.text(max_size=10).filter(lambda a: a not in get_default_algorithms())
        )
        header["alg"] = bad
        signing_input = f"{_encode(header, 'compact')}.{_encode(claims, 'compact')}"
        sig = draw(st.sampled_from([b"", base64url_decode(b.parts[2])]))
        return rule, f"{signing_input}.{b64url(sig)}"
    if rule == "alg_swap":
        alg = draw(st.sampled_from(["RS384", "RS512", "PS256", "PS384", "PS512"]))
    elif rule == "crit":
        header[draw(st.sampled_from(["crit", "b64"]))] = draw(
            st.sampled_from([["exp"], [], False, True, "x"])
        )
    elif rule == "kid":
        header["kid"] = draw(
            st.text(max_size=40).filter(lambda k: k not in {x.kid for x in b.handle.keys})
            | st.integers()
            | st.none()
            | st.lists(st.text(max_size=3), max_size=2)
        )
        if header["kid"] is None and b.issuer != "oidc":
            header["kid"] = "not-a-published-kid"  # kid-less is refused only with 2+ keys
    elif rule == "iss":
        claims["iss"] = draw(
            json_values.filter(lambda v: v != b.claims["iss"])
            | st.sampled_from([e.handle.issuer for e in env.bases if e.issuer != b.issuer])
        )
    elif rule == "exp":
        claims["exp"] = draw(
            st.one_of(
                st.integers(min_value=-(2**40), max_value=now - LEEWAY - 2),
                st.floats(max_value=now - LEEWAY - 2, allow_nan=False),
                json_values.filter(_not_number),  # None: the claim is left out
                st.sampled_from([float("nan"), float("inf"), float("-inf")]),
            )
        )
        if claims["exp"] is None:
            claims.pop("exp")
    elif rule == "nbf":
        claims["nbf"] = draw(
            st.integers(min_value=now + FUTURE, max_value=2**40)
            | json_values.filter(lambda v: _not_number(v) and v is not None)
        )
    elif rule == "iat":
        claims["iat"] = draw(
            st.integers(min_value=now + FUTURE, max_value=2**40)
            | json_values.filter(lambda v: _not_number(v) and v is not None)
        )
    elif rule == "sub":
        value = draw(
            st.sampled_from(["", None]) | json_values.filter(lambda v: not isinstance(v, str))
        )
        if value is None:
            claims.pop("sub")
        else:
            claims["sub"] = value
        if b.issuer == "entra":
            claims["idtyp"] = "user"  # keep it a user token: oid == sub would make it an app
    elif rule == "account":
        name_claim = {"oidc": "preferred_username", "kc": "preferred_username"}.get(
            b.issuer, "username"
        )
        if b.issuer == "entra":
            # upn is lower-cased and cut at '@': only names that stay refused after that.
            claims["upn"] = draw(st.sampled_from(["root@x", "ROOT@y", "slurm", "0@x", "..@x"]))
        else:
            claims[name_claim] = draw(REFUSED_NAMES)
    elif rule == "idtyp_app":
        # A service token: no [[service_accounts]] entry admits any client here.
        if b.issuer == "kc":
            claims["preferred_username"] = f"service-account-{claims['azp']}"
            claims["clientId"] = claims["azp"]
        elif b.issuer == "cognito":
            claims.pop("username")
            claims["sub"] = claims["client_id"]
        elif b.issuer == "entra":
            claims["idtyp"] = "app"
            claims.pop("scp", None)
        else:
            # RFC 9068: a client-credentials token names its client as subject and speaks of
            # no person (a token with preferred_username is a person's, whatever its azp).
            claims["azp"] = claims["sub"]
            claims["aud"] = ["bridge", claims["sub"]]
            claims.pop("preferred_username", None)
    elif rule == "aud":
        good = "bridge" if b.issuer == "oidc" else "api://bridge"
        value = draw(
            json_values.filter(
                lambda v: (
                    not (
                        v == good
                        or (
                            isinstance(v, list) and good in v and all(isinstance(x, str) for x in v)
                        )
                    )
                )
            )
            | st.lists(st.text(max_size=8), max_size=3).map(lambda v: [*v, good, 7])
        )
        if value is None:
            claims.pop("aud")
        else:
            claims["aud"] = value
    elif rule == "nonce":
        claims[draw(st.sampled_from(["nonce", "at_hash"]))] = draw(st.text(max_size=8))
    elif rule == "azp":
        claims["azp"] = draw(st.text(max_size=12).filter(lambda a: a != "portal"))
    elif rule == "token_use":
        claims["token_use"] = draw(json_values.filter(lambda v: v != "access"))
    elif rule == "client_id":
        claims["client_id"] = draw(json_values.filter(lambda v: v != "app1"))
    elif rule == "tid":
        claims["tid"] = draw(
            st.sampled_from([OTHER_TENANT, TENANT.upper(), "common", "organizations"])
            | json_values.filter(lambda v: v != TENANT)
        )
    return rule, _sign(header, claims, key, alg)


@st.composite
def foreign_signature(draw: st.DrawFn, env: Env) -> tuple[str, str]:
    """(how, token): the claims of a valid token signed by anything but the issuer's key."""
    b = env.bases[draw(bases)]
    header = dict(b.header)
    claims = dict(b.claims)
    # Any claims at all: without the issuer's signature nothing may pass.
    for _ in range(draw(st.integers(0, 2))):
        claims[draw(st.sampled_from(CLAIM_NAMES) | st.text(max_size=6))] = draw(json_values)
    how = draw(
        st.sampled_from(
            [
                "stranger_same_kid",
                "stranger_no_kid",
                "stranger_embedded_jwk",
                "stranger_ec",
                "hmac_public_pem",
                "hmac_jwk_json",
                "hmac_bridge_key",
                "none",
                "bridge_rs256_key",
            ]
        )
    )
    if how.startswith("stranger"):
        if how == "stranger_no_kid":
            header.pop("kid", None)
        if how == "stranger_embedded_jwk":
            header["jwk"] = public_jwk(env.stranger_rsa)
            header["jku"] = "http://127.0.0.1:1/jwks"
        if how == "stranger_ec":
            header["alg"] = "ES256"
            return how, _sign(header, claims, env.stranger_ec, "ES256")
        return how, _sign(header, claims, env.stranger_rsa, "RS256")
    if how.startswith("hmac"):
        header["alg"] = draw(st.sampled_from(["HS256", "HS384", "HS512"]))
        secret = {
            "hmac_public_pem": b.handle.public_pem(),
            "hmac_jwk_json": json.dumps(b.handle.current.jwk(True)).encode(),
            "hmac_bridge_key": env.ring.hs256 or b"x" * 32,
        }[how]
        if header["alg"] == "HS256" and draw(st.booleans()):
            return how, forge_hmac(header, claims, secret)
        return how, _sign(header, claims, secret, header["alg"])
    if how == "none":
        header["alg"] = draw(st.sampled_from(["none", "None"]))
        signing_input = f"{_encode(header, 'compact')}.{_encode(claims, 'compact')}"
        return how, signing_input + "." + draw(st.sampled_from(["", b.parts[2]]))
    # The bridge's own Slurm-signing key must not be trusted for upstream tokens either.
    assert env.ring.active is not None
    header["kid"] = env.ring.active.kid
    return how, _sign(header, claims, env.ring.active.private_key, "RS256")


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("door", DOORS)
def test_valid_base_tokens_mint_through_every_door(env: Env, door: str) -> None:
    """The positive control: the oracle's valid tokens do mint, for the right user."""
    for b in env.bases:
        minted = env.audit.outcomes["minted"]
        r = send(env, b.token, door)
        assert r.status_code == 200, (b.issuer, door, r.get_data()[:300])
        r.close()
        if door == "proxy":
            sent = env.upstream.seen[-1]
            assert sent.header("X-SLURM-USER-NAME") == b.user
            assert jwt.decode(
                sent.header("X-SLURM-USER-TOKEN"), options={"verify_signature": False}
            )["sun"] == (b.user)
        else:
            assert r.json["slurm_user"] == b.user
            assert env.audit.outcomes["minted"] == minted + 1
        assert equivalent_base(env, b.token, door) is b


def test_oracle_rejects_a_changed_signature_byte(env: Env) -> None:
    """The oracle itself: a flipped signature byte is not 'equivalent' (else it proves nothing)."""
    h, p, s = env.bases[0].parts
    sig = bytearray(base64url_decode(s))
    sig[10] ^= 1
    assert equivalent_base(env, f"{h}.{p}.{b64url(bytes(sig))}", "oauth") is None
    assert equivalent_base(env, f" {h}.{p}.{s} ", "api") is env.bases[0]
    assert equivalent_base(env, f" {h}.{p}.{s} ", "oauth") is None


@FUZZ
@given(data=st.data())
def test_unsigned_edits_never_mint(env: Env, data: st.DataObject) -> None:
    kind, token = data.draw(unsigned_edit(env), label="edit")
    check(env, token, data.draw(doors, label="door"), f"unsigned:{kind}")


@FUZZ
@given(data=st.data())
def test_resigned_rule_violations_never_mint(env: Env, data: st.DataObject) -> None:
    rule, token = data.draw(resigned_violation(env), label="violation")
    check(env, token, data.draw(doors, label="door"), f"resigned:{rule}")


@FUZZ
@given(data=st.data())
def test_foreign_signatures_never_mint(env: Env, data: st.DataObject) -> None:
    how, token = data.draw(foreign_signature(env), label="forgery")
    check(env, token, data.draw(doors, label="door"), f"foreign:{how}")


@FUZZ
@given(token=odd_text, door=doors)
def test_arbitrary_text_never_mints(env: Env, token: str, door: str) -> None:
    if door == "oauth" and not token:
        return  # an empty subject_token is a missing parameter, covered elsewhere
    check(env, token, door, "text")


DEEP_ARRAY = b64url(b"[" * 5000 + b"]" * 5000)
DEEP_OBJECT = b64url(b'{"a":' * 3000 + b"1" + b"}" * 3000)
REGRESSIONS: dict[str, Callable[[Env], str]] = {
    # json.loads raised RecursionError (500) before upstream.py and web/proxy.py
    # caught it; found by the deep_json edit.
    "deeply nested header": lambda e: f"{DEEP_ARRAY}.{e.bases[0].parts[1]}.{e.bases[0].parts[2]}",
    "deeply nested payload": lambda e: f"{e.bases[0].parts[0]}.{DEEP_OBJECT}.AAAA",
}


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("case", list(REGRESSIONS))
def test_regressions(env: Env, case: str, door: str) -> None:
    check(env, REGRESSIONS[case](env), door, f"regression:{case}")
