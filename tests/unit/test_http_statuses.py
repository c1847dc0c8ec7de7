"""docs/http.md's table of token-endpoint refusals, walked: every documented (status, error)
is produced through the Flask test client at /oauth/token or /api/v1/token, and every pair
the walk produces is documented. Each refusal carries ``Cache-Control: no-store``. The rows of
"Keys and operations" (JWKS, health, readiness, metrics) are walked the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.test_issuer import forge

DOC = Path(__file__).resolve().parents[2] / "docs" / "http.md"
TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"


def token_endpoint_table() -> set[tuple[int, str]]:
    """The (status, error) rows of the first table of docs/http.md (token-endpoint refusals)."""
    text = DOC.read_text()
    table = text.split("| status | `error` | when |", 1)[1].split("\n\n", 1)[0]
    return {(int(s), e) for s, e in re.findall(r"^\| (\d{3}) \| `(\w+)` \|", table, re.M)}


def _app(tmp_path: Path, idp: Any, **extra: Any) -> Any:
    data: dict[str, Any] = {
        "keys": {"dir": str(tmp_path / "keys")},
        "audit": {"destination": "none"},
        "browser": {"enabled": False},
        "issuers": [
            {
                "name": "oidc",
                "kind": "oidc",
                "issuer": idp.issuer,
                "audiences": ["bridge"],
                "token_use": ["access"],
            }
        ],
        "mapping": {"require_local_account": False, "rules": [{"claim": "preferred_username"}]},
        "rate_limit": {"enabled": False},
    }
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values}
    return create_app(parse_settings(data, tmp_path))


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    from click.testing import CliRunner

    from slurm_jwt_bridge.cli import main

    r = CliRunner().invoke(main, ["keys", "init", "--keys-dir", str(tmp_path / "keys")])
    assert r.exit_code == 0, r.output
    return tmp_path / "keys"


def _user(idp: Any, name: str = "alice") -> str:
    return str(idp.mint(idp.oidc_claims(aud="bridge", preferred_username=name)))


def _exchange(client: Any, token: str, **extra: str) -> Any:
    form = {"grant_type": TE, "subject_token": token, "subject_token_type": AT, **extra}
    return client.post("/oauth/token", data=form)


Producer = Callable[[Path, Any], Any]


def _invalid_request(tmp: Path, idp: Any) -> Any:
    return _app(tmp, idp).test_client().post("/oauth/token", data={"grant_type": TE})


def _unsupported_grant_type(tmp: Path, idp: Any) -> Any:
    return _app(tmp, idp).test_client().post("/oauth/token", data={"grant_type": "password"})


def _invalid_grant(tmp: Path, idp: Any) -> Any:
    token = forge({"alg": "none"}, idp.oidc_claims(aud="bridge", preferred_username="alice"))
    return _exchange(_app(tmp, idp).test_client(), token)


def _unauthorized_client(tmp: Path, idp: Any) -> Any:
    client = _app(tmp, idp).test_client()
    return _exchange(client, _user(idp), actor_token=_user(idp, "bob"), actor_token_type=AT)


def _no_bearer(tmp: Path, idp: Any) -> Any:
    return _app(tmp, idp).test_client().post("/api/v1/token", json={})


def _root(tmp: Path, idp: Any) -> Any:
    return _exchange(_app(tmp, idp).test_client(), _user(idp, "root"))


def _too_large(tmp: Path, idp: Any) -> Any:
    return _exchange(_app(tmp, idp).test_client(), "x" * (65 * 1024))


def _rate_limited(tmp: Path, idp: Any) -> Any:
    client = _app(tmp, idp, rate_limit={"enabled": True, "per_address": "1/minute"}).test_client()
    _exchange(client, _user(idp))
    return _exchange(client, _user(idp))


def _lookup_cannot_start(tmp: Path, idp: Any) -> Any:
    rule = {"claim": "preferred_username", "command": [str(tmp / "no-such-command")]}
    client = _app(tmp, idp, mapping={"rules": [rule]}).test_client()
    return _exchange(client, _user(idp))


def _issuer_down(tmp: Path, idp: Any) -> Any:
    client = _app(tmp, idp).test_client()
    token = _user(idp)
    idp.mode = "down"  # the bridge has not fetched the issuer's keys yet
    return _exchange(client, token)


PRODUCERS: dict[tuple[int, str], Producer] = {
    (400, "invalid_request"): _invalid_request,
    (400, "unsupported_grant_type"): _unsupported_grant_type,
    (400, "invalid_grant"): _invalid_grant,
    (400, "unauthorized_client"): _unauthorized_client,
    (401, "invalid_request"): _no_bearer,
    (403, "access_denied"): _root,
    (413, "invalid_request"): _too_large,
    (429, "rate_limited"): _rate_limited,
    (500, "server_error"): _lookup_cannot_start,
    (503, "temporarily_unavailable"): _issuer_down,
}


def test_the_walk_covers_the_documented_table() -> None:
    documented = token_endpoint_table()
    assert len(documented) >= 8, documented
    assert set(PRODUCERS) == documented, (
        f"documented, no producer: {sorted(documented - set(PRODUCERS))}; "
        f"produced, undocumented: {sorted(set(PRODUCERS) - documented)}"
    )


@pytest.mark.parametrize("row", sorted(PRODUCERS), ids=lambda r: f"{r[0]}-{r[1]}")
def test_each_documented_refusal_is_produced(
    tmp_path: Path, idp: Any, keys: Path, row: tuple[int, str]
) -> None:
    r = PRODUCERS[row](tmp_path, idp)
    assert (r.status_code, (r.get_json(silent=True) or {}).get("error")) == row, r.get_data(
        as_text=True
    )[:300]
    assert r.headers.get("Cache-Control") == "no-store", dict(r.headers)


# ---------------------------------------------------------------- keys and operations


def operations_table() -> dict[str, set[int]]:
    """path -> the statuses its row of "Keys and operations" names (200 for every path)."""
    text = DOC.read_text().split("## Keys and operations", 1)[1].split("\n\n", 2)[1]
    rows: dict[str, set[int]] = {}
    for line in text.splitlines()[2:]:
        paths, _, meaning = line.partition(" | ")
        statuses = {200} | {int(n) for n in re.findall(r"`(\d{3})\b", meaning)}
        for path in re.findall(r"`GET (/[\w./-]*)`", paths):
            rows[path] = statuses
    return rows


def _operations(tmp: Path, idp: Any) -> dict[str, set[int]]:
    produced: dict[str, set[int]] = {}
    client = _app(tmp, idp).test_client()
    for path in ("/.well-known/jwks.json", "/jwks.json"):
        r = client.get(path)
        r2 = client.get(path, headers={"If-None-Match": r.headers["ETag"]})
        produced[path] = {r.status_code, r2.status_code}
    produced["/healthz"] = {client.get("/healthz").status_code}
    outside = {"REMOTE_ADDR": "192.0.2.7"}  # not in [server] internal_allow
    produced["/metrics"] = {
        client.get("/metrics").status_code,
        client.get("/metrics", environ_base=outside).status_code,
    }
    ready = client.get("/readyz").status_code  # the issuer's keys are fetched at first use
    client.post(
        "/oauth/token",
        data={"grant_type": TE, "subject_token": _user(idp), "subject_token_type": AT},
    )
    produced["/readyz"] = {ready, client.get("/readyz").status_code}
    return produced


def test_keys_and_operations_statuses_are_the_documented_ones(
    tmp_path: Path, idp: Any, keys: Path
) -> None:
    documented = operations_table()
    assert set(documented) >= {"/jwks.json", "/healthz", "/readyz", "/metrics"}, documented
    assert _operations(tmp_path, idp) == documented
