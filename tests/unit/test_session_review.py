"""Attacks on browser sessions found by the adversarial review, each refused now.

1. nginx's auth_request turns every request into a GET subrequest: a cross-site POST with the
   session cookie passed the bridge's Origin check there (slurmrestd then changed a job).
2. A request that loaded the session before logout saved it back afterwards: the replayed
   cookie worked again.
3. Whoever could write to the session store could make a session for any user.
4. Cross-site and CSRF refusals wrote no audit line.
5. A cross-site GET with the session cookie (a link, a redirect, an image on a sibling origin)
   was forwarded: slurmrestd has GETs that change state (``GET /slurm/v0.0.40/reconfigure/``
   makes slurmctld re-read its configuration), and the Lax cookie rides on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.settings import parse_settings
from slurm_jwt_bridge.web.browser import session_seal
from tests.helpers.proxy_settings import browser_proxy_settings_data
from tests.helpers.sessions import logged_in, session_grant
from tests.helpers.stub_http import StubServer

PUBLIC = "https://hpc.example.org"
UPSTREAM_BODY = b'{"job_id": 1}'  # what the stand-in slurmrestd answers
SIBLING = "https://evil.example.org"


@pytest.fixture
def app(keys_dir: Path, tmp_path: Path, idp: Any, upstream: StubServer) -> Any:
    proxy = {"upstream": upstream.url, "auth_request": True}
    data = browser_proxy_settings_data(keys_dir, tmp_path, idp, proxy, PUBLIC)
    return create_app(parse_settings(data, tmp_path))


def audit_lines(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.log"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_nginx_subrequest_of_a_cross_site_write_is_refused(
    app: Any, tmp_path: Path, method: str
) -> None:
    client = logged_in(app)
    r = client.get("/proxy/auth", headers={"X-Original-Method": method, "Origin": SIBLING})
    assert r.status_code == 403, r.get_data(as_text=True)
    assert "X-SLURM-USER-TOKEN" not in r.headers
    assert audit_lines(tmp_path)[-1]["outcome"] == "refused"
    same_site = {"X-Original-Method": method, "Origin": PUBLIC, "X-Requested-With": "fetch"}
    assert client.get("/proxy/auth", headers=same_site).status_code == 200


def test_nginx_subrequest_without_the_method_counts_as_a_write(app: Any) -> None:
    client = logged_in(app)
    assert client.get("/proxy/auth", headers={"Origin": SIBLING}).status_code == 403
    assert client.get("/proxy/auth", headers={"X-Original-Method": "GET"}).status_code == 200


def test_a_session_saved_back_after_logout_stays_dead(
    app: Any, tmp_path: Path, upstream: StubServer
) -> None:
    client = logged_in(app)
    assert client.get("/slurm/v0.0.44/jobs").status_code == 200
    store = app.config["SESSION_CACHELIB"]
    with client.session_transaction() as sess:
        store_id = "sjb-session:" + sess.sid
    in_flight = store.get(store_id)  # what a re-mint waiting on the IdP loaded before logout
    cookie = client.get_cookie("sjb_session").value
    assert client.post("/logout", data={"csrf": "x"}).status_code == 302
    store.set(store_id, in_flight)  # ... and what it saves when it ends
    client.set_cookie("sjb_session", cookie)  # the saved cookie, replayed
    seen = len(upstream.seen)
    assert client.get("/slurm/v0.0.44/jobs").status_code == 401
    assert len(upstream.seen) == seen
    assert b'id="token"' not in client.get("/").data
    assert any(e.get("event") == "session" for e in audit_lines(tmp_path))


def test_a_session_written_into_the_store_by_someone_else_is_refused(
    app: Any, upstream: StubServer
) -> None:
    client = logged_in(app)
    store = app.config["SESSION_CACHELIB"]
    with client.session_transaction() as sess:
        store_id, sid = "sjb-session:" + sess.sid, sess.sid
    data = store.get(store_id)
    forged = dict(data, grant=session_grant("bob"))  # the store writer's own choice of user
    store.set(store_id, forged)
    assert client.get("/slurm/v0.0.44/jobs").status_code == 401
    forged["seal"] = session_seal(b"k" * 32, sid, forged["grant"], forged["ends"])
    store.set(store_id, forged)
    assert client.get("/slurm/v0.0.44/jobs").status_code == 401
    assert upstream.seen == [] or all(h.get("X-SLURM-USER-NAME") != "bob" for h in upstream.seen)


def test_csrf_and_cross_site_refusals_are_audited(app: Any, tmp_path: Path) -> None:
    client = logged_in(app)
    r0 = client.post("/token", data={"csrf": "wrong"})
    assert r0.status_code == 400
    assert audit_lines(tmp_path)[-1]["reason"].startswith("CSRF token")
    r = client.post("/slurm/v0.0.44/job/submit", headers={"Origin": SIBLING}, data="x")
    assert r.status_code == 403
    last = audit_lines(tmp_path)[-1]
    assert (
        last["outcome"] == "refused" and last["user"] == "alice" and "cross-site" in last["reason"]
    )


# What browsers send with a cross-site GET that carries the Lax session cookie
CROSS_SITE_GETS = {
    "a link or redirect from another site": {
        "Sec-Fetch-Site": "cross-site",
        "Sec-Fetch-Mode": "navigate",
        "Referer": "https://evil.example/",
    },
    "an image on a sibling origin": {
        "Sec-Fetch-Site": "same-site",
        "Sec-Fetch-Mode": "no-cors",
        "Referer": SIBLING + "/",
    },
    "a browser without fetch metadata, from another origin": {"Referer": SIBLING + "/page"},
    # what Chromium sends for a link opened outside the browser (mail, chat) that redirects
    # here from another site: the navigation keeps "none" through the redirect
    "a link from outside the browser through a cross-site redirect": {
        "Sec-Fetch-Site": "none",
        "Sec-Fetch-Mode": "navigate",
        "Sec-Fetch-User": "?1",
        "Sec-Fetch-Dest": "document",
    },
    "a Referer that does not parse": {"Referer": "http://["},
}
RECONFIGURE = "/slurm/v0.0.40/reconfigure/"


@pytest.mark.parametrize("sent", list(CROSS_SITE_GETS))
def test_attack_a_cross_site_get_with_the_session_is_refused(
    app: Any, tmp_path: Path, upstream: StubServer, sent: str
) -> None:
    client = logged_in(app)
    headers = CROSS_SITE_GETS[sent]
    r = client.get(RECONFIGURE, headers=headers)
    assert r.status_code == 403, r.get_data(as_text=True)
    assert r.json["error"] == "access_denied" and "cross-site" in r.json["error_description"]
    assert upstream.seen == []
    last = audit_lines(tmp_path)[-1]
    assert last["outcome"] == "refused" and last["user"] == "alice"
    nginx = {**headers, "X-Original-Method": "GET", "X-Original-URI": RECONFIGURE}
    r = client.get("/proxy/auth", headers=nginx)
    assert r.status_code == 403 and "X-Slurm-User-Token" not in r.headers


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "same-origin", "Referer": PUBLIC + "/"},  # a script on the page
        {},  # no fetch metadata and no Referer (curl, the bridge's own no-referrer pages)
    ],
)
def test_a_same_origin_get_with_the_session_is_forwarded(
    app: Any, upstream: StubServer, headers: dict[str, str]
) -> None:
    client = logged_in(app)
    assert client.get("/slurm/v0.0.44/jobs", headers=headers).status_code == 200
    assert upstream.seen[-1].header("X-SLURM-USER-NAME") == "alice"
