"""Unexpected failures inside the pipeline: still one audit line (refused, "internal error"),
still a metric, and a clean JSON answer instead of a bare 500 page; a claim value with a NUL
for the lookup command is refused as bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.proxy_settings import proxy_settings_data

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"


def app_for(idp: Any, keys_dir: Path, tmp_path: Path) -> Any:
    settings = parse_settings(
        {
            "keys": {"dir": str(keys_dir)},
            "audit": {"destination": f"file:{tmp_path / 'audit.log'}"},
            "browser": {"enabled": False},
            "issuers": [
                {"name": "idp", "kind": "oidc", "issuer": idp.issuer, "audiences": ["bridge"]}
            ],
            "mapping": {
                "require_local_account": False,
                "rules": [{"claim": "preferred_username", "command": ["/bin/echo"]}],
            },
        },
        keys_dir.parent,
    )
    return create_app(settings)


def exchange(client: Any, idp: Any, name: str) -> Any:
    token = idp.mint(idp.oidc_claims(sub="s-1", aud="bridge", preferred_username=name))
    form = {"grant_type": TE, "subject_token": token, "subject_token_type": AT}
    return client.post("/oauth/token", data=form)


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]


def refused_count(client: Any, reason: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("slurm_jwt_bridge_tokens_refused_total{")
            and f'reason="{reason}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_nul_in_a_claim_for_the_lookup_command_is_refused_and_audited(
    idp: Any, keys_dir: Path, tmp_path: Path
) -> None:
    client = app_for(idp, keys_dir, tmp_path).test_client()
    resp = exchange(client, idp, "alice\x00bob")
    assert resp.status_code in (400, 403)
    assert "access_token" not in resp.json
    lines = audit(tmp_path)
    assert lines[-1]["outcome"] == "refused"


def test_an_unexpected_exception_is_audited_counted_and_answered_in_json(
    idp: Any, keys_dir: Path, tmp_path: Path
) -> None:
    app = app_for(idp, keys_dir, tmp_path)
    mapper = app.extensions["slurm_jwt_bridge"].pipeline.mapper

    def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("something nobody expected")

    mapper._runner = broken
    client = app.test_client()
    before = refused_count(client, "internal_error")
    resp = exchange(client, idp, "alice")
    assert resp.status_code == 500
    assert resp.json["error"] == "server_error"
    assert "nobody expected" not in resp.get_data(as_text=True)
    line = audit(tmp_path)[-1]
    assert line["outcome"] == "refused"
    assert line["reason"] == "internal error"
    assert line["issuer"] == "idp"
    assert refused_count(client, "internal_error") == before + 1


def test_an_unknown_alg_at_the_api_door_is_decided_audited_and_counted_by_the_pipeline(
    idp: Any, keys_dir: Path, tmp_path: Path
) -> None:
    """The API door parses only the body's syntax: the value of ``alg`` is the pipeline's to
    refuse, so the refusal names who asked and counts as ``bad_alg`` like the form door's."""
    data = proxy_settings_data(keys_dir, tmp_path, idp, None)
    client = create_app(parse_settings(data, keys_dir.parent)).test_client()
    token = idp.mint(idp.oidc_claims(sub="s-1", aud="bridge", preferred_username="alice"))
    before = refused_count(client, "bad_alg")
    r = client.post(
        "/api/v1/token", json={"alg": "none"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 400 and r.json["error"] == "invalid_request"
    assert r.json["error_description"].startswith("alg must be RS256 or HS256")
    line = audit(tmp_path)[-1]
    assert (line["event"], line["outcome"], line["door"]) == ("exchange", "refused", "api")
    assert line["user"] == "alice" and line["issuer"] == "oidc"
    assert refused_count(client, "bad_alg") == before + 1
    # a value of the wrong type is still the door's syntax error, audited before the pipeline
    r = client.post("/api/v1/token", json={"alg": 5}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 400 and r.json["error_description"] == "alg must be RS256 or HS256"
    assert audit(tmp_path)[-1]["outcome"] == "refused"
    assert refused_count(client, "bad_alg") == before + 1
