"""Every refusal at a door is one audit line (door, reason, remote address; never the token)
and one count in ``tokens_refused_total`` with its reason (SECURITY.md section 1,
docs/observability.md), while the HTTP answer stays what docs/http.md says.

Attacks: a client probing the token doors with malformed requests (wrong grant, token types,
content type, no Bearer header, a device poll with a bad lifetime) left no trace in the audit
log and no count in the metric; the device page's refusals were audited but never counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import parse_settings
from tests.helpers.proxy_settings import proxy_settings_data
from tests.unit.test_device_grant import _app, _logged_in

TE = "urn:ietf:params:oauth:grant-type:token-exchange"
DC = "urn:ietf:params:oauth:grant-type:device_code"
AT = "urn:ietf:params:oauth:token-type:access_token"
SECRET = "TOKENSECRETxyz.abc.def"
ACTOR_SECRET = "ACTORSECRETxyz.abc.def"


@pytest.fixture
def app(keys_dir: Path, tmp_path: Path, idp: Any) -> Any:
    return _app(keys_dir, tmp_path, idp)


def _lines(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _refused_counts(client: Any) -> dict[tuple[str, str], float]:
    """tokens_refused_total by (door, reason)."""
    counts: dict[tuple[str, str], float] = {}
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if not line.startswith("slurm_jwt_bridge_tokens_refused_total{"):
            continue
        labels, value = line.rsplit(" ", 1)
        got = dict(part.split("=", 1) for part in labels[labels.index("{") + 1 : -1].split(","))
        key = (got["door"].strip('"'), got["reason"].strip('"'))
        counts[key] = counts.get(key, 0.0) + float(value)
    return counts


class Watch:
    """The audit lines and refusal counts one request adds."""

    def __init__(self, app: Any, tmp_path: Path) -> None:
        self.client, self.tmp_path = app.test_client(), tmp_path
        self.lines = len(_lines(tmp_path))
        self.counts = _refused_counts(self.client)

    def new_lines(self) -> list[dict[str, Any]]:
        return _lines(self.tmp_path)[self.lines :]

    def counted(self) -> dict[tuple[str, str], float]:
        now = _refused_counts(self.client)
        return {k: v - self.counts.get(k, 0.0) for k, v in now.items() if v != self.counts.get(k)}


def _one_refusal(
    app: Any, tmp_path: Path, send: Any, door: str, reason: str, event: str = "exchange"
) -> Any:
    """Send a request; assert exactly one refused audit line and one count for it."""
    watch = Watch(app, tmp_path)
    r = send(watch.client)
    new = watch.new_lines()
    assert len(new) == 1, new
    line = new[0]
    assert (line["event"], line["outcome"], line["door"]) == (event, "refused", door), line
    assert line["reason"] and line["remote_addr"] == "127.0.0.1", line
    text = json.dumps(line)
    assert SECRET not in text and ACTOR_SECRET not in text
    assert watch.counted() == {(door, reason): 1.0}
    return r


FORM_CASES = {
    "unsupported grant_type": (
        {"grant_type": "password", "subject_token": SECRET},
        "unsupported_grant_type",
        "unsupported_grant_type",
    ),
    "no subject_token": ({"grant_type": TE}, "invalid_request", "missing_subject_token"),
    "bad subject_token_type": (
        {"grant_type": TE, "subject_token": SECRET, "subject_token_type": "foo"},
        "invalid_request",
        "bad_token_type",
    ),
    "bad requested_token_type": (
        {
            "grant_type": TE,
            "subject_token": SECRET,
            "subject_token_type": AT,
            "requested_token_type": "urn:x",
        },
        "invalid_request",
        "bad_token_type",
    ),
    "bad actor_token_type": (
        {
            "grant_type": TE,
            "subject_token": SECRET,
            "subject_token_type": AT,
            "actor_token": ACTOR_SECRET,
            "actor_token_type": "nope",
        },
        "invalid_request",
        "bad_token_type",
    ),
}


@pytest.mark.parametrize("case", sorted(FORM_CASES))
def test_attack_token_form_refusals_are_audited_and_counted(
    app: Any, tmp_path: Path, case: str
) -> None:
    form, error, reason = FORM_CASES[case]
    r = _one_refusal(
        app, tmp_path, lambda c: c.post("/oauth/token", data=form), "token-exchange", reason
    )
    assert (r.status_code, r.get_json()["error"]) == (400, error)
    assert r.headers["Cache-Control"] == "no-store"


def test_attack_a_body_that_is_not_a_form_is_audited_and_counted(app: Any, tmp_path: Path) -> None:
    r = _one_refusal(
        app,
        tmp_path,
        lambda c: c.post("/oauth/token", json={"grant_type": TE, "subject_token": SECRET}),
        "token-exchange",
        "bad_content_type",
    )
    assert (r.status_code, r.get_json()["error"]) == (400, "invalid_request")
    assert "form-encoded" in r.get_json()["error_description"]


@pytest.mark.parametrize("header", [None, "Basic Zm9vOmJhcg==", "Bearer ", "Token " + SECRET])
def test_attack_api_token_without_a_bearer_is_audited_and_counted(
    app: Any, tmp_path: Path, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    r = _one_refusal(
        app, tmp_path, lambda c: c.post("/api/v1/token", headers=headers), "api", "no_bearer"
    )
    assert (r.status_code, r.get_json()["error"]) == (401, "invalid_request")
    assert r.headers["WWW-Authenticate"].startswith('Bearer realm="slurm-jwt-bridge"')


def _device_code(app: Any) -> str:
    r = app.test_client().post("/oauth/device_authorization", data={"client_id": "cli"})
    assert r.status_code == 200, r.get_data(as_text=True)
    return str(r.get_json()["device_code"])


def test_attack_device_poll_with_a_bad_lifetime_is_audited_and_counted(
    app: Any, tmp_path: Path
) -> None:
    code = _device_code(app)
    r = _one_refusal(
        app,
        tmp_path,
        lambda c: c.post(
            "/oauth/token",
            data={"grant_type": DC, "device_code": code, "requested_lifetime": "12abc"},
        ),
        "device",
        "bad_number",
        event="device",
    )
    assert (r.status_code, r.get_json()["error"]) == (400, "invalid_request")


def test_attack_device_poll_refusals_are_counted(app: Any, tmp_path: Path) -> None:
    r = _one_refusal(
        app,
        tmp_path,
        lambda c: c.post("/oauth/token", data={"grant_type": DC, "device_code": "guess"}),
        "device",
        "device_unknown",
        event="device",
    )
    assert (r.status_code, r.get_json()["error"]) == (400, "invalid_grant")
    r = _one_refusal(
        app,
        tmp_path,
        lambda c: c.post("/oauth/token", data={"grant_type": DC}),
        "device",
        "device_code_missing",
        event="device",
    )
    assert (r.status_code, r.get_json()["error"]) == (400, "invalid_request")


def test_attack_device_authorization_not_a_form_is_counted(app: Any, tmp_path: Path) -> None:
    r = _one_refusal(
        app,
        tmp_path,
        lambda c: c.post("/oauth/device_authorization", json={"client_id": "x"}),
        "device",
        "bad_content_type",
        event="device",
    )
    assert (r.status_code, r.get_json()["error"]) == (400, "invalid_request")


def test_attack_device_page_refusals_are_counted(app: Any, tmp_path: Path) -> None:
    _device_code(app)
    r = _one_refusal(
        app,
        tmp_path,
        lambda c: _logged_in(app).get("/device?code=BBBB-BBBB"),
        "device",
        "device_bad_code",
        event="device",
    )
    assert r.status_code == 400 and "No login is waiting" in r.get_data(as_text=True)
    r = _one_refusal(
        app,
        tmp_path,
        lambda c: _logged_in(app).post(
            "/device", data={"csrf": "x", "code": "BBBB-BBBB", "decision": "maybe"}
        ),
        "device",
        "device_bad_answer",
        event="device",
    )
    assert r.status_code == 400


def test_attack_browser_callback_without_a_login_is_audited_and_counted(
    app: Any, tmp_path: Path
) -> None:
    r = _one_refusal(
        app,
        tmp_path,
        lambda c: c.get("/auth/callback?code=stolen&state=x"),
        "browser",
        "no_login_in_progress",
        event="login",
    )
    assert r.status_code == 400 and "No login is in progress" in r.get_data(as_text=True)


def test_attack_browser_login_at_an_unknown_issuer_is_audited_and_counted(
    app: Any, tmp_path: Path
) -> None:
    r = _one_refusal(
        app,
        tmp_path,
        lambda c: c.get("/login?issuer=elsewhere"),
        "browser",
        "unknown_issuer",
        event="login",
    )
    assert r.status_code == 404


def _proxy_app(keys_dir: Path, tmp_path: Path, idp: Any, **proxy: Any) -> Any:
    data = proxy_settings_data(keys_dir, tmp_path, idp, proxy)
    return create_app(parse_settings(data))


def test_attack_proxy_auth_without_credentials_is_audited_and_counted(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    app = _proxy_app(keys_dir, tmp_path, idp, auth_request=True)
    r = _one_refusal(app, tmp_path, lambda c: c.get("/proxy/auth"), "proxy", "no_credentials")
    assert (r.status_code, r.get_json()["error"]) == (401, "invalid_request")
    assert "WWW-Authenticate" in r.headers


def test_attack_proxy_auth_from_a_stranger_is_audited_and_counted(
    keys_dir: Path, tmp_path: Path, idp: Any
) -> None:
    app = _proxy_app(keys_dir, tmp_path, idp, auth_request=True)
    watch = Watch(app, tmp_path)
    r = watch.client.get(
        "/proxy/auth",
        headers={"Authorization": "Bearer " + SECRET},
        environ_base={"REMOTE_ADDR": "203.0.113.7"},
    )
    assert (r.status_code, r.get_json()["error"]) == (403, "access_denied")
    new = watch.new_lines()
    assert len(new) == 1 and new[0]["door"] == "proxy" and new[0]["outcome"] == "refused"
    assert new[0]["remote_addr"] == "203.0.113.7" and SECRET not in json.dumps(new[0])
    assert watch.counted() == {("proxy", "address_not_allowed"): 1.0}
