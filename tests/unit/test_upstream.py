"""The upstream module against a local test issuer: every profile's accept path, the refusal matrix,
JWKS caching under rotation and outages, and the verified-token cache.

Time-based behaviour uses an injected clock; only the slow-IdP test waits (for a 0.3 s timeout).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slurm_jwt_bridge import introspection, issuer_documents, upstream
from slurm_jwt_bridge.errors import BridgeError
from slurm_jwt_bridge.settings import IntrospectionSettings, IssuerSettings
from slurm_jwt_bridge.upstream import MAX_TOKEN_BYTES, UpstreamVerifier, VerifiedToken

try:
    from tests.helpers.test_issuer import IssuerHandle, SigningKey, TestIssuer, forge, forge_hmac
except ModuleNotFoundError:  # tests/ itself is on sys.path (its conftest.py), the repo root not
    from helpers.test_issuer import IssuerHandle, SigningKey, TestIssuer, forge, forge_hmac

TENANT_A = "aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa"
TENANT_B = "bbbbbbbb-2222-4222-8222-bbbbbbbbbbbb"
TENANT_C = "cccccccc-3333-4333-8333-cccccccccccc"
APP_URI = "api://slurm-bridge"
APP_ID = "99999999-8888-4777-8666-555555555555"
START = 1_750_000_000.0


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def idp(clock: FakeClock) -> Iterator[TestIssuer]:
    server = TestIssuer(clock=clock).start()
    yield server
    server.stop()


@pytest.fixture
def make(clock: FakeClock) -> Any:
    def build(*issuers: IssuerSettings, **kw: Any) -> UpstreamVerifier:
        return UpstreamVerifier(issuers, clock=clock, **kw)

    return build


def cfg(handle: IssuerHandle, kind: str = "oidc", **kw: Any) -> IssuerSettings:
    values: dict[str, Any] = {"name": kind, "kind": kind, "issuer": handle.issuer}
    values.update(kw)
    return IssuerSettings(**values)


def refused(v: UpstreamVerifier, token: str, error: str, metric: str, **kw: Any) -> BridgeError:
    with pytest.raises(BridgeError) as info:
        v.verify(token, **kw)
    exc = info.value
    assert (exc.error, exc.metric) == (error, metric), exc.reason
    if len(token) >= 20:  # never echo the token (short strings may occur by chance)
        assert token not in exc.reason and token[-20:] not in exc.reason
    return exc


# ---------------------------------------------------------------- fixtures per profile


@pytest.fixture
def kc(idp: TestIssuer) -> IssuerHandle:
    return idp.add_issuer("/realms/hpc", jwks_path="/realms/hpc/protocol/openid-connect/certs")


@pytest.fixture
def kc_cfg(kc: IssuerHandle) -> IssuerSettings:
    return cfg(kc, "keycloak", allowed_clients=("portal", "svc"), audiences=("slurm-bridge",))


@pytest.fixture
def cognito(idp: TestIssuer) -> IssuerHandle:
    return idp.add_issuer("/eu-west-1_AbCdEf", jwks_path="/eu-west-1_AbCdEf/.well-known/jwks.json")


@pytest.fixture
def entra(idp: TestIssuer) -> IssuerHandle:
    """Multi-tenant: discovery at /organizations/v2.0 names /{tenantid}/v2.0; keys without alg."""
    return idp.add_issuer(
        "/entra/organizations/v2.0",
        issuer_path="/entra/{tenantid}/v2.0",
        jwks_path="/entra/common/discovery/v2.0/keys",
        jwk_alg_in_jwks=False,
    )


@pytest.fixture
def entra_cfg(entra: IssuerHandle) -> IssuerSettings:
    return cfg(
        entra,
        "entra",
        issuer=entra.issuer,  # still holds {tenantid}
        discovery_url=entra.discovery_url,
        audiences=(APP_URI, APP_ID),
        tenants=(TENANT_A, TENANT_B),
    )


@pytest.fixture
def op(idp: TestIssuer) -> IssuerHandle:
    return idp.add_issuer("/op")


@pytest.fixture
def op_cfg(op: IssuerHandle) -> IssuerSettings:
    return cfg(op, "oidc", audiences=("https://bridge.test",))


# ---------------------------------------------------------------- keycloak


def test_keycloak_access_token_accepted_by_azp_with_roles(
    make: Any, kc: IssuerHandle, kc_cfg: IssuerSettings
) -> None:
    # Keycloak also publishes an encryption key; it must not disturb parsing.
    enc = SigningKey("RS256").jwk(include_alg=False)
    kc.extra_jwks.append({**enc, "use": "enc", "alg": "RSA-OAEP", "kid": "enc-1"})
    v = make(kc_cfg)
    token = kc.mint(
        kc.keycloak_claims(
            azp="portal",
            username="alice",
            sub="user-1",
            realm_roles=("hpc-user",),
            client_roles={"portal": ["admin"]},
        )
    )
    vt = v.verify(token)
    assert isinstance(vt, VerifiedToken)
    assert vt.issuer is kc_cfg
    assert vt.subject == "user-1"
    assert vt.client_id == "portal"
    assert vt.token_use == "access"
    assert not vt.is_service
    assert {"hpc-user", "portal:admin", "account:view-profile"} <= set(vt.roles)
    # a client role never counts as the realm role of the same name
    assert "admin" not in vt.roles
    assert vt.claims["preferred_username"] == "alice"
    assert vt.header["kid"] == kc.kid
    assert vt.exp == int(START) + 300
    assert len(vt.token_hash) == 64


def test_keycloak_aud_absent_and_configured_audience_accepted(
    make: Any, kc: IssuerHandle, kc_cfg: IssuerSettings
) -> None:
    v = make(kc_cfg)
    assert v.verify(kc.mint(kc.keycloak_claims(azp="svc", username="bob", aud=None)))
    # azp unknown, but aud names the bridge: also fine.
    other = kc.keycloak_claims(azp="other-app", username="bob", aud=["account", "slurm-bridge"])
    assert v.verify(kc.mint(other)).client_id == "other-app"


def test_keycloak_service_account(make: Any, kc: IssuerHandle, kc_cfg: IssuerSettings) -> None:
    vt = make(kc_cfg).verify(kc.mint(kc.keycloak_claims(azp="svc", username="", service=True)))
    assert vt.is_service
    assert vt.claims["preferred_username"] == "service-account-svc"


def test_keycloak_refusals(make: Any, kc: IssuerHandle, kc_cfg: IssuerSettings) -> None:
    v = make(kc_cfg)
    stranger = kc.mint(kc.keycloak_claims(azp="other-app", username="eve"))
    exc = refused(v, stranger, "invalid_grant", "wrong_audience")
    assert "other-app" in exc.reason and "allowed_clients" in exc.reason
    id_token = kc.mint(kc.keycloak_claims(azp="portal", username="eve", typ="ID"))
    refused(v, id_token, "invalid_grant", "wrong_token_use")
    no_sub = kc.mint({**kc.keycloak_claims(azp="portal", username="eve"), "sub": None})
    assert "basic" in refused(v, no_sub, "invalid_grant", "missing_claim").reason


def test_keycloak_opaque_token_introspection(
    make: Any, kc: IssuerHandle, kc_cfg: IssuerSettings, clock: FakeClock
) -> None:
    intro = replace(kc_cfg, introspection=IntrospectionSettings("bridge", "bridge-secret"))
    now = int(clock())
    kc.introspection["opaque-good"] = {
        "active": True,
        "iss": kc.issuer,
        "sub": "user-2",
        "azp": "portal",
        "typ": "Bearer",
        "exp": now + 120,
        "iat": now,
        "preferred_username": "carol",
        "realm_access": {"roles": ["hpc-user"]},
    }
    v = make(intro)
    vt = v.verify("opaque-good")
    assert (vt.subject, vt.client_id, vt.header) == ("user-2", "portal", {})
    assert "hpc-user" in vt.roles
    assert kc.introspection_requests == 1
    v.verify("opaque-good")  # cached for a short while
    assert kc.introspection_requests == 1
    clock.advance(introspection.INTROSPECTION_CACHE_SECONDS + 1)
    v.verify("opaque-good")  # asked again: revocation is noticed within that while
    assert kc.introspection_requests == 2
    refused(v, "opaque-revoked", "invalid_grant", "inactive")
    # JWTs are still verified locally, without introspection.
    assert v.verify(kc.mint(kc.keycloak_claims(azp="portal", username="carol")))
    assert kc.introspection_requests == 3
    # Wrong introspection credentials: Keycloak answers 401, the bridge cannot tell.
    bad = make(replace(kc_cfg, introspection=IntrospectionSettings("bridge", "wrong")))
    exc = refused(bad, "opaque-good", "temporarily_unavailable", "introspection_unavailable")
    assert exc.status == 503


def test_opaque_token_without_introspection_is_malformed(make: Any, kc_cfg: IssuerSettings) -> None:
    refused(make(kc_cfg), "opaque-token", "invalid_grant", "malformed")


# ---------------------------------------------------------------- cognito


@pytest.fixture
def cognito_cfg(cognito: IssuerHandle) -> IssuerSettings:
    return cfg(
        cognito,
        "cognito",
        allowed_clients=("app-client-1",),
        token_use=("access", "id"),
    )


def test_cognito_access_and_id_tokens(
    make: Any, cognito: IssuerHandle, cognito_cfg: IssuerSettings
) -> None:
    v = make(cognito_cfg)
    access = cognito.mint(
        cognito.cognito_claims(
            "access", client_id="app-client-1", username="alice", groups=("hpc", "gpu")
        )
    )
    vt = v.verify(access)
    assert (vt.token_use, vt.client_id, vt.groups, vt.is_service) == (
        "access",
        "app-client-1",
        ("hpc", "gpu"),
        False,
    )
    assert vt.claims["username"] == "alice"
    id_token = cognito.mint(cognito.cognito_claims("id", client_id="app-client-1", username="al"))
    vt = v.verify(id_token, expected_use="id")
    assert (vt.token_use, vt.client_id) == ("id", "app-client-1")
    assert vt.claims["cognito:username"] == "al"
    machine = cognito.mint(cognito.cognito_claims("access", client_id="app-client-1"))
    assert v.verify(machine).is_service


def test_cognito_refusals(make: Any, cognito: IssuerHandle, cognito_cfg: IssuerSettings) -> None:
    v = make(cognito_cfg)
    other_client = cognito.mint(cognito.cognito_claims("access", client_id="x", username="a"))
    exc = refused(v, other_client, "invalid_grant", "wrong_audience")
    assert "client_id='x'" in exc.reason
    other_aud = cognito.mint(cognito.cognito_claims("id", client_id="x", username="a"))
    refused(v, other_aud, "invalid_grant", "wrong_audience")
    no_use = cognito.mint(
        {**cognito.cognito_claims("access", client_id="app-client-1"), "token_use": None}
    )
    refused(v, no_use, "invalid_grant", "wrong_token_use")
    access = cognito.mint(cognito.cognito_claims("access", client_id="app-client-1"))
    refused(v, access, "invalid_grant", "wrong_token_use", expected_use="id")
    access_only = make(replace(cognito_cfg, token_use=("access",)))
    id_token = cognito.mint(cognito.cognito_claims("id", client_id="app-client-1", username="a"))
    exc = refused(access_only, id_token, "invalid_grant", "wrong_token_use")
    assert "accepts access tokens" in exc.reason


# ---------------------------------------------------------------- entra


def test_entra_v2_multitenant_key_without_alg(
    make: Any, entra: IssuerHandle, entra_cfg: IssuerSettings
) -> None:
    assert "alg" not in entra.jwks()["keys"][0]
    v = make(entra_cfg)
    claims = entra.entra_claims(
        tid=TENANT_A, aud=APP_URI, roles=("Slurm.User",), groups=("g-1", "g-2"), oid="oid-1"
    )
    assert claims["iss"] == entra.issuer.replace("{tenantid}", TENANT_A)
    vt = v.verify(entra.mint(claims))
    assert vt.roles == ("Slurm.User",)
    assert vt.groups == ("g-1", "g-2")
    assert vt.claims["oid"] == "oid-1"
    assert vt.claims["upn"] == "ada@contoso.example"
    assert vt.client_id == "11111111-2222-3333-4444-555555555555"
    assert not vt.is_service
    assert entra.discovery_requests == 1


def test_entra_v1_app_only_token(make: Any, entra: IssuerHandle, entra_cfg: IssuerSettings) -> None:
    v = make(entra_cfg)
    claims = entra.entra_claims(
        tid=TENANT_B, aud=APP_ID, version=1, client="daemon-app", app_only=True
    )
    assert claims["iss"] == f"https://sts.windows.net/{TENANT_B}/"
    vt = v.verify(entra.mint(claims))
    assert vt.is_service
    assert vt.client_id == "daemon-app"


def test_entra_refusals(make: Any, entra: IssuerHandle, entra_cfg: IssuerSettings) -> None:
    v = make(entra_cfg)
    tenant_c = entra.mint(entra.entra_claims(tid=TENANT_C, aud=APP_URI))
    exc = refused(v, tenant_c, "invalid_grant", "tenant_not_allowed")
    assert TENANT_C in exc.reason
    graph = entra.mint(
        entra.entra_claims(tid=TENANT_A, aud="00000003-0000-0000-c000-000000000000"),
        header={"nonce": "graph-nonce"},
    )
    exc = refused(v, graph, "invalid_grant", "graph_token")
    assert f"{APP_URI}/.default" in exc.reason
    # The nonce alone is enough (the signature of a Graph token never verifies outside Graph).
    nonce_only = entra.mint(entra.entra_claims(tid=TENANT_A, aud=APP_URI), header={"nonce": "n"})
    refused(v, nonce_only, "invalid_grant", "graph_token")
    wrong_aud = entra.mint(entra.entra_claims(tid=TENANT_A, aud="api://other"))
    refused(v, wrong_aud, "invalid_grant", "wrong_audience")
    # iss for tenant A while the token claims tenant B: matches no issuer form for B.
    mixed = entra.mint({**entra.entra_claims(tid=TENANT_A, aud=APP_URI), "tid": TENANT_B})
    refused(v, mixed, "invalid_grant", "unknown_issuer")
    only_portal = make(replace(entra_cfg, allowed_clients=("portal-app",)))
    refused(
        only_portal,
        entra.mint(entra.entra_claims(tid=TENANT_A, aud=APP_URI)),
        "invalid_grant",
        "wrong_audience",
    )


def test_entra_single_tenant_with_jwks_uri(make: Any, idp: TestIssuer, entra: IssuerHandle) -> None:
    single = IssuerSettings(
        name="entra-a",
        kind="entra",
        issuer=f"{idp.base_url}/entra/{TENANT_A}/v2.0",
        jwks_uri=entra.jwks_uri,
        audiences=(APP_URI,),
    )
    v = make(single)
    assert v.verify(entra.mint(entra.entra_claims(tid=TENANT_A, aud=APP_URI)))
    assert v.verify(entra.mint(entra.entra_claims(tid=TENANT_A, aud=APP_URI, version=1)))
    assert entra.discovery_requests == 0
    tenant_b = entra.mint(entra.entra_claims(tid=TENANT_B, aud=APP_URI, version=1))
    refused(v, tenant_b, "invalid_grant", "tenant_not_allowed")
    tenant_b_v2 = entra.mint(entra.entra_claims(tid=TENANT_B, aud=APP_URI))
    refused(v, tenant_b_v2, "invalid_grant", "unknown_issuer")


# ---------------------------------------------------------------- plain oidc


def test_oidc_audience_and_service(make: Any, op: IssuerHandle, op_cfg: IssuerSettings) -> None:
    v = make(op_cfg)
    vt = v.verify(op.mint(op.oidc_claims(aud=["https://bridge.test", "x"], groups=["g"])))
    assert (vt.subject, vt.groups, vt.is_service) == ("alice", ("g",), False)
    svc = v.verify(
        op.mint(op.oidc_claims(sub="svc-portal", aud="https://bridge.test", client_id="svc-portal"))
    )
    assert svc.is_service and svc.client_id == "svc-portal"
    refused(v, op.mint(op.oidc_claims(aud="https://other.test")), "invalid_grant", "wrong_audience")
    refused(v, op.mint(op.oidc_claims()), "invalid_grant", "wrong_audience")


def test_oidc_allowed_clients_only(make: Any, op: IssuerHandle) -> None:
    v = make(cfg(op, allowed_clients=("portal",)))
    assert v.verify(op.mint(op.oidc_claims(azp="portal"))).client_id == "portal"
    assert v.verify(op.mint(op.oidc_claims(client_id="portal")))
    assert v.verify(op.mint(op.oidc_claims(aud="portal")))
    refused(v, op.mint(op.oidc_claims(azp="other")), "invalid_grant", "wrong_audience")


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "EdDSA", "PS256", "RS512"])
def test_oidc_asymmetric_algorithms(make: Any, idp: TestIssuer, alg: str) -> None:
    h = idp.add_issuer(f"/alg-{alg.lower()}", key_alg=alg, jwk_alg_in_jwks=alg != "PS256")
    v = make(cfg(h, audiences=("b",)))
    assert v.verify(h.mint(h.oidc_claims(aud="b"))).header["alg"] == alg


def test_rsa_key_without_alg_serves_rs_and_ps(make: Any, entra: IssuerHandle) -> None:
    v = make(
        cfg(
            entra,
            issuer=entra.issuer.replace("{tenantid}", TENANT_A),
            audiences=("b",),
            jwks_uri=entra.jwks_uri,
        )
    )
    claims = {"aud": "b", "sub": "s", "iss": entra.issuer.replace("{tenantid}", TENANT_A)}
    assert v.verify(entra.mint(claims, alg="PS384"))
    assert v.verify(entra.mint({**claims, "jti": "2"}, alg="RS256"))


# ---------------------------------------------------------------- refusal matrix


@pytest.fixture
def ov(make: Any, op_cfg: IssuerSettings) -> UpstreamVerifier:
    return make(op_cfg)


def good(op: IssuerHandle, **extra: Any) -> dict[str, Any]:
    now = op.now()
    return {
        "iss": op.issuer,
        "iat": now,
        "exp": now + 300,
        **op.oidc_claims(aud="https://bridge.test"),
        **extra,
    }


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_refused(ov: UpstreamVerifier, op: IssuerHandle, alg: str) -> None:
    token = forge({"alg": alg, "kid": op.kid}, good(op))
    refused(ov, token, "invalid_grant", "alg_not_allowed")


def test_hs256_signed_with_public_key_pem_refused(ov: UpstreamVerifier, op: IssuerHandle) -> None:
    """The classic confusion attack: the PEM of the IdP's public key used as HMAC secret."""
    header = {"alg": "HS256", "typ": "JWT", "kid": op.kid}
    token = forge_hmac(header, good(op), op.public_pem())
    exc = refused(ov, token, "invalid_grant", "alg_not_allowed")
    assert "HS256" in exc.reason
    assert op.jwks_requests == 0  # refused before any key lookup


