"""The access log written around the app under granian (AccessLog: gunicorn_logging.py's JSON
line) and the bind split (app/slurm_jwt_bridge/granian_serve.py); the server itself runs in
tests/integration/test_production.py."""

from __future__ import annotations

import calendar
import io
import json
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from slurm_jwt_bridge.granian_serve import (
    AccessLog,
    WithoutProcessEnvironment,
    bind_address,
    inherited_keys,
)
from slurm_jwt_bridge.gunicorn_logging import AGENT_MAX, LINE_MAX, PATH_MAX

FIELDS = ["time", "remote", "method", "path", "status", "duration_us", "agent"]


def answering(status: str, body: bytes = b"ok") -> Callable[..., Iterable[bytes]]:
    def app(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response(status, [("Content-Type", "text/plain")])
        return [body]

    return app


def environ(**extra: str) -> dict[str, Any]:
    return {
        "REMOTE_ADDR": "192.0.2.7",
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/oauth/token",
        "QUERY_STRING": "access_token=secret",
        "HTTP_USER_AGENT": "curl/8",
        **extra,
    }


def call(app: Callable[..., Iterable[bytes]], env: dict[str, Any]) -> tuple[list, dict]:
    """Run ``env`` through AccessLog(app); the body and the one line it wrote, parsed."""
    out = io.StringIO()
    seen: list = []
    body = list(AccessLog(app, out)(env, lambda status, headers, exc=None: seen.append(status)))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    return body, json.loads(lines[0])


def test_the_line_is_what_json_dumps_writes_for_the_same_fields() -> None:
    """Byte for byte the gunicorn line's serialization (json.dumps, ensure_ascii) of the same
    fields without ``bytes``, also for quotes, control characters and non-ASCII (WSGI strings are
    latin-1), and the agent cut to AGENT_MAX."""
    odd = {
        "PATH_INFO": '/a"b\\c\n\x00\u00e9\u00ff',
        "HTTP_USER_AGENT": 'evil" "x\t' + "a" * 500,
        "REMOTE_ADDR": "2001:db8::1",
        "REQUEST_METHOD": "GET",
    }
    out = io.StringIO()
    before = time.time()
    AccessLog(answering("201 Created"), out)(environ(**odd), lambda *a: None)
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    line = json.loads(text)
    assert list(line) == FIELDS
    want = {
        "time": line["time"],
        "remote": odd["REMOTE_ADDR"],
        "method": "GET",
        "path": odd["PATH_INFO"],
        "status": 201,
        "duration_us": line["duration_us"],
        "agent": odd["HTTP_USER_AGENT"][:AGENT_MAX],
    }
    assert text == json.dumps(want, ensure_ascii=True) + "\n"
    assert len(line["agent"]) == AGENT_MAX
    assert "secret" not in text  # the query string is never written
    stamp = calendar.timegm(time.strptime(line["time"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(stamp - before) < 5 and line["time"].endswith("Z")
    assert 0 <= line["duration_us"] < 5_000_000


def test_missing_fields_are_dashes() -> None:
    body, line = call(answering("200 OK"), {})
    assert body == [b"ok"]
    assert [line["remote"], line["method"], line["path"], line["agent"]] == ["-"] * 4


@pytest.mark.parametrize(
    ("status", "code"), [("200 OK", 200), ("429 Too Many Requests", 429), ("nonsense", 0)]
)
def test_the_status_is_the_one_the_app_answered(status: str, code: int) -> None:
    assert call(answering(status), environ())[1]["status"] == code


def test_an_app_that_raises_is_logged_as_500_and_the_error_goes_on() -> None:
    def broken(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        raise RuntimeError("bug")

    out = io.StringIO()
    with pytest.raises(RuntimeError, match="bug"):
        AccessLog(broken, out)(environ(), lambda *a: None)
    assert json.loads(out.getvalue())["status"] == 500


def test_a_failing_log_stream_does_not_fail_the_request(capsys: pytest.CaptureFixture) -> None:
    class Full(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("No space left on device")

    body = AccessLog(answering("200 OK"), Full())(environ(), lambda *a: None)
    assert list(body) == [b"ok"]
    assert "access log line failed" in capsys.readouterr().err


def test_lines_from_many_threads_never_interleave() -> None:
    out = io.StringIO()
    app = AccessLog(answering("200 OK"), out)

    def requests(n: int) -> None:
        for i in range(300):
            app(environ(PATH_INFO=f"/t{n}/{i}", HTTP_USER_AGENT="x" * 200), lambda *a: None)

    threads = [threading.Thread(target=requests, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = [json.loads(text) for text in out.getvalue().splitlines()]
    assert len(lines) == 8 * 300
    assert len({line["path"] for line in lines}) == 8 * 300


@pytest.mark.parametrize(
    ("bind", "want"),
    [
        ("127.0.0.1:8000", {"address": "127.0.0.1", "port": 8000}),
        ("[::1]:9000", {"address": "::1", "port": 9000}),
        (":80", {"address": "0.0.0.0", "port": 80}),  # noqa: S104 (every interface, as gunicorn)
        ("unix:/run/bridge.sock", {"uds": Path("/run/bridge.sock")}),
    ],
)
def test_bind_as_gunicorn_reads_it(bind: str, want: dict) -> None:
    assert bind_address(bind) == want


def test_an_inherited_descriptor_is_refused_in_one_line() -> None:
    with pytest.raises(SystemExit, match="fd://N is gunicorn only"):
        bind_address("fd://3")


@pytest.mark.parametrize(
    "odd",
    [
        {"PATH_INFO": "/" + "\x00" * 21_600},  # a 64 KB request target of %00: six bytes each
        {"PATH_INFO": "/" + "é" * 5000, "HTTP_USER_AGENT": "\x01" * 5000},
        {"REMOTE_ADDR": '"' * 5000, "REQUEST_METHOD": "\x7f" * 5000},
    ],
)
def test_a_line_stays_one_write_below_pipe_buf(odd: dict[str, str]) -> None:
    """One request cannot write a line that a pipe would interleave with another worker's, nor
    one that journald or a container runtime would split."""
    out = io.StringIO()
    AccessLog(answering("404 NOT FOUND"), out)(environ(**odd), lambda *a: None)
    text = out.getvalue()
    assert len(text.encode()) <= LINE_MAX + 1 and text.count("\n") == 1
    line = json.loads(text)
    for key, field in (("PATH_INFO", "path"), ("HTTP_USER_AGENT", "agent")):
        assert environ(**odd)[key].startswith(line[field])
    assert line["status"] == 404


def test_an_ordinary_long_path_is_kept_to_path_max() -> None:
    path = "/slurm/v0.0.44/job/" + "1" * 2000
    line = call(answering("200 OK"), environ(PATH_INFO=path))[1]
    assert line["path"] == path[:PATH_MAX]


def test_nowhere_to_write_does_not_fail_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    class Gone(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stderr", Gone())
    body = AccessLog(answering("200 OK"), Gone())(environ(), lambda *a: None)
    assert list(body) == [b"ok"]


def test_the_process_environment_is_not_read_as_part_of_a_request() -> None:
    """granian's environ starts from a copy of os.environ: HTTP_PROXY there is not a header,
    RAW_URI not the request's target; what granian writes itself is never touched."""
    process = {
        "HTTP_PROXY": "http://proxy:3128",
        "CONTENT_LENGTH": "5",
        "RAW_URI": "/slurm/v0.0.40/job/4242",
        "REMOTE_USER": "root",
        "PATH": "/usr/bin",
        "PATH_INFO": "/oauth/token",
        "SERVER_PORT": "8000",
    }
    inherited = inherited_keys(process)
    assert set(inherited) == {"HTTP_PROXY", "CONTENT_LENGTH", "RAW_URI", "REMOTE_USER", "PATH"}
    seen: list[dict] = []

    def app(env: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append(dict(env))
        start_response("200 OK", [])
        return [b""]

    wrapped = WithoutProcessEnvironment(app, inherited)
    request = environ(SERVER_PORT="8000")  # PATH_INFO /oauth/token, as in the process
    wrapped({**process, **request}, lambda *a: None)  # a request without those headers
    for key in ("HTTP_PROXY", "CONTENT_LENGTH", "RAW_URI", "REMOTE_USER", "PATH"):
        assert key not in seen[0], key
    assert seen[0]["PATH_INFO"] == "/oauth/token" and seen[0]["SERVER_PORT"] == "8000"
    wrapped({**process, **environ(CONTENT_LENGTH="12", HTTP_PROXY="x")}, lambda *a: None)
    assert seen[1]["CONTENT_LENGTH"] == "12" and seen[1]["HTTP_PROXY"] == "x"  # the request's own
