"""``[rate_limit] per_subject`` with several limits (``"1000/hour;2/minute"``): every one of them
holds, not only the first, as with ``per_address``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.ratelimit import SubjectLimiter
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.proxy_settings import proxy_settings_data
from tests.unit.test_proxy_auth_request import bearer, idp_token


def _client(keys_dir: Path, tmp_path: Path, idp: Any, **rate_limit: str) -> Any:
    data = proxy_settings_data(keys_dir, tmp_path, idp, None)
    data["rate_limit"] = rate_limit
    return create_app(parse_settings(data)).test_client()


def _codes(client: Any, token: str, n: int) -> list[int]:
    return [client.post("/api/v1/token", headers=bearer(token)).status_code for _ in range(n)]


def test_the_second_limit_of_per_subject_is_enforced(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    client = _client(
        keys_dir, tmp_path, idp, per_subject="1000/hour;2/minute", per_address="1000/minute"
    )
    codes = _codes(client, idp_token(idp), 5)
    assert codes == [200, 200, 429, 429, 429], codes
    r = client.post("/api/v1/token", headers=bearer(idp_token(idp)))
    assert "2 per 1 minute" in r.json["error_description"], r.json  # names the limit hit
    assert int(r.headers["Retry-After"]) >= 1


def test_the_first_limit_still_holds_when_it_is_the_lower(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    client = _client(
        keys_dir, tmp_path, idp, per_subject="2/hour;1000/minute", per_address="1000/minute"
    )
    assert _codes(client, idp_token(idp), 3) == [200, 200, 429]


def test_each_limit_is_kept_for_the_process(monkeypatch: Any) -> None:
    """In memory, N workers each allow 1/N of every limit."""
    from slurm_jwt_bridge.settings import WORKERS_ENV

    monkeypatch.setenv(WORKERS_ENV, "4")
    limiter = SubjectLimiter(
        parse_settings({"rate_limit": {"per_subject": "1000/hour;8/minute"}}).rate_limit
    )
    assert [(i.amount, i.GRANULARITY.name) for i in limiter.items] == [
        (250, "hour"),
        (2, "minute"),
    ]