def test_hs256_refused_even_if_jwks_has_an_oct_key(make: Any, op: IssuerHandle) -> None:
    secret = b"shared-secret-published-by-a-confused-idp"
    op.extra_jwks.append(
        {
            "kty": "oct",
            "kid": "hmac-1",
            "alg": "HS256",
            "k": base64.urlsafe_b64encode(secret).decode(),
        }
    )
    v = make(cfg(op, audiences=("https://bridge.test",)))
    v.refresh_due()
    token = forge_hmac({"alg": "HS256", "kid": "hmac-1"}, good(op), secret)
    refused(v, token, "invalid_grant", "alg_not_allowed")
    for alg in ("HS384", "HS512"):
        refused(
            v,
            forge({"alg": alg, "kid": "hmac-1"}, good(op), b"x" * 32),
            "invalid_grant",
            "alg_not_allowed",
        )


def test_wrong_iss_refused_with_short_reason(ov: UpstreamVerifier, op: IssuerHandle) -> None:
    refused(ov, op.mint(good(op, iss=op.issuer + "/")), "invalid_grant", "unknown_issuer")
    long_iss = "https://evil.example/" + "x" * 500
    exc = refused(ov, op.mint(good(op, iss=long_iss)), "invalid_grant", "unknown_issuer")
    assert "https://evil.example/" in exc.reason
    assert "x" * 100 not in exc.reason
    refused(ov, op.mint(good(op, iss=None)), "invalid_grant", "unknown_issuer")


