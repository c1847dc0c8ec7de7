"""The token API end to end in-process: real HTTP issuers (tests/helpers/test_issuer.py), the
Flask app, the pipeline and the key ring; one refusal matrix over every way a token can be bad.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import KeyRing
from slurm_jwt_bridge.settings import parse_settings
from tests.conftest import skip_or_fail
from tests.helpers.issuers import TENANT, bridge_data, four_issuers, oidc_issuer
from tests.helpers.test_issuer import forge, forge_hmac

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
IDT = "urn:ietf:params:oauth:token-type:id_token"
TENANT2 = "aaaaaaaa-0000-0000-0000-000000000002"
STRANGER = "aaaaaaaa-0000-0000-0000-00000000dead"


def local_user() -> str:
    """A real local account with uid >= 1000 (created as the Slurm tests do when missing)."""
    for entry in pwd.getpwall():
        if 1000 <= entry.pw_uid < 60000:
            return entry.pw_name
    if os.geteuid() == 0:
        from tests.helpers.slurm import ensure_test_users

        ensure_test_users(["alice"])
        return "alice"
    skip_or_fail("no local account with uid >= 1000, and not root to create one")
    raise AssertionError("unreachable")


@dataclass
class Env:
    client: Any
    kc: Any
    cognito: Any
    entra: Any
    oidc: Any
    keys_dir: Path
    audit: Path

    def exchange(self, token: str, **extra: str) -> Any:
        form = {"grant_type": TE, "subject_token": token, "subject_token_type": AT, **extra}
        return self.client.post("/oauth/token", data=form)

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.audit.read_text().splitlines()]


@pytest.fixture
def env(tmp_path: Path, keys_dir: Path) -> Iterator[Env]:
    audit = tmp_path / "audit.log"
    with four_issuers() as idps:
        issuers = idps.issuers(
            kc={"allowed_clients": ["portal", "svc-batch", "svc-rogue"]},
            cognito={"allowed_clients": ["app1"], "token_use": ["access", "id"]},
            entra={"tenants": [TENANT, TENANT2]},
            oidc={"token_use": ["access", "id"]},
        )
        # The names below are not accounts on this host; the local-account check has its own
        # test (test_missing_local_account_when_required).
        rules = [
            {"issuer": "entra", "claim": "upn", "strip_domain": True, "lowercase": True},
            {"issuer": "cognito", "claim": "cognito:username"},
            {"issuer": "cognito", "claim": "username"},
            {"issuer": "kc", "claim": "preferred_username", "require_roles": ["hpc-user"]},
            {"issuer": "oidc", "claim": "preferred_username"},
        ]
        service_accounts = [
            {"issuer": "kc", "client_id": "svc-batch", "account": "batchsvc", "max_lifetime": 600},
            {
                "issuer": "entra",
                "client_id": "11111111-2222-3333-4444-555555555555",
                "account": "entraapp",
                "algs": ["RS256"],
            },
        ]
        actor = {
            "issuer": "kc",
            "client_id": "portal",
            "allow_requested_subject": True,
            "subject_regex": "[a-z]+",
        }
        data = bridge_data(
            keys_dir,
            issuers,
            audit=f"file:{audit}",
            rules=rules,
            service_accounts=service_accounts,
            delegation={"actors": [actor]},
        )
        app = create_app(parse_settings(data))
        yield Env(app.test_client(), idps.kc, idps.cognito, idps.entra, idps.oidc, keys_dir, audit)


def slurm_claims(env: Env, body: dict[str, Any]) -> dict[str, Any]:
    ring = KeyRing.load(env.keys_dir)
    token = body["access_token"]
    assert jwt.get_unverified_header(token)["kid"] == ring.active.kid
    return jwt.decode(token, ring.active.private_key.public_key(), algorithms=["RS256"])


# ---------------------------------------------------------------- accept paths


def test_keycloak_user_token(env: Env) -> None:
    t = env.kc.mint(
        env.kc.keycloak_claims(azp="portal", username="alice", realm_roles=("hpc-user",))
    )
    r = env.exchange(t)
    assert r.status_code == 200, r.json
    body = r.json
    assert body["slurm_user"] == "alice"
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert body["token_type"] == "Bearer"
    assert r.headers["Cache-Control"] == "no-store"
    claims = slurm_claims(env, body)
    assert claims["sun"] == "alice"
    # capped at the upstream token's exp (300 s), not the 1800 s default
    assert claims["exp"] <= jwt.decode(t, options={"verify_signature": False})["exp"]
    assert body["expires_in"] <= 300
    line = env.audit_lines()[-1]
    assert line["outcome"] == "minted" and line["user"] == "alice" and line["issuer"] == "kc"
    assert (
        line["jti"] == claims["jti"]
        and line["kid"] == jwt.get_unverified_header(body["access_token"])["kid"]
    )
    assert body["access_token"] not in env.audit.read_text()
    assert t not in env.audit.read_text()


def test_keycloak_service_account(env: Env) -> None:
    t = env.kc.mint(env.kc.keycloak_claims(azp="svc-batch", username="", service=True))
    r = env.exchange(t)
    assert r.status_code == 200, r.json
    assert r.json["slurm_user"] == "batchsvc"
    assert env.audit_lines()[-1]["kind"] == "service"
    # the account's own lifetime cap
    r = env.exchange(t, requested_lifetime="900")
    assert r.status_code == 400 and "maximum of 600" in r.json["error_description"]


def test_unlisted_service_client_is_refused(env: Env) -> None:
    t = env.kc.mint(env.kc.keycloak_claims(azp="svc-rogue", username="", service=True))
    r = env.exchange(t)
    assert r.status_code == 400 and r.json["error"] == "unauthorized_client"
    assert "svc-rogue" in r.json["error_description"]


def test_cognito_access_and_id_tokens(env: Env) -> None:
    access = env.cognito.mint(
        env.cognito.cognito_claims("access", client_id="app1", username="alice")
    )
    assert env.exchange(access).json["slurm_user"] == "alice"
    idt = env.cognito.mint(env.cognito.cognito_claims("id", client_id="app1", username="bob"))
    r = env.exchange(idt, subject_token_type=IDT)
    assert r.status_code == 200 and r.json["slurm_user"] == "bob"


def test_entra_v1_v2_two_tenants_keys_without_alg(env: Env) -> None:
    assert "alg" not in env.entra.jwks()["keys"][0]
    for tid, version in ((TENANT, 2), (TENANT2, 1)):
        claims = env.entra.entra_claims(
            tid=tid, aud="api://bridge", version=version, username="Ada.L@Contoso.example"
        )
        r = env.exchange(env.entra.mint(claims))
        assert r.status_code == 200, r.json
        assert r.json["slurm_user"] == "ada.l"


def test_entra_app_only_token_is_a_service_account(env: Env) -> None:
    claims = env.entra.entra_claims(tid=TENANT, aud="api://bridge", app_only=True)
    r = env.exchange(env.entra.mint(claims))
    assert r.status_code == 200 and r.json["slurm_user"] == "entraapp"
    # HS256 is not in this account's allowed algorithms
    r = env.exchange(env.entra.mint(claims), alg="HS256")
    assert r.status_code == 403 and "HS256 is not allowed" in r.json["error_description"]


def test_hs256_minting_on_request(env: Env) -> None:
    t = env.oidc.mint(env.oidc.oidc_claims(sub="x", aud="bridge", preferred_username="alice"))
    r = env.exchange(t, alg="HS256")
    assert r.status_code == 200
    ring = KeyRing.load(env.keys_dir)
    claims = jwt.decode(r.json["access_token"], ring.hs256, algorithms=["HS256"])
    assert claims["sun"] == "alice"


def test_bearer_api(env: Env) -> None:
    t = env.oidc.mint(env.oidc.oidc_claims(sub="x", aud="bridge", preferred_username="alice"))
    r = env.client.post(
        "/api/v1/token", headers={"Authorization": f"Bearer {t}"}, json={"lifetime": 120}
    )
    assert r.status_code == 200 and r.json["slurm_user"] == "alice"
    assert r.json["expires_in"] == 120
    r = env.client.post("/api/v1/token")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = env.client.post(
        "/api/v1/token",
        headers={"Authorization": f"Bearer {t}"},
        json={"lifetime": 120, "user": "root"},
    )
    assert r.status_code == 400 and "unknown field 'user'" in r.json["error_description"]


def test_delegation(env: Env) -> None:
    actor = env.kc.mint(env.kc.keycloak_claims(azp="portal", username="", service=True))
    user = env.kc.mint(
        env.kc.keycloak_claims(azp="portal", username="bob", realm_roles=("hpc-user",))
    )
    r = env.exchange(user, actor_token=actor, actor_token_type=AT)
    assert r.status_code == 200 and r.json["slurm_user"] == "bob"
    line = env.audit_lines()[-1]
    assert line["actor"] == "kc:portal" and line["kind"] == "delegated"
    # requested_subject within the regex
    r = env.client.post(
        "/oauth/token",
        data={
            "grant_type": TE,
            "actor_token": actor,
            "actor_token_type": AT,
            "requested_subject": "carol",
        },
    )
    assert r.status_code == 200 and r.json["slurm_user"] == "carol"
    # never root, never outside the policy
    for name in ("root", "Carol", "x-y"):
        r = env.client.post(
            "/oauth/token",
            data={
                "grant_type": TE,
                "actor_token": actor,
                "actor_token_type": AT,
                "requested_subject": name,
            },
        )
        assert r.status_code == 403, name
        assert "access_token" not in r.json
    # an actor not in config
    rogue = env.kc.mint(env.kc.keycloak_claims(azp="svc-rogue", username="", service=True))
    r = env.exchange(user, actor_token=rogue, actor_token_type=AT)
    assert r.status_code == 400 and r.json["error"] == "unauthorized_client"


# ---------------------------------------------------------------- refusal matrix


def _alice(env: Env, **over: Any) -> dict[str, Any]:
    claims = env.oidc.oidc_claims(sub="a1", aud="bridge", preferred_username="alice")
    claims.update(over)
    return claims


def _tampered(env: Env) -> str:
    h, _p, s = env.oidc.mint(_alice(env)).split(".")
    evil = forge({"alg": "RS256"}, _alice(env, preferred_username="bob")).split(".")[1]
    return f"{h}.{evil}.{s}"


CASES: dict[str, tuple[Any, int, str]] = {
    "alg none": (lambda e: forge({"alg": "none", "typ": "JWT"}, _alice(e)), 400, "invalid_grant"),
    "HS256 with the issuer's public key": (
        lambda e: forge_hmac({"alg": "HS256", "kid": e.oidc.kid}, _alice(e), e.oidc.public_pem()),
        400,
        "invalid_grant",
    ),
    "wrong iss": (
        lambda e: e.oidc.mint(_alice(e, iss="https://evil.example")),
        400,
        "invalid_grant",
    ),
    "wrong aud": (lambda e: e.oidc.mint(_alice(e, aud="someone-else")), 400, "invalid_grant"),
    "wrong cognito client_id": (
        lambda e: e.cognito.mint(
            e.cognito.cognito_claims("access", client_id="app2", username="alice")
        ),
        400,
        "invalid_grant",
    ),
    "wrong token_use": (
        lambda e: e.cognito.mint(
            {
                **e.cognito.cognito_claims("access", client_id="app1", username="alice"),
                "token_use": "refresh",
            }
        ),
        400,
        "invalid_grant",
    ),
    "expired": (
        lambda e: e.oidc.mint(_alice(e, exp=e.oidc.now() - 600, iat=e.oidc.now() - 900)),
        400,
        "invalid_grant",
    ),
    "nbf in the future": (
        lambda e: e.oidc.mint(_alice(e, nbf=e.oidc.now() + 600)),
        400,
        "invalid_grant",
    ),
    "unknown kid": (lambda e: e.oidc.mint(_alice(e), kid="not-published"), 400, "invalid_grant"),
    "tampered payload": (_tampered, 400, "invalid_grant"),
    "over 16 KiB": (lambda e: e.oidc.mint(_alice(e, pad="x" * 17000)), 400, "invalid_request"),
    "Graph nonce header": (
        lambda e: e.entra.mint(
            e.entra.entra_claims(tid=TENANT, aud="api://bridge"), header={"nonce": "abc"}
        ),
        400,
        "invalid_grant",
    ),
    "Entra tenant not allowed": (
        lambda e: e.entra.mint(e.entra.entra_claims(tid=STRANGER, aud="api://bridge")),
        400,
        "invalid_grant",
    ),
    "garbage": (lambda e: "not.a.jwt", 400, "invalid_grant"),
    "unmapped user": (
        lambda e: e.kc.mint(e.kc.keycloak_claims(azp="portal", username="alice")),
        403,
        "access_denied",
    ),
    "mapped to root": (
        lambda e: e.oidc.mint(_alice(e, preferred_username="root")),
        403,
        "access_denied",
    ),
    "mapped to SlurmUser": (
        lambda e: e.oidc.mint(_alice(e, preferred_username="slurm")),
        403,
        "access_denied",
    ),
    "mapped to a system account": (
        lambda e: e.oidc.mint(_alice(e, preferred_username="daemon")),
        403,
        "access_denied",
    ),
    "look-alike name": (
        lambda e: e.oidc.mint(_alice(e, preferred_username="\uff41lice")),
        403,
        "access_denied",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refusal_matrix(env: Env, case: str) -> None:
    make, status, error = CASES[case]
    token = make(env)
    r = env.exchange(token)
    assert r.status_code == status, (case, r.json)
    body = r.json
    assert body["error"] == error, (case, body)
    assert "access_token" not in body
    assert body["error_description"]
    assert token not in body["error_description"]
    line = env.audit_lines()[-1]
    assert line["outcome"] == "refused" and line["reason"]
    assert "kid" not in line and "jti" not in line  # nothing was minted


def test_graph_token_error_tells_what_to_do(env: Env) -> None:
    t = env.entra.mint(
        env.entra.entra_claims(tid=TENANT, aud="api://bridge"), header={"nonce": "x"}
    )
    reason = env.exchange(t).json["error_description"]
    assert "Microsoft Graph token" in reason and "api://bridge/.default" in reason


def test_missing_local_account_when_required(env: Env, keys_dir: Path, tmp_path: Path) -> None:
    data = bridge_data(keys_dir, [oidc_issuer(env.oidc)])
    data["mapping"]["require_local_account"] = True
    client = create_app(parse_settings(data)).test_client()
    form = {"grant_type": TE, "subject_token_type": AT}
    t = env.oidc.mint(_alice(env, preferred_username="nosuchuser42"))
    r = client.post("/oauth/token", data={**form, "subject_token": t})
    assert r.status_code == 403 and "no local account" in r.json["error_description"]
    name = local_user()
    t = env.oidc.mint(_alice(env, preferred_username=name))
    assert client.post("/oauth/token", data={**form, "subject_token": t}).status_code == 200


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({"grant_type": TE, "subject_token_type": AT}, "invalid_request"),
        (
            {"grant_type": TE, "subject_token": "x.y.z", "subject_token_type": "saml"},
            "invalid_request",
        ),
        (
            {
                "grant_type": TE,
                "subject_token": "x.y.z",
                "subject_token_type": AT,
                "requested_token_type": "urn:ietf:params:oauth:token-type:saml2",
            },
            "invalid_request",
        ),
        (
            {
                "grant_type": TE,
                "subject_token": "x.y.z",
                "subject_token_type": AT,
                "requested_lifetime": "lots",
            },
            "invalid_request",
        ),
    ],
)
def test_malformed_requests(env: Env, form: dict[str, str], error: str) -> None:
    r = env.client.post("/oauth/token", data=form)
    assert r.status_code == 400 and r.json["error"] == error


def test_json_body_is_refused_on_the_form_endpoint(env: Env) -> None:
    r = env.client.post("/oauth/token", json={"grant_type": TE})
    assert r.status_code == 400 and "form-encoded" in r.json["error_description"]


def test_lifetime_policy(env: Env) -> None:
    t = env.oidc.mint(_alice(env, exp=env.oidc.now() + 7200))
    assert env.exchange(t, requested_lifetime="3600").json["expires_in"] == 3600
    r = env.exchange(t, requested_lifetime="3601")
    assert r.status_code == 400 and "maximum of 3600" in r.json["error_description"]


def test_openapi_document(env: Env) -> None:
    doc = env.client.get("/openapi.json").json
    assert doc["openapi"].startswith("3.")
    assert {"/oauth/token", "/api/v1/token", "/.well-known/jwks.json"} <= set(doc["paths"])
