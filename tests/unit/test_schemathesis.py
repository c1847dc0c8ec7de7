"""The service against its own OpenAPI document (``GET /openapi.json``), with schemathesis.

Every documented operation gets generated requests, valid and invalid by the schema
(schemathesis "positive" and "negative" modes), sent in-process to the WSGI app. The answers
must never be a 5xx, and must match the document: a documented status code, the documented
content type, a body of the documented schema. Invalid requests must be refused (4xx).

For the token endpoints the generated ``subject_token`` is random text, which the service
refuses: the accepted path (200 with a TokenResponse) is exercised by a second pass whose cases
carry a real identity-provider token (the generated lifetime and alg still vary).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import init_keys
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.issuers import bridge_data, oidc_issuer
from tests.helpers.test_issuer import TestIssuer

_ENV_EXAMPLES = int(os.environ.get("SLURM_JWT_BRIDGE_FUZZ_EXAMPLES", "0") or 0)
FUZZ = settings(
    max_examples=_ENV_EXAMPLES or 60,
    deadline=None,
    derandomize=not _ENV_EXAMPLES,
    database=None,
    suppress_health_check=list(HealthCheck),
)
REQUIRED_FORM = ("grant_type", "subject_token", "subject_token_type")
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class Env:
    app: Any
    schema: Any
    idp: Any
    idp_token: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    keys_dir = tmp_path_factory.mktemp("schemathesis") / "keys"
    init_keys(keys_dir)
    server = TestIssuer().start()
    idp = server.add_issuer("/oidc")
    data = bridge_data(keys_dir, [oidc_issuer(idp)], rate_limit={"enabled": False})
    app = create_app(parse_settings(data, Path.cwd()))
    # A probe starts the first JWKS fetch in the background and answers at once: the service
    # under test is a ready one.
    client, deadline = app.test_client(), time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json
        time.sleep(0.05)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    claims = idp.oidc_claims(sub="s-alice", aud="bridge", preferred_username="alice")
    token = idp.mint({**claims, "exp": idp.now() + 86400})
    yield Env(app, schema, idp, token)
    server.stop()


def operations(schema_doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(path, method.upper()) for path, ops in schema_doc["paths"].items() for method in ops]


def _document() -> dict[str, Any]:
    from slurm_jwt_bridge.web.openapi import document

    return document()


OPERATIONS = operations(_document())


def run(env: Env, path: str, method: str, mode: GenerationMode) -> None:
    strategy = env.schema[path][method].as_strategy(generation_mode=mode)
    checked = 0

    @FUZZ
    @given(case=strategy)
    def check(case: Any) -> None:
        nonlocal checked
        checked += 1
        response = case.call()
        case.validate_response(response, checks=CONFORMANCE)
        if mode == GenerationMode.NEGATIVE:
            # Data the document forbids is refused (schemathesis' own negative_data_rejection
            # does not count 413, which is how a body over the limit is refused).
            assert 400 <= response.status_code < 500, (response.status_code, case.body)

    check()
    assert checked > 0, f"no {mode.value} case of {method} {path} was checked"


def _has_input(path: str, method: str) -> bool:
    op = _document()["paths"][path][method.lower()]
    return "requestBody" in op or "parameters" in op


CASES = [
    (path, method, mode)
    for path, method in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or _has_input(path, method)
]


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_operation_conforms(env: Env, path: str, method: str, mode: GenerationMode) -> None:
    run(env, path, method, mode)


def test_token_exchange_with_a_real_token_conforms(env: Env) -> None:
    """Positive cases whose subject_token is a real IdP token: 200 answers are checked too."""
    seen: set[int] = set()
    strategy = env.schema["/oauth/token"]["POST"].as_strategy(
        generation_mode=GenerationMode.POSITIVE
    )

    @FUZZ
    @given(case=strategy)
    def check(case: Any) -> None:
        body = dict(case.body)
        body.update(subject_token=env.idp_token)
        # the token-exchange grant (the device_code grant has its own tests)
        body["grant_type"] = "urn:ietf:params:oauth:grant-type:token-exchange"
        body.pop("device_code", None)
        body.pop("actor_token", None)
        body.pop("actor_token_type", None)
        body.pop("requested_subject", None)
        case.body = body
        response = case.call()
        seen.add(response.status_code)
        case.validate_response(response, checks=CONFORMANCE)

    check()
    assert 200 in seen, seen  # the accepted path was exercised, not only refusals


def test_bearer_endpoint_with_a_real_token_conforms(env: Env) -> None:
    seen: set[int] = set()
    strategy = env.schema["/api/v1/token"]["POST"].as_strategy(
        generation_mode=GenerationMode.POSITIVE
    )

    @FUZZ
    @given(case=strategy)
    def check(case: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {env.idp_token}"}
        response = case.call()
        seen.add(response.status_code)
        case.validate_response(response, checks=CONFORMANCE)

    check()
    assert 200 in seen, seen


@pytest.mark.parametrize(("path", "method"), [("/oauth/token", "POST"), ("/api/v1/token", "POST")])
def test_schema_violations_with_a_real_token_are_refused(env: Env, path: str, method: str) -> None:
    """Negative cases that still carry a real IdP token: the document's constraints (enums,
    minimum lifetime, types, no extra JSON fields) are enforced, not only the token."""
    strategy = env.schema[path][method].as_strategy(generation_mode=GenerationMode.NEGATIVE)
    checked = 0

    @FUZZ
    @given(case=strategy)
    def check(case: Any) -> None:
        nonlocal checked
        if not case.meta.is_negative_at(ParameterLocation.BODY):
            return  # the negated part was a header we replace with the real token below
        if path == "/api/v1/token":
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {env.idp_token}"}
        elif isinstance(case.body, dict):
            # RFC 6749 3.1: a parameter sent without a value is treated as omitted.
            assume(not any(v == "" for k, v in case.body.items() if k not in REQUIRED_FORM))
            token = case.body.get("subject_token")
            if isinstance(token, str) and len(token) <= 16384:
                case.body = {**case.body, "subject_token": env.idp_token}
        response = case.call()
        case.validate_response(response, checks=CONFORMANCE)
        assert 400 <= response.status_code < 500, (response.status_code, case.body)
        checked += 1

    check()
    # Every case skipped (a negated header only, an empty value) would prove nothing.
    assert checked > 0, f"no schema violation in the body of {method} {path} was checked"


@pytest.mark.parametrize(
    "body",
    [{"lifetime": "600"}, {"lifetime": None}, {"lifetime": ""}, {"alg": None}, {"alg": ""}],
)
def test_json_token_options_are_typed_strictly(env: Env, body: dict[str, Any]) -> None:
    """Fixed points of the property above (these were accepted before web/api.py typed
    the JSON options strictly)."""
    auth = {"Authorization": f"Bearer {env.idp_token}"}
    r = env.app.test_client().post("/api/v1/token", json=body, headers=auth)
    assert r.status_code == 400, r.get_json()