def test_time_claims(ov: UpstreamVerifier, op: IssuerHandle, clock: FakeClock) -> None:
    now = op.now()
    refused(ov, op.mint(good(op, exp=now - 61)), "invalid_grant", "expired")
    assert ov.verify(op.mint(good(op, exp=now - 59)))  # within the 60 s leeway
    refused(ov, op.mint(good(op, nbf=now + 120)), "invalid_grant", "not_yet_valid")
    assert ov.verify(op.mint(good(op, nbf=now + 30)))
    exc = refused(ov, op.mint(good(op, iat=now + 120)), "invalid_grant", "not_yet_valid")
    assert "future" in exc.reason
    refused(ov, op.mint(good(op, exp=None)), "invalid_grant", "missing_claim")
    refused(ov, op.mint(good(op, exp="tomorrow")), "invalid_grant", "malformed")


def test_wrong_audience(ov: UpstreamVerifier, op: IssuerHandle) -> None:
    refused(ov, op.mint(good(op, aud="https://x.test")), "invalid_grant", "wrong_audience")
    refused(ov, op.mint(good(op, aud={"a": 1})), "invalid_grant", "malformed")


def test_tampered_payload_and_foreign_key(ov: UpstreamVerifier, op: IssuerHandle) -> None:
    token = op.mint(good(op, sub="alice"))
    header, _, sig = token.split(".")
    evil = forge({}, good(op, sub="root")).split(".")[1]
    refused(ov, f"{header}.{evil}.{sig}", "invalid_grant", "bad_signature")
    impostor = SigningKey("RS256")
    forged = op.mint(good(op), key=impostor.private_key)  # right kid, wrong key
    refused(ov, forged, "invalid_grant", "bad_signature")


