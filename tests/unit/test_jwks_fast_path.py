"""The JWKS is answered in front of Flask (web/jwks.py ``JwksFastPath``): for every request it
takes, the answer must be the one Flask's view and hooks give, byte for byte and header for
header; everything else must reach Flask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

from slurm_jwt_bridge import create_app
from slurm_jwt_bridge.keys import rotate_keys
from slurm_jwt_bridge.settings import Settings
from slurm_jwt_bridge.web.jwks import JwksFastPath


def answer(wsgi: Any, method: str, path: str, headers: dict[str, str]) -> tuple:
    env = EnvironBuilder(path=path, method=method, headers=headers).get_environ()
    body, status, hdrs = run_wsgi_app(wsgi, env, buffered=True)
    return status, sorted(hdrs.to_wsgi_list()), b"".join(body)


@pytest.fixture
def app(settings: Settings) -> Any:
    from dataclasses import replace

    return create_app(replace(settings, keys=replace(settings.keys, reload_interval=0)))


def test_the_fast_path_answers_as_flask_does(app: Any, keys_dir: Path) -> None:
    fast = app.wsgi_app.app  # behind POST /oauth/token's own fast path (web/token_door.py)
    assert isinstance(fast, JwksFastPath)
    etag = answer(fast, "GET", "/jwks.json", {})[1]
    etag = dict(etag)["ETag"]
    for rotate in (False, True):
        if rotate:
            rotate_keys(keys_dir, 3600, 300)
        for path in ("/.well-known/jwks.json", "/jwks.json", "/jwks.json?x=1"):
            for method in ("GET", "HEAD"):
                for inm in (None, etag, f"W/{etag}", '"other"', "*", f'"a", {etag}', "garbage"):
                    headers = {"If-None-Match": inm} if inm else {}
                    ours = answer(fast, method, path, headers)
                    flask = answer(fast.app, method, path, headers)
                    assert ours == flask, (rotate, path, method, inm)


def test_everything_else_reaches_flask(app: Any) -> None:
    client = app.test_client()
    assert client.post("/jwks.json").status_code == 405
    assert client.get("/jwks.json/").status_code == 404
    assert client.get("/healthz").status_code == 200


class _Rotating:
    """A bridge whose published JWKS is whatever ``doc`` holds at the moment."""

    def __init__(self, doc: tuple[bytes, str]) -> None:
        self.doc = doc
        self.keys = self
        self.settings = type("S", (), {"jwks": type("J", (), {"max_age": 60})})()

    def current(self) -> _Rotating:
        return self

    def jwks_document(self) -> tuple[bytes, str]:
        return self.doc


def test_a_rotation_between_two_threads_keeps_each_body_with_its_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request holding the old document while another thread publishes the new one (here run
    inside the first one's If-None-Match parsing, where a thread switch may fall) answers the old
    body with the old Content-Length and ETag, not the new ones."""
    from slurm_jwt_bridge.web import jwks as module

    old, new = (b'{"keys":[]}', "old"), (b'{"keys":[{"kid":"new-and-longer"}]}', "new")
    bridge = _Rotating(old)
    fast = JwksFastPath(lambda env, start: pytest.fail("reached Flask"), bridge)
    answer(fast, "GET", "/jwks.json", {})  # the old document's answer is built
    parse, inner, switched = module.parse_etags, [], []

    def switch_thread(value: str | None) -> Any:
        if not switched:
            switched.append(True)
            bridge.doc = new
            inner.append(answer(fast, "GET", "/jwks.json", {}))  # another thread's request
        return parse(value)

    monkeypatch.setattr(module, "parse_etags", switch_thread)
    bridge.doc = old
    status, headers, body = answer(fast, "GET", "/jwks.json", {})
    assert (status, body) == ("200 OK", old[0])
    assert dict(headers)["Content-Length"] == str(len(old[0]))
    assert dict(headers)["ETag"] == '"old"'
    assert inner[0][2] == new[0] and dict(inner[0][1])["Content-Length"] == str(len(new[0]))
