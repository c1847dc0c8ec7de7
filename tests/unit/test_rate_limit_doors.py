"""Rate limits at the doors (adversarial review of the limits):

- a request over the per-address limit is refused like every other refusal at a door: one
  audit line and one count in ``tokens_refused_total`` (docs/observability.md);
- the browser's "Get a new token" (``POST /token``) has the per-address limit of the other
  doors, and a new token from a grant decided earlier (browser, device code, proxy) counts
  against the per-subject limit like an exchange does;
- when the counters stop answering after a request was counted, the answer (a token already
  minted) still reaches the client, without the X-RateLimit headers: never a 500."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.proxy_settings import browser_proxy_settings_data, proxy_settings_data
from tests.helpers.redis import RedisServer
from tests.helpers.sessions import logged_in
from tests.unit.test_door_refusals_audited import Watch
from tests.unit.test_proxy_auth_request import bearer, idp_token

PUBLIC = "https://hpc.example.org"


def _api(keys_dir: Path, tmp_path: Path, idp: Any, rules: Any = None, **rate_limit: Any) -> Any:
    data = proxy_settings_data(keys_dir, tmp_path, idp, None)
    data["rate_limit"] = {"enabled": True, **rate_limit}
    if rules:
        data["mapping"]["rules"] = rules
    return create_app(parse_settings(data))


def _browser(keys_dir: Path, tmp_path: Path, idp: Any, upstream: Any, **rate_limit: Any) -> Any:
    data = browser_proxy_settings_data(keys_dir, tmp_path, idp, {"upstream": upstream.url}, PUBLIC)
    data["rate_limit"] = {"enabled": True, **rate_limit}
    return create_app(parse_settings(data, tmp_path))


def _new_tokens(client: Any, n: int) -> list[int]:
    """The statuses of ``n`` presses of the page's "Get a new token" button."""
    return [
        client.post("/token", data={"csrf": "x"}, headers={"Origin": PUBLIC}).status_code
        for _ in range(n)
    ]


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_attack_refusals_over_the_address_limit_are_audited_and_counted(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    app = _api(keys_dir, tmp_path, idp, per_address="2/minute", per_subject="1000/minute")
    token = idp_token(idp)
    client = app.test_client()
    assert [client.post("/api/v1/token", headers=bearer(token)).status_code for _ in range(2)] == [
        200,
        200,
    ]
    watch = Watch(app, tmp_path)
    r = watch.client.post("/api/v1/token", headers=bearer(token))
    assert r.status_code == 429 and r.json["error"] == "rate_limited", r.json
    assert int(r.headers["Retry-After"]) >= 1
    new = watch.new_lines()
    assert len(new) == 1, new
    line = new[0]
    assert (line["event"], line["outcome"], line["door"]) == ("exchange", "refused", "api"), line
    assert "too many requests" in line["reason"] and line["remote_addr"] == "127.0.0.1", line
    assert token not in json.dumps(line)
    assert watch.counted() == {("api", "rate_limited_address"): 1.0}


def test_attack_browser_new_token_is_limited_per_address(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: Any
) -> None:
    app = _browser(
        keys_dir, tmp_path, idp, upstream, per_address="3/minute", per_subject="1000/minute"
    )
    codes = _new_tokens(logged_in(app), 6)
    assert codes == [302, 302, 302, 429, 429, 429], codes
    minted = [a for a in _audit(tmp_path) if (a["event"], a["outcome"]) == ("remint", "minted")]
    refused = [a for a in _audit(tmp_path) if (a["event"], a["outcome"]) == ("remint", "refused")]
    assert (len(minted), len(refused)) == (3, 3)


def test_attack_browser_new_token_is_limited_per_subject(
    keys_dir: Path, tmp_path: Path, idp: Any, upstream: Any
) -> None:
    app = _browser(
        keys_dir, tmp_path, idp, upstream, per_address="1000/minute", per_subject="2/minute"
    )
    codes = _new_tokens(logged_in(app), 4)
    assert codes == [302, 302, 429, 429], codes
    refused = [a for a in _audit(tmp_path) if a["outcome"] == "refused"]
    assert len(refused) == 2 and all(a["user"] == "alice" for a in refused), refused
    # another person's session is not affected
    assert _new_tokens(logged_in(app, "bob"), 1) == [302]


def test_attack_storage_lost_after_counting_still_answers_the_minted_token(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    """Redis answers the counts, then stops while the mapping command runs (after both limits
    were counted): the after-request X-RateLimit headers read it again."""
    redis = RedisServer(tmp_path / "redis")
    started = tmp_path / "mapping-started"
    script = tmp_path / "slowmap.sh"
    script.write_text(f"#!/bin/sh\ntouch '{started}'\nsleep 1.5\necho alice\n")
    script.chmod(0o755)

    def stop_redis_when_the_mapping_runs() -> None:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        redis.stop()

    rules = [{"claim": "preferred_username", "command": [str(script)], "command_timeout": 5}]
    try:
        app = _api(
            keys_dir,
            tmp_path,
            idp,
            rules=rules,
            per_address="100/minute",
            per_subject="100/minute",
            storage_uri=redis.url,
        )
        client = app.test_client()
        stopper = threading.Thread(target=stop_redis_when_the_mapping_runs)
        stopper.start()
        r = client.post("/api/v1/token", headers=bearer(idp_token(idp)))
        stopper.join()
    finally:
        redis.stop()
    assert r.status_code == 200, r.get_data(as_text=True)[:300]
    assert r.json["access_token"]
    assert "X-RateLimit-Limit" not in r.headers
    audit = _audit(tmp_path)
    assert [(a["event"], a["outcome"]) for a in audit] == [("exchange", "minted")], audit
    # the next request is refused, closed, as before
    time.sleep(0.1)
    r = client.post("/api/v1/token", headers=bearer(idp_token(idp)))
    assert r.status_code == 503 and r.json["error"] == "temporarily_unavailable", r.json