def test_key_alg_disagreeing_with_header_is_not_used(make: Any, idp: TestIssuer) -> None:
    h = idp.add_issuer("/rs512", key_alg="RS512")
    v = make(cfg(h, audiences=("b",)))
    token = h.mint(h.oidc_claims(aud="b"), alg="RS256")  # same RSA key, JWKS says RS512
    refused(v, token, "invalid_grant", "alg_mismatch")
    ec = idp.add_issuer("/ec", key_alg="ES256", jwk_alg_in_jwks=False)
    v2 = make(cfg(ec, audiences=("b",)))
    rsa_token = ec.mint(
        ec.oidc_claims(aud="b"), kid=ec.kid, alg="RS256", key=SigningKey("RS256").private_key
    )
    refused(v2, rsa_token, "invalid_grant", "alg_mismatch")


def test_token_over_16_kib_refused_before_parsing(ov: UpstreamVerifier, op: IssuerHandle) -> None:
    big = op.mint(good(op, pad="x" * MAX_TOKEN_BYTES))
    exc = refused(ov, big, "invalid_request", "too_large")
    assert exc.status == 400
    refused(ov, "a." + "b" * MAX_TOKEN_BYTES + ".c", "invalid_request", "too_large")
    assert op.jwks_requests == 0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",
        "!!!.e30.c2ln",
        f"{b64(b'not json')}.e30.c2ln",
        f"{b64(b'[1]')}.e30.c2ln",
        f"{b64(b'{}')}.{b64(b'[1]')}.c2ln",
        f"{b64(b'{}')}.{b64(bytes([0xFF, 0xFE]))}.c2ln",
        "eyJhbGciOiJSUzI1NiJ9.e30.a",  # signature segment of length 1 mod 4
    ],
)
def test_malformed_tokens(ov: UpstreamVerifier, token: str) -> None:
    refused(ov, token, "invalid_grant", "malformed")


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.text(max_size=300),
        st.lists(
            st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-_=+/", max_size=40),
            min_size=3,
            max_size=3,
        ).map(".".join),
    )
)
def test_garbage_never_raises_anything_but_bridge_error(ov: UpstreamVerifier, token: str) -> None:
    with pytest.raises(BridgeError):
        ov.verify(token)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
