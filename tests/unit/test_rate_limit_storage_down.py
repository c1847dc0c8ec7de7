"""``[rate_limit] storage_uri`` names a Redis that does not answer: every door that counts
requests fails closed with a 503 ``temporarily_unavailable`` (``Retry-After``, ``Cache-Control:
no-store``), one audit line and a refused metric per request; nothing is minted. The outage is
logged once, without the URI's password."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.ports import free_port
from tests.helpers.proxy_settings import proxy_settings_data
from tests.unit.test_proxy_auth_request import bearer, idp_token

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
PASSWORD = "s3cret-Redis-pw"


def _app(keys_dir: Path, tmp_path: Path, idp: Any, **rate_limit: Any) -> Any:
    data = proxy_settings_data(
        keys_dir, tmp_path, idp, {"auth_request": True, "upstream": "http://127.0.0.1:9"}
    )
    # nothing listens on that port: every connection is refused
    uri = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0?password={PASSWORD}"
    data["rate_limit"] = {"storage_uri": uri, **rate_limit}
    return create_app(parse_settings(data))


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _assert_503(r: Any) -> None:
    assert r.status_code == 503, r.get_data(as_text=True)[:300]
    assert r.json["error"] == "temporarily_unavailable", r.json
    assert "rate-limit storage" in r.json["error_description"], r.json
    assert int(r.headers["Retry-After"]) >= 1, dict(r.headers)
    assert r.headers["Cache-Control"] == "no-store", dict(r.headers)
    assert "access_token" not in r.json


def _refused_metric(client: Any, door: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    total = 0.0
    for line in text.splitlines():
        if line.startswith("slurm_jwt_bridge_tokens_refused_total{") and f'door="{door}"' in line:
            if 'reason="rate_limit_storage"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize(
    ("door", "send"),
    [
        (
            "token-exchange",
            lambda c, t: c.post(
                "/oauth/token",
                data={"grant_type": TE, "subject_token": t, "subject_token_type": AT},
            ),
        ),
        ("api", lambda c, t: c.post("/api/v1/token", headers=bearer(t))),
    ],
    ids=["oauth-token", "api-v1-token"],
)
def test_the_token_api_fails_closed_per_address(
    keys_dir: Path,
    tmp_path: Path,
    idp: Any,
    caplog: pytest.LogCaptureFixture,
    door: str,
    send: Any,
) -> None:
    client = _app(keys_dir, tmp_path, idp).test_client()
    before = _refused_metric(client, door)  # the counters are the process's
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            _assert_503(send(client, idp_token(idp)))
    lines = _audit(tmp_path)
    assert [(x["event"], x["outcome"], x["door"]) for x in lines] == [
        ("exchange", "refused", door)
    ] * 2, lines
    assert "rate-limit storage" in lines[0]["reason"], lines[0]
    assert _refused_metric(client, door) == before + 2
    said = [r for r in caplog.records if "rate-limit storage" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]  # once, not per request
    assert "127.0.0.1" in said[0].getMessage()
    assert PASSWORD not in caplog.text and PASSWORD not in json.dumps(lines)


def test_the_subject_limit_fails_closed_at_the_proxy_doors(
    keys_dir: Path, tmp_path: Path, idp: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``/proxy/auth`` and ``/slurm/...`` count per verified subject only."""
    client = _app(keys_dir, tmp_path, idp).test_client()
    before = _refused_metric(client, "proxy")
    with caplog.at_level(logging.INFO):
        r = client.get("/proxy/auth", headers=bearer(idp_token(idp)))
        assert r.status_code == 503, r.get_data(as_text=True)[:300]
        assert r.headers.get("X-Slurm-User") is None
        r = client.get("/slurm/v0.0.40/ping", headers=bearer(idp_token(idp, ttl=3001)))
        assert r.status_code == 503, r.get_data(as_text=True)[:300]
        assert r.json["error"] == "temporarily_unavailable"
        assert int(r.headers["Retry-After"]) >= 1
    lines = _audit(tmp_path)
    assert [(x["outcome"], x["door"]) for x in lines] == [("refused", "proxy")] * 2, lines
    assert all("rate-limit storage" in x["reason"] for x in lines), lines
    assert _refused_metric(client, "proxy") == before + 2
    assert PASSWORD not in caplog.text


def test_an_outage_of_a_real_redis_is_refused_then_counted_again(
    keys_dir: Path,
    tmp_path: Path,
    idp: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tests.helpers.redis as redis_helper

    redis = redis_helper.RedisServer(tmp_path / "redis")
    data = proxy_settings_data(keys_dir, tmp_path, idp, None)
    data["rate_limit"] = {"storage_uri": redis.url}
    client = create_app(parse_settings(data)).test_client()
    try:
        with caplog.at_level(logging.INFO):
            assert client.post("/api/v1/token", headers=bearer(idp_token(idp))).status_code == 200
            redis.stop()
            _assert_503(client.post("/api/v1/token", headers=bearer(idp_token(idp))))
            monkeypatch.setattr(redis_helper, "free_port", lambda: redis.port)
            redis = redis_helper.RedisServer(tmp_path / "redis")  # the same port again
            r = client.post("/api/v1/token", headers=bearer(idp_token(idp)))
            assert r.status_code == 200, r.get_data(as_text=True)[:300]
    finally:
        redis.stop()
    said = [r.getMessage() for r in caplog.records if "rate-limit storage" in r.getMessage()]
    assert len(said) == 2 and "cannot be reached" in said[0] and "answers again" in said[1], said
    assert [x["outcome"] for x in _audit(tmp_path)] == ["minted", "refused", "minted"]