CLAIM_NAMES = st.sampled_from(
    ["aud", "exp", "nbf", "iat", "sub", "azp", "client_id", "groups", "roles", "typ", "nonce", "x"]
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(CLAIM_NAMES, JSON, max_size=4),
    st.dictionaries(st.sampled_from(["typ", "cty", "x5t", "jku"]), JSON, max_size=2),
)
def test_signed_tokens_with_odd_claims_verify_or_raise_bridge_error(
    ov: UpstreamVerifier, op: IssuerHandle, claims: dict[str, Any], header: dict[str, Any]
) -> None:
    """Whatever a (validly signed) token carries, the answer is a result or a BridgeError."""
    token = op.mint(
        {**good(op), **{k: v for k, v in claims.items() if v is not None}}, header=header
    )
    try:
        ov.verify(token)
    except BridgeError as exc:
        assert exc.metric and exc.reason


def test_unknown_issuer_when_nothing_matches(make: Any, op: IssuerHandle) -> None:
    v = make()
    refused(v, op.mint(good(op)), "invalid_grant", "unknown_issuer")


# ---------------------------------------------------------------- JWKS cache and rotation


def test_unknown_kid_refetches_at_most_once_per_interval(
    ov: UpstreamVerifier, op: IssuerHandle, clock: FakeClock
) -> None:
    assert ov.verify(op.mint(good(op)))
    assert (op.discovery_requests, op.jwks_requests) == (1, 1)
    stranger = SigningKey("RS256", kid="nobody")
    unknown = op.mint(good(op), kid="nobody", key=stranger.private_key)
    # The first fetch just happened: it counts as this interval's fetch.
    exc = refused(ov, unknown, "invalid_grant", "unknown_kid")
    assert "'nobody'" in exc.reason and "retry in 60 s" in exc.reason
    assert op.jwks_requests == 1
    clock.advance(61)
    refused(ov, unknown, "invalid_grant", "unknown_kid")
    assert op.jwks_requests == 2
    refused(
        ov,
        op.mint(good(op, jti="b"), kid="nobody", key=stranger.private_key),
        "invalid_grant",
        "unknown_kid",
    )
    assert op.jwks_requests == 2  # within the interval: no refetch
    clock.advance(61)
    refused(
        ov,
        op.mint(good(op, jti="c"), kid="nobody", key=stranger.private_key),
        "invalid_grant",
        "unknown_kid",
    )
    assert op.jwks_requests == 3
    assert op.discovery_requests == 1  # jwks_uri kept from discovery
    assert ov.verify(op.mint(good(op, jti="d")))  # known kid: no fetch
    assert op.jwks_requests == 3


def test_rotation_picks_up_new_key(
    ov: UpstreamVerifier, op: IssuerHandle, clock: FakeClock
) -> None:
    old = op.mint(good(op))
    assert ov.verify(old)
    clock.advance(61)
    op.rotate(keep_old=False)
    new = op.mint(good(op, jti="new"))
    vt = ov.verify(new)  # unknown kid -> refetch -> found
    assert vt.header["kid"] == op.kid
    assert op.jwks_requests == 2
    assert ov.verify(old)  # cached: no signature check, still good until exp
    # A second rotation inside the interval waits for it to pass.
    op.rotate(keep_old=False)
    newer = op.mint(good(op, jti="newer"))
    refused(ov, newer, "invalid_grant", "unknown_kid")
    clock.advance(61)
    assert ov.verify(newer)  # refused once, not cached as bad either


def test_keys_are_refreshed_after_ttl(
    ov: UpstreamVerifier, op: IssuerHandle, clock: FakeClock
) -> None:
    ov.verify(op.mint(good(op)))
    clock.advance(issuer_documents.JWKS_TTL + 1)
    ov.verify(op.mint(good(op, jti="later")))
    assert op.jwks_requests == 2


def test_one_fetch_for_many_concurrent_first_tokens(ov: UpstreamVerifier, op: IssuerHandle) -> None:
    op.mode = "slow"
    op.slow_seconds = 0.3
    tokens = [op.mint(good(op, jti=str(i))) for i in range(16)]
    results: list[Any] = []
    barrier = threading.Barrier(len(tokens))

    def run(t: str) -> None:
        barrier.wait()
        try:
            results.append(ov.verify(t))
        except BridgeError as exc:  # pragma: no cover - reported by the assert below
            results.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert all(isinstance(r, VerifiedToken) for r in results), results
    assert len(results) == 16
    assert (op.discovery_requests, op.jwks_requests) == (1, 1)


# ---------------------------------------------------------------- outages


def test_idp_down_within_stale_window_then_past_it(
    make: Any, op: IssuerHandle, op_cfg: IssuerSettings, clock: FakeClock
) -> None:
    fetches: list[tuple[str, bool]] = []
    v = make(op_cfg, on_fetch=lambda name, ok: fetches.append((name, ok)))
    v.refresh_due()
    assert fetches == [("oidc", True)]
    assert v.health()["oidc"] == {
        "jwks_present": True,
        "age": 0.0,
        "stale": False,
        "last_error": None,
        "usable": True,
    }
    op.mode = "down"
    clock.advance(1800)
    assert v.verify(op.mint(good(op)))  # refresh fails, cached keys still used
    assert fetches[-1] == ("oidc", False)
    h = v.health()["oidc"]
    assert h["stale"] and h["usable"] and "HTTP 503" in h["last_error"]
    assert h["age"] == 1800
    clock.advance(1900)  # 3700 s since the last good fetch
    exc = refused(v, op.mint(good(op, jti="late")), "temporarily_unavailable", "jwks_unavailable")
    assert exc.status == 503
    assert "JWKS of issuer 'oidc' could not be refreshed for 3700 s" in exc.reason
    assert not v.health()["oidc"]["usable"]
    op.mode = "ok"
    clock.advance(61)
    assert v.verify(op.mint(good(op, jti="back")))
    assert v.health()["oidc"]["last_error"] is None


def test_connection_refused_keeps_old_keys(
    ov: UpstreamVerifier, idp: TestIssuer, op: IssuerHandle, clock: FakeClock
) -> None:
    ov.verify(op.mint(good(op)))
    idp.stop()
    try:
        clock.advance(1000)
        assert ov.verify(op.mint(good(op, jti="during")))
        assert "ConnectError" in ov.health()["oidc"]["last_error"]
    finally:
        idp.start()
    clock.advance(61)
    assert ov.verify(op.mint(good(op, jti="after")))
    assert ov.health()["oidc"]["last_error"] is None


@pytest.mark.parametrize(
    ("mode", "error_text"),
    [
        ("garbage", "not JSON"),
        ("huge", "larger than 1048576 bytes"),
        ("huge_stream", "larger than 1048576 bytes"),
        ("refused", "RemoteProtocolError"),
        ("down", "HTTP 503"),
    ],
)
def test_bad_jwks_documents_keep_old_keys(
    ov: UpstreamVerifier, op: IssuerHandle, clock: FakeClock, mode: str, error_text: str
) -> None:
    ov.verify(op.mint(good(op)))
    op.mode = mode
    clock.advance(issuer_documents.JWKS_TTL + 1)
    assert ov.verify(op.mint(good(op, jti=mode)))
    health = ov.health()["oidc"]
    assert health["stale"] and health["usable"]
    assert error_text in health["last_error"]


def test_jwks_without_usable_keys_keeps_old_keys(
    ov: UpstreamVerifier, op: IssuerHandle, clock: FakeClock
) -> None:
    ov.verify(op.mint(good(op)))
    clock.advance(issuer_documents.JWKS_TTL + 1)
    later = op.mint(good(op, jti="later"))
    op.keys = []  # only a symmetric key left: not usable, so not a replacement
    op.extra_jwks = [{"kty": "oct", "k": "c2VjcmV0", "kid": "h", "alg": "HS256"}]
    assert ov.verify(later)
    assert "no usable" in ov.health()["oidc"]["last_error"]


def test_first_fetch_failure_then_recovery(
    make: Any, op: IssuerHandle, op_cfg: IssuerSettings, clock: FakeClock
) -> None:
    v = make(op_cfg)
    assert v.health()["oidc"]["jwks_present"] is False
    op.mode = "down"
    token = op.mint(good(op))
    exc = refused(v, token, "temporarily_unavailable", "jwks_unavailable")
    assert "could not be fetched" in exc.reason
    op.mode = "ok"
    refused(v, token, "temporarily_unavailable", "jwks_unavailable")  # retry not yet due
    clock.advance(issuer_documents.NO_KEYS_RETRY + 1)
    assert v.verify(token)


def test_slow_idp_does_not_hang_past_http_timeout(
    make: Any, op: IssuerHandle, op_cfg: IssuerSettings
) -> None:
    op.mode = "slow"
    op.slow_seconds = 3.0
    v = make(replace(op_cfg, http_timeout=0.3))
    started = time.monotonic()
    refused(v, op.mint(good(op)), "temporarily_unavailable", "jwks_unavailable")
    assert time.monotonic() - started < 2.0
    assert "Timeout" in v.health()["oidc"]["last_error"]


def test_discovery_naming_another_issuer_is_a_fetch_failure(
    make: Any, op: IssuerHandle, op_cfg: IssuerSettings
) -> None:
    op.discovery_issuer = "https://elsewhere.example"
    v = make(op_cfg)
    refused(v, op.mint(good(op)), "temporarily_unavailable", "jwks_unavailable")
    assert "names issuer" in v.health()["oidc"]["last_error"]


def test_refresh_and_health_for_several_issuers(
    make: Any, kc: IssuerHandle, kc_cfg: IssuerSettings, op: IssuerHandle, op_cfg: IssuerSettings
) -> None:
    kc.mode = "down"
    seen: list[tuple[str, bool]] = []
    v = make(kc_cfg, op_cfg, on_fetch=lambda n, ok: seen.append((n, ok)))
    v.refresh_due()
    assert sorted(seen) == [("keycloak", False), ("oidc", True)]
    health = v.health()
    assert health["keycloak"]["jwks_present"] is False
    assert health["keycloak"]["age"] is None
    assert health["oidc"]["jwks_present"] is True


def test_discovery_document_for_login_doors(
    make: Any, op: IssuerHandle, op_cfg: IssuerSettings, clock: FakeClock
) -> None:
    v = make(op_cfg)
    op.mode = "down"
    with pytest.raises(BridgeError) as info:
        v.discovery("oidc")
    assert (info.value.status, info.value.metric) == (503, "discovery_unavailable")
    op.mode = "ok"
    with pytest.raises(BridgeError):
        v.discovery("oidc")  # failures are retried after a short pause, not at once
    clock.advance(issuer_documents.NO_KEYS_RETRY + 1)
    meta = v.discovery("oidc")
    assert meta["token_endpoint"] == op.issuer + "/token"
    assert v.verify(op.mint(good(op)))
    assert op.discovery_requests == 2  # the JWKS fetch reused the fetched document
    with pytest.raises(BridgeError) as info:
        v.discovery("nope")
    assert info.value.status == 404


def test_on_fetch_callback_errors_do_not_break_verification(
    make: Any, op: IssuerHandle, op_cfg: IssuerSettings
) -> None:
    def boom(name: str, ok: bool) -> None:
        raise RuntimeError("metrics down")

    assert make(op_cfg, on_fetch=boom).verify(op.mint(good(op)))


def test_injected_http_client_is_used(
    op: IssuerHandle, op_cfg: IssuerSettings, clock: FakeClock
) -> None:
    seen: list[str] = []
    with httpx.Client(event_hooks={"request": [lambda r: seen.append(str(r.url))]}) as client:
        v = UpstreamVerifier([op_cfg], http=client, clock=clock)
        v.verify(op.mint(good(op)))
    assert seen == [op.discovery_url, op.jwks_uri]


# ---------------------------------------------------------------- verified-token cache


def test_cache_skips_signature_but_not_the_clock(
    ov: UpstreamVerifier, op: IssuerHandle, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = upstream._JWS.decode_complete

    def counting(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(upstream._JWS, "decode_complete", counting)
    token = op.mint(good(op))
    first = ov.verify(token)
    assert ov.verify(token) is first
    assert len(calls) == 1
    refused(ov, token, "invalid_grant", "wrong_token_use", expected_use="id")
    clock.advance(300 + 59)  # past exp, inside the leeway
    assert ov.verify(token) is first
    assert len(calls) == 1
    clock.advance(2)
    refused(ov, token, "invalid_grant", "expired")


def test_refused_token_is_not_cached(ov: UpstreamVerifier, op: IssuerHandle) -> None:
    token = op.mint(good(op, aud="https://x.test"))
    refused(ov, token, "invalid_grant", "wrong_audience")
    refused(ov, token, "invalid_grant", "wrong_audience")


def test_cache_is_bounded_lru(
    make: Any, op: IssuerHandle, op_cfg: IssuerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = make(op_cfg, cache_size=2)
    calls = []
    real = upstream._JWS.decode_complete
    monkeypatch.setattr(
        upstream._JWS, "decode_complete", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    a, b, c = (op.mint(good(op, jti=j)) for j in "abc")
    for t in (a, b, a, c):  # c evicts b (a was used more recently)
        v.verify(t)
    assert len(calls) == 3
    v.verify(a)
    assert len(calls) == 3
    v.verify(b)
    assert len(calls) == 4
